"""Wire constants: topics, media types, claim keys and algorithm numbers.

This is the one module the device simulator may import from the hub: it holds
numbers and names only, never decoding or appraisal logic, so an encoder bug
cannot be "verified" by the code that wrote it.

Integer keys follow the standards where one exists (RFC 8392 CWT, RFC 9711
EAT, RFC 9052/9053 COSE, draft-ietf-rats-ear, RFC 9783 PSA). Keys the
standards do not define are taken from the CWT private-use range (below
-65536) and documented in docs/PROTOCOL.md.
"""

from __future__ import annotations

from typing import Final

# --- topics -----------------------------------------------------------------
FLEET_ROOT: Final = "fleet"
HUB_ROOT: Final = "hub"  # device ids live under fleet/, so no id collides here
EPOCH_TOPIC: Final = "hub/epoch"
GENERATION_TOPIC: Final = "hub/generation"  # the hub's generation checkpoint (hub/server/announced.py)
MANIFEST_TOPIC_PREFIX: Final = "hub/manifests"

EVIDENCE: Final = "evidence"
DATA: Final = "data"
COMMAND: Final = "cmd"
RESULT: Final = "result"
VERIFIED_DATA: Final = "verified-data"


def device_topic(device_id: str, leaf: str) -> str:
    """``fleet/{device_id}/{leaf}``."""
    return f"{FLEET_ROOT}/{device_id}/{leaf}"


def manifest_topic(device_class: str) -> str:
    return f"{MANIFEST_TOPIC_PREFIX}/{device_class}"


# --- media types (RFC 9782; MQTT v5 Content Type) ---------------------------
FIRMWARE_PROFILE: Final = "tag:fleet-attest.org,2026:firmware-evidence/v1"
DATA_PROFILE: Final = "tag:fleet-attest.org,2026:data-batch/v1"
PSA_PROFILE: Final = "tag:psacertified.org,2023:psa#tfm"
COMMAND_PROFILE: Final = "tag:fleet-attest.org,2026:command/v1"
EPOCH_PROFILE: Final = "tag:fleet-attest.org,2026:epoch/v1"
GENERATION_PROFILE: Final = "tag:fleet-attest.org,2026:generation/v1"
MANIFEST_PROFILE: Final = "tag:fleet-attest.org,2026:manifest/v1"
EAR_PROFILE: Final = "tag:github.com,2023:veraison/ear"


def eat_media_type(profile: str) -> str:
    return f'application/eat+cwt; eat_profile="{profile}"'


FIRMWARE_MEDIA_TYPE: Final = eat_media_type(FIRMWARE_PROFILE)
DATA_MEDIA_TYPE: Final = eat_media_type(DATA_PROFILE)
PSA_MEDIA_TYPE: Final = eat_media_type(PSA_PROFILE)
TPM_MEDIA_TYPE: Final = "application/vnd.fleet-attest.tpm-quote+cbor"
COMMAND_MEDIA_TYPE: Final = "application/cose; cose-type=cose-sign1"
EAR_MEDIA_TYPE: Final = 'application/eat+cwt; eat_profile="tag:github.com,2023:veraison/ear"'

# --- COSE (RFC 9052 / 9053 / 9864) ------------------------------------------
COSE_SIGN1_TAG: Final = 18
COSE_MAC0_TAG: Final = 17
CWT_TAG: Final = 61  # RFC 8392 section 6: a CWT, allowed around an EAT's COSE message (RFC 9711 7.1)
HDR_ALG: Final = 1
HDR_CRIT: Final = 2
HDR_CONTENT_TYPE: Final = 3
HDR_KID: Final = 4
HDR_X5CHAIN: Final = 33

ALG_ES256: Final = -7
ALG_ES384: Final = -35
ALG_ES512: Final = -36
ALG_EDDSA: Final = -8
ALG_ESP256: Final = -9
ALG_ED25519: Final = -19
ALG_HMAC_256_256: Final = 5  # COSE_Mac0, HMAC-SHA256 with a 32-byte tag (RFC 9053 3.1)
SHA256: Final = -16  # COSE/SUIT digest algorithm id

