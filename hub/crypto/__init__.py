"""Cryptographic primitives: strict CBOR decoding (RFC 8949 §5.4 / §4.2), COSE_Sign1 (RFC 9052 §4), keys,
the hub's own keys, X.509 device PKI and freshness nonces.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, Sign1, decode_sign1, sign1, verify_sign1
from hub.crypto.freshness import challenge_nonce, check_nonce, epoch_nonce
from hub.crypto.hubkeys import HubKeyError, HubKeys, init_state, load_hub_keys
from hub.crypto.keys import KeyFileError, PrivateKey, PublicKey, fingerprint
from hub.crypto.pki import PkiError, validate_device_id

__all__ = [
    "CborError", "CoseError", "HubKeyError", "HubKeys", "KeyFileError", "PkiError", "PrivateKey", "PublicKey",
    "Sign1", "challenge_nonce", "check_nonce", "decode_sign1", "epoch_nonce", "fingerprint", "init_state",
    "load_hub_keys", "loads_strict", "sign1", "validate_device_id", "verify_sign1",
]
