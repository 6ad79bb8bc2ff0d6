"""Simulated edge gateways whose evidence is a TPM 2.0 quote from their own swtpm.

Each ``TpmSimDevice`` starts a private swtpm (``device_sim.swtpm``) and drives it
through tpm2-pytss (ESAPI, TCTI ``swtpm``):

* boot: ``TPM2_Startup(CLEAR)``, then each firmware component digest of the
  class (bootloader, kernel, rootfs) is extended into SHA-256 PCR
  ``wire.TPM_BOOT_PCR`` in that order, as a boot ROM measuring its chain would;
* keys: a restricted-decrypt ECC P-256 primary in the *endorsement* hierarchy
  (a stand-in for the EK) and under it a restricted ECDSA-SHA256 signing key,
  the AK, whose public key is enrolled with the hub (``public_key_pem``). The
  endorsement hierarchy matters: for keys of the owner hierarchy the TPM
  obfuscates resetCount and restartCount in every quote;
* evidence: ``TPM2_Quote`` over the boot PCR with the hub's nonce as
  qualifyingData, sent as the CBOR envelope ``{1: TPMS_ATTEST, 2:
  TPMT_SIGNATURE, 3: [[pcr, value]]}`` (docs/schemes/tpm.md).

The envelope is built here with cbor2; the hub's decoder is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Final

import cbor2
from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SU
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPMS_ATTEST,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMU_HA,
)

from device_sim import cose, firmware, keys
from device_sim.data_profiles import DataOut
from device_sim.device import Clock, SimDevice
from device_sim.records import EvidenceKind, EvidenceRecord, Profile
from device_sim.swtpm import SwtpmError, SwtpmProcess
from hub import wire

CLASS: Final = firmware.EDGE_GATEWAY
PCR_SELECTION: Final = f"sha256:{wire.TPM_BOOT_PCR}"
_PRIMARY_TEMPLATE: Final = "ecc256:null:aes128cfb"
_PRIMARY_ATTRS: Final = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt|noda"
_AK_TEMPLATE: Final = "ecc256:ecdsa-sha256:null"
_AK_ATTRS: Final = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"


class TpmProfile(StrEnum):
    """How a simulated TPM gateway behaves."""

    HONEST = "honest"
    TAMPERED = "tampered"  # rootfs modified and measured as it is: the boot PCR matches no release
    REPLAY = "replay"  # withholds a quote and publishes it after two newer ones
    UNENROLLED_AK = "unenrolled-ak"  # quotes with a second AK of its TPM, not the enrolled one
    PCR_MISMATCH = "pcr-mismatch"  # runs the modified rootfs but reports the genuine release's PCR value


_BASE_PROFILE: Final = MappingProxyType({
    TpmProfile.HONEST: Profile.HONEST,
    TpmProfile.TAMPERED: Profile.TAMPERED,
    TpmProfile.REPLAY: Profile.REPLAY,
    TpmProfile.UNENROLLED_AK: Profile.FORGED,
    TpmProfile.PCR_MISMATCH: Profile.TAMPERED,
})


class TpmDeviceError(RuntimeError):
    """The device's TPM (swtpm or the TSS) failed."""


def boot_pcr(digests: Sequence[bytes]) -> bytes:
    """The PCR value after extending ``digests`` in order from 32 zero bytes (TPM2_PCR_Extend)."""
    value = bytes(32)
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return value