# --- CWT / EAT claims (RFC 8392, RFC 9711) ------------------------------------
ISS: Final = 1
SUB: Final = 2
AUD: Final = 3
EXP: Final = 4
NBF: Final = 5
IAT: Final = 6
CTI: Final = 7
NONCE: Final = 10
NONCE_MIN_SIZE: Final = 8  # eat_nonce is bstr .size (8..64) (RFC 9711 4.1)
NONCE_MAX_SIZE: Final = 64
UEID: Final = 256
OEMID: Final = 258
HWMODEL: Final = 259
HWVERSION: Final = 260
UPTIME: Final = 261
OEMBOOT: Final = 262
DBGSTAT: Final = 263
EAT_PROFILE: Final = 265
SUBMODS: Final = 266
BOOTCOUNT: Final = 267
SWNAME: Final = 270
SWVERSION: Final = 271
MEASUREMENTS: Final = 273

# dbgstat values (RFC 9711 4.2.9)
DBG_ENABLED: Final = 0
DBG_DISABLED: Final = 1
DBG_DISABLED_SINCE_BOOT: Final = 2
DBG_DISABLED_PERMANENTLY: Final = 3
DBG_DISABLED_FULLY_AND_PERMANENTLY: Final = 4

# measured component (draft-ietf-rats-eat-measured-component)
MC_ID: Final = 1  # [name, ? version]
MC_MEASUREMENT: Final = 2  # [alg, digest]
MC_CONTENT_FORMAT: Final = 10000  # measurements[] entry content-format (provisional)

# --- private-use claims of this project (below -65536) ----------------------
EVIDENCE_SEQ: Final = -65537  # uint: per-device counter, monotonic within a boot
RUNTIME_PROCESSES: Final = -65538  # [* tstr]
RUNTIME_ENDPOINTS: Final = -65539  # [* tstr]

CMD_TYPE: Final = -65550  # tstr, one of COMMAND_TYPES
CMD_SEQ: Final = -65551  # uint: per-device command sequence number
CMD_REASON: Final = -65552  # tstr
CMD_RECEIPTS: Final = -65553  # [* [bootcount, seq]] evidence committed
CMD_RELEASE_NAME: Final = -65554  # tstr: firmware release to install (remediate)

EPOCH_ID: Final = -65560  # uint
GENERATION_ID: Final = -65561  # uint: the hub's generation (restore detection, hub/crypto/hubstate.py)

# attestation result extensions carried next to EAR's own keys
RES_PROBLEMS: Final = -65570  # [* tstr]
RES_EVIDENCE_REF: Final = -65571  # tstr: the evidence's dedup key, e.g. "3:42" (bootcount:seq)
RES_MANIFEST_REF: Final = -65572  # tstr "class#sequence" or null
RES_POLICY_REF: Final = -65573  # tstr "class@version"
RES_ACTION: Final = -65574  # tstr: what the hub did
# ...and their names in the JWT form of a result (docs/PROTOCOL.md#results)
RES_JSON_PROBLEMS: Final = "fleet-attest.problems"
RES_JSON_EVIDENCE_REF: Final = "fleet-attest.evidence-ref"
RES_JSON_MANIFEST_REF: Final = "fleet-attest.manifest-ref"
RES_JSON_POLICY_REF: Final = "fleet-attest.policy-ref"
RES_JSON_ACTION: Final = "fleet-attest.action"
EAR_JWT_MEDIA_TYPE: Final = 'application/eat+jwt; eat_profile="tag:github.com,2023:veraison/ear"'

COMMAND_QUARANTINE: Final = "quarantine"
COMMAND_RELEASE: Final = "release"
COMMAND_CHALLENGE: Final = "challenge"
COMMAND_RECEIPT: Final = "receipt"
COMMAND_REMEDIATE: Final = "remediate"
COMMAND_TYPES: Final = frozenset(
    {COMMAND_QUARANTINE, COMMAND_RELEASE, COMMAND_CHALLENGE, COMMAND_RECEIPT, COMMAND_REMEDIATE}
)

# --- EAR (draft-ietf-rats-ear) and AR4SI --------------------------------------
EAR_STATUS: Final = 1000
EAR_TRUST_VECTOR: Final = 1001
EAR_RAW_EVIDENCE: Final = 1002
EAR_POLICY_ID: Final = 1003  # tstr in profile EAR_PROFILE (the array form belongs to later drafts)
EAR_VERIFIER_ID: Final = 1004
EAR_VERIFIER_DEVELOPER: Final = 0  # ear-verifier-id = { ? &(developer: 0) => tstr, ? &(build: 1) => tstr }
EAR_VERIFIER_BUILD: Final = 1

