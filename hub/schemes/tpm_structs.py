"""Strict decoders for the two TPM 2.0 structures a quote carries (TPM 2.0 Part 2).

``TPMS_ATTEST`` (section 10.12.12) of type ``TPM_ST_ATTEST_QUOTE`` and an ECDSA
``TPMT_SIGNATURE`` (section 11.3.4), big-endian as the TPM marshals them. Every
length is bounded by the TPM's own maximum, every field is read exactly once,
and bytes left over are an error. Nothing here trusts the bytes: the caller
verifies the signature over the very bytes it then decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub import wire

MAX_NAME = 2 + 64  # TPM2B_NAME: sizeof(TPMU_NAME), a hash algorithm id and a SHA-512 digest
MAX_DATA = 64  # TPM2B_DATA: sizeof(TPMU_HA)
MAX_ECC_PARAMETER = 32  # TPM2B_ECC_PARAMETER for NIST P-256
MAX_SELECTIONS = 16
PCR_SELECT_MIN = 3  # TPMS_PCR_SELECTION.sizeofSelect: at least 24 PCRs (Part 2, 10.6.1)
PCR_SELECT_MAX = 8  # this hub accepts TPMs of up to 64 PCRs
SHA256_SIZE = 32


class StructError(ValueError):
    """A TPM structure is truncated, oversized, has trailing bytes or an unsupported value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClockInfo:
    clock: int  # milliseconds the TPM has been powered since its clock was last set
    reset_count: int  # TPM Resets (power cycles without an orderly state save)
    restart_count: int  # TPM Restarts / Resumes since the last Reset
    safe: bool  # false: the clock may have been reported higher before (non-orderly shutdown)


@dataclass(frozen=True, slots=True)
class PcrSelection:
    hash_alg: int
    pcrs: tuple[int, ...]  # selected indices, ascending (the order the TPM hashes them)


@dataclass(frozen=True, slots=True)
class QuoteAttest:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True, slots=True)
class EcdsaSignature:
    sig_alg: int
    hash_alg: int
    r: int
    s: int


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, size: int, field: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise StructError("truncated", f"{self._what} ends inside {field}")
        chunk = self._data[self._pos:end]
        self._pos = end
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def sized(self, maximum: int, field: str) -> bytes:
        size = self.uint(2, f"{field} size")
        if size > maximum:
            raise StructError("oversized", f"{self._what} {field} is {size} bytes, at most {maximum}")
        return self.take(size, field)

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise StructError("trailing-bytes", f"{len(self._data) - self._pos} bytes after the {self._what}")


def parse_attest(data: bytes) -> QuoteAttest:
    """Decode a TPMS_ATTEST whose ``attested`` member is a TPMS_QUOTE_INFO."""
    reader = _Reader(data, "TPMS_ATTEST")
    magic = reader.uint(4, "magic")
    if magic != wire.TPM_GENERATED_VALUE:
        raise StructError("bad-magic", f"magic {magic:#010x} is not TPM_GENERATED_VALUE")
    kind = reader.uint(2, "type")
    if kind != wire.TPM_ST_ATTEST_QUOTE:
        raise StructError("not-a-quote", f"type {kind:#06x} is not TPM_ST_ATTEST_QUOTE")
    signer = reader.sized(MAX_NAME, "qualifiedSigner")
    extra = reader.sized(MAX_DATA, "extraData")
    clock = reader.uint(8, "clock")
    reset_count = reader.uint(4, "resetCount")
    restart_count = reader.uint(4, "restartCount")
    safe = reader.uint(1, "safe")
    if safe > 1:
        raise StructError("bad-value", f"clockInfo.safe is {safe}, not a TPMI_YES_NO")
    firmware_version = reader.uint(8, "firmwareVersion")
    count = reader.uint(4, "pcrSelect count")
    if count > MAX_SELECTIONS:
        raise StructError("oversized", f"{count} PCR selections, at most {MAX_SELECTIONS}")
    selections = tuple(_selection(reader) for _ in range(count))
    digest = reader.sized(SHA256_SIZE, "pcrDigest")
    reader.finish()
    return QuoteAttest(magic, kind, signer, extra, ClockInfo(clock, reset_count, restart_count, bool(safe)),
                       firmware_version, selections, digest)


def _selection(reader: _Reader) -> PcrSelection:
    hash_alg = reader.uint(2, "pcrSelect hash")
    size = reader.uint(1, "sizeofSelect")
    if not PCR_SELECT_MIN <= size <= PCR_SELECT_MAX:
        raise StructError("bad-value", f"sizeofSelect {size} is outside {PCR_SELECT_MIN}..{PCR_SELECT_MAX}")
    bitmap = reader.take(size, "pcrSelect")
    pcrs = tuple(octet * 8 + bit for octet, value in enumerate(bitmap) for bit in range(8) if value >> bit & 1)
    return PcrSelection(hash_alg, pcrs)


def parse_ecdsa_signature(data: bytes) -> EcdsaSignature:
    """Decode a TPMT_SIGNATURE; only TPM_ALG_ECDSA with SHA-256 is accepted."""
    reader = _Reader(data, "TPMT_SIGNATURE")
    sig_alg = reader.uint(2, "sigAlg")
    if sig_alg != wire.TPM_ALG_ECDSA:
        raise StructError("unsupported-signature", f"sigAlg {sig_alg:#06x} is not TPM_ALG_ECDSA")
    hash_alg = reader.uint(2, "hash")
    if hash_alg != wire.TPM_ALG_SHA256:
        raise StructError("unsupported-signature", f"hash {hash_alg:#06x} is not TPM_ALG_SHA256")
    r = reader.sized(MAX_ECC_PARAMETER, "signatureR")
    s = reader.sized(MAX_ECC_PARAMETER, "signatureS")
    reader.finish()
    return EcdsaSignature(sig_alg, hash_alg, int.from_bytes(r, "big"), int.from_bytes(s, "big"))