class _Tpm:
    """One ESAPI connection to the device's swtpm, with the primary and the AKs loaded."""

    def __init__(self, swtpm: SwtpmProcess, ak_blobs: list[tuple[TPM2B_PRIVATE, TPM2B_PUBLIC]], *,
                 startup: bool) -> None:
        self.tcti = TCTILdr("swtpm", swtpm.tcti_config)
        self.esapi = ESAPI(self.tcti)
        if startup:
            self.esapi.startup(TPM2_SU.CLEAR)
        primary_public = TPM2B_PUBLIC.parse(_PRIMARY_TEMPLATE, _PRIMARY_ATTRS)
        self.primary = self.esapi.create_primary(None, primary_public, ESYS_TR.ENDORSEMENT)[0]
        if not ak_blobs:
            ak_public = TPM2B_PUBLIC.parse(_AK_TEMPLATE, _AK_ATTRS)
            for _ in range(2):  # [0] is enrolled; [1] is what an unenrolled-ak device quotes with
                private, public = self.esapi.create(self.primary, None, ak_public)[:2]
                ak_blobs.append((private, public))
        self.aks = [self.esapi.load(self.primary, private, public) for private, public in ak_blobs]

    def extend(self, digest: bytes) -> None:
        values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))])
        self.esapi.pcr_extend(ESYS_TR(ESYS_TR.PCR0 + wire.TPM_BOOT_PCR), values)

    def quote(self, ak: int, nonce: bytes) -> tuple[bytes, bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE, the boot PCR's current value)."""
        attest, signature = self.esapi.quote(self.aks[ak], PCR_SELECTION, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        digests = self.esapi.pcr_read(PCR_SELECTION)[2]
        return bytes(attest), bytes(signature.marshal()), bytes(digests[0])

    def close(self, shutdown: TPM2_SU | None = None) -> None:
        if shutdown is not None:
            self.esapi.shutdown(shutdown)
        self.esapi.close()
        self.tcti.close()


class TpmSimDevice(SimDevice):
    """A ``SimDevice`` backed by its own swtpm; the fleet publishes its quotes as ``wire.TPM_MEDIA_TYPE``.

    Call ``close()`` (or use ``with``) to stop its swtpm. ``reboot()`` is a TPM Reset
    (resetCount + 1), ``tpm_restart()`` a TPM Restart (restartCount + 1); both clear
    the PCRs, and the boot measurements are extended again.
    """

    evidence_media_type: ClassVar[str] = wire.TPM_MEDIA_TYPE

    def __init__(
        self,
        device_id: str,
        profile: TpmProfile = TpmProfile.HONEST,
        *,
        seed: str = keys.DEFAULT_SEED,
        version: str | None = None,
        hub_key: cose.VerifyKey | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(device_id, CLASS, _BASE_PROFILE[profile], seed=seed, version=version, bootcount=0,
                         hub_key=hub_key, clock=clock)
        self.tpm_profile = profile
        self._ak_blobs: list[tuple[TPM2B_PRIVATE, TPM2B_PUBLIC]] = []
        self._swtpm = SwtpmProcess()
        try:
            self._swtpm.start()
            self._tpm = self._open(startup=False)  # swtpm ran TPM2_Startup(CLEAR) itself
        except (SwtpmError, TSS2_Exception) as exc:
            self._swtpm.stop()
            raise TpmDeviceError(f"{device_id}: TPM setup failed: {exc}") from exc
        self._last_counter: tuple[int, int] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"TpmSimDevice({self.device_id!r}, {self.tpm_profile.value}, {self.release.version})"

    def _open(self, *, startup: bool) -> _Tpm:
        tpm = _Tpm(self._swtpm, self._ak_blobs, startup=startup)
        for measurement in self._measurements:
            tpm.extend(measurement.digest)
        return tpm

    @property
    def public_key_pem(self) -> bytes:
        """The enrolled AK's public key (for an unenrolled-ak device too: it quotes with its other AK)."""
        return bytes(self._ak_blobs[0][1].publicArea.to_pem())

    def data_due(self) -> list[DataOut]:
        """TPM gateways send no telemetry batches."""
        return []

    # --- evidence ----------------------------------------------------------------
    def _sign(self, nonce: bytes, seq: int, now: float, kind: EvidenceKind) -> EvidenceRecord:
        ak = 1 if self.tpm_profile is TpmProfile.UNENROLLED_AK else 0
        try:
            for _ in range(50):  # two quotes within one TPM clock tick would be the same evidence
                attest, signature, pcr_value = self._tpm.quote(ak, nonce)
                counter = _counter(attest)
                if counter != self._last_counter:
                    break
                time.sleep(0.002)
        except TSS2_Exception as exc:
            raise TpmDeviceError(f"{self.device_id}: TPM2_Quote failed: {exc}") from exc
        self._last_counter = counter
        if self.tpm_profile is TpmProfile.PCR_MISMATCH:
            genuine = firmware.measurements(self.device_class, self.release.version)
            pcr_value = boot_pcr([m.digest for m in genuine])
        envelope = {
            wire.TPM_ENV_ATTEST: attest,
            wire.TPM_ENV_SIGNATURE: signature,
            wire.TPM_ENV_PCRS: [[wire.TPM_BOOT_PCR, pcr_value]],
        }
        self._bootcount = counter[0]
        return EvidenceRecord(counter[1], counter[0], nonce, int(now), now, kind, cbor2.dumps(envelope))

    # --- lifecycle ---------------------------------------------------------------
    def _reboot_locked(self) -> None:
        """A TPM Reset: orderly Shutdown(CLEAR), power cycle, Startup(CLEAR), measure again."""
        self._power_cycle(TPM2_SU.CLEAR)

    def tpm_restart(self) -> None:
        """A TPM Restart: Shutdown(STATE), power cycle, Startup(CLEAR), measure again."""
        with self._lock:
            self._power_cycle(TPM2_SU.STATE)

    def _power_cycle(self, shutdown: TPM2_SU) -> None:
        try:
            self._tpm.close(shutdown)
            self._swtpm.power_cycle()
            self._tpm = self._open(startup=True)
        except (SwtpmError, TSS2_Exception) as exc:
            raise TpmDeviceError(f"{self.device_id}: reboot failed: {exc}") from exc
        self._seq = 0

    def close(self) -> None:
        """Stop the device's swtpm (its TPM state goes with it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(TSS2_Exception):  # the process is stopped anyway
                self._tpm.close()
            self._swtpm.stop()

    def __enter__(self) -> TpmSimDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def report(self) -> dict[str, object]:
        report = super().report()
        report["profile"] = self.tpm_profile.value
        return report


def _counter(attest: bytes) -> tuple[int, int]:
    """(resetCount·2³² + restartCount, clock) as the hub derives it (docs/schemes/tpm.md)."""
    info = TPMS_ATTEST.unmarshal(attest)[0].clockInfo
    return int(info.resetCount) << 32 | int(info.restartCount), int(info.clock)


def build_tpm_fleet(profiles: Sequence[TpmProfile], seed: str = keys.DEFAULT_SEED,
                    first: int = 1) -> list[TpmSimDevice]:
    """One gateway per entry, ids ``edge-gateway-{n:04d}`` from ``first``; each runs its own swtpm."""
    devices: list[TpmSimDevice] = []
    try:
        for offset, profile in enumerate(profiles):
            devices.append(TpmSimDevice(f"{CLASS}-{first + offset:04d}", profile, seed=seed))
    except TpmDeviceError:
        for device in devices:
            device.close()
        raise
    return devices