TIER_NONE: Final = 0
TIER_AFFIRMING: Final = 2
TIER_WARNING: Final = 32
TIER_CONTRAINDICATED: Final = 96

TV_INSTANCE_IDENTITY: Final = 0
TV_CONFIGURATION: Final = 1
TV_EXECUTABLES: Final = 2
TV_FILE_SYSTEM: Final = 3
TV_HARDWARE: Final = 4
TV_RUNTIME_OPAQUE: Final = 5
TV_STORAGE_OPAQUE: Final = 6
TV_SOURCED_DATA: Final = 7

# --- signed manifest payload (SUIT-style; docs/PROTOCOL.md) ------------------
MF_VERSION: Final = 1  # manifest format version, 1
MF_SEQUENCE: Final = 2  # SUIT sequence number
MF_DEVICE_CLASS: Final = 3
MF_MIN_SVN: Final = 4
MF_RELEASES: Final = 5
MF_ISSUED_AT: Final = 6

REL_VERSION: Final = 1
REL_SVN: Final = 2
REL_COMPONENTS: Final = 3
REL_STATUS: Final = 4  # "approved" | "deprecated" | "revoked"

COMP_NAME: Final = 1
COMP_DIGEST: Final = 2  # [alg, bstr]
COMP_SIZE: Final = 3

RELEASE_APPROVED: Final = "approved"
RELEASE_DEPRECATED: Final = "deprecated"
RELEASE_REVOKED: Final = "revoked"

# --- nonces --------------------------------------------------------------------
NONCE_EPOCH_PREFIX: Final = b"E"
NONCE_CHALLENGE_PREFIX: Final = b"C"

# --- PSA attestation token (RFC 9783, profile PSA_PROFILE) ---------------------
PSA_CLIENT_ID: Final = 2394  # int (caller's partition id, int32)
PSA_SECURITY_LIFECYCLE: Final = 2395  # uint, 0x0000..0x60ff (high byte: state, low byte: sub-state)
PSA_IMPLEMENTATION_ID: Final = 2396  # bstr .size 32
PSA_BOOT_SEED: Final = 268  # EAT bootseed (RFC 9711 4.2.13), bstr .size (8..32) in RFC 9783
PSA_LEGACY_BOOT_SEED: Final = 2397  # boot seed of profile http://arm.com/psa/2.0.0 (unknown in psa#tfm: ignored)
PSA_CERTIFICATION_REFERENCE: Final = 2398  # tstr, EAN-13+5 "1234567890123-12345"
PSA_SOFTWARE_COMPONENTS: Final = 2399  # [+ software component]
PSA_VERIFICATION_SERVICE: Final = 2400  # tstr
# Older profiles RFC 9783 (appendix A) recommends verifiers accept, with their claim keys mapped:
PSA_PROFILE_2: Final = "http://arm.com/psa/2.0.0"  # eat_profile (265); keys as psa#tfm, boot seed 2397
PSA_PROFILE_1: Final = "PSA_IOT_PROFILE_1"  # in claim -75000; every claim in the -75000 range
PSA_P1_PROFILE: Final = -75000
PSA_P1_CLIENT_ID: Final = -75001
PSA_P1_SECURITY_LIFECYCLE: Final = -75002
PSA_P1_IMPLEMENTATION_ID: Final = -75003
PSA_P1_BOOT_SEED: Final = -75004
PSA_P1_HARDWARE_VERSION: Final = -75005  # the certification reference of later profiles
PSA_P1_SOFTWARE_COMPONENTS: Final = -75006
PSA_P1_NO_SW_MEASUREMENTS: Final = -75007
PSA_P1_NONCE: Final = -75008
PSA_P1_INSTANCE_ID: Final = -75009
PSA_P1_VERIFICATION_SERVICE: Final = -75010
PSA_INSTANCE_ID_SIZE: Final = 33  # ueid (256): 0x01 (RAND) || 32 bytes
PSA_IMPLEMENTATION_ID_SIZE: Final = 32
PSA_HASH_SIZES: Final = (32, 48, 64)  # psa-hash-type: nonce, measurement value, signer id

SWC_MEASUREMENT_TYPE: Final = 1  # tstr, e.g. "BL", "PRoT", "ARoT", "App"
SWC_MEASUREMENT_VALUE: Final = 2  # psa-hash-type
SWC_VERSION: Final = 4  # tstr
SWC_SIGNER_ID: Final = 5  # psa-hash-type
SWC_MEASUREMENT_DESCRIPTION: Final = 6  # tstr

PSA_LIFECYCLE_UNKNOWN: Final = 0x0000
PSA_LIFECYCLE_ASSEMBLY_AND_TEST: Final = 0x1000
PSA_LIFECYCLE_PROVISIONING: Final = 0x2000
PSA_LIFECYCLE_SECURED: Final = 0x3000
PSA_LIFECYCLE_NON_PSA_ROT_DEBUG: Final = 0x4000
PSA_LIFECYCLE_RECOVERABLE_PSA_ROT_DEBUG: Final = 0x5000
PSA_LIFECYCLE_DECOMMISSIONED: Final = 0x6000

COMP_SIGNER_ID: Final = 4  # manifest component: hash of the key that signs the image (PSA signer id)

# --- key rotation (docs/PROTOCOL.md, "Key rotation") -----------------------------
KEY_ROTATION_PROFILE: Final = "tag:fleet-attest.org,2026:key-rotation/v1"
KEY_ROTATION_MEDIA_TYPE: Final = "application/vnd.fleet-attest.key-rotation+cose"
ROT_NEW_KEY: Final = -65590  # bstr: SubjectPublicKeyInfo (DER) of the new key
ROT_PROOF: Final = -65591  # bstr: tagged COSE_Sign1 by the NEW key over [device id, nonce, SHA-256(old SPKI)]

# --- data-integrity evidence (profile DATA_PROFILE; docs/schemes/data.md) -------
DATA_BATCH_SEQ: Final = -65580  # uint: batch number, 1 at each chain's genesis (one chain per device and boot)
DATA_PREV: Final = -65581  # bstr .size 32: SHA-256 of the previous batch's signed payload; DATA_GENESIS for batch 1
DATA_RECORDS_DIGEST: Final = -65582  # [-16, bstr .size 32]: SHA-256 of the records bytes carried alongside
DATA_ATTESTATION: Final = -65583  # [bootcount, evidence seq] of the firmware evidence last sent this boot, or null
DATA_PREV_BOOT: Final = -65584  # ? [bootcount, last batch seq, last batch digest]: the previous boot's chain end
DATA_RECORDS: Final = -65585  # COSE unprotected header label: bstr .cbor [+ [time, metric, value]]
DATA_GENESIS: Final = bytes(32)

# --- policy announcements (retained, signed by the hub key; docs/OPERATIONS.md) ---
POLICY_TOPIC_PREFIX: Final = "hub/policies"  # hub/policies/{device class}
POLICY_PROFILE: Final = "tag:fleet-attest.org,2026:policy/v1"  # COSE content type; payload: the policy TOML


def policy_topic(device_class: str) -> str:
    return f"{POLICY_TOPIC_PREFIX}/{device_class}"

# --- TPM 2.0 quote evidence (TPM_MEDIA_TYPE; docs/schemes/tpm.md) -------------
TPM_ENV_ATTEST: Final = 1  # bstr: TPMS_ATTEST as the TPM marshalled it (TPM2B_ATTEST contents)
TPM_ENV_SIGNATURE: Final = 2  # bstr: TPMT_SIGNATURE over SHA-256(TPMS_ATTEST)
TPM_ENV_PCRS: Final = 3  # [+ [pcr index, bstr .size 32]]: the quoted SHA-256 PCR values, ascending index
TPM_GENERATED_VALUE: Final = 0xFF544347  # TPMS_ATTEST magic
TPM_ST_ATTEST_QUOTE: Final = 0x8018
TPM_ALG_SHA256: Final = 0x000B
TPM_ALG_ECDSA: Final = 0x0018
TPM_BOOT_PCR: Final = 0  # firmware components are extended here at boot, in manifest order
