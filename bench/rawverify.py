"""The limit: ES256 verifications per CPU-second with ``cryptography`` (OpenSSL) alone, on this machine."""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

_MESSAGES = 64


def raw_verify_per_cpu_s(seconds: float = 2.0) -> float:
    """ECDSA P-256/SHA-256 verify of ~300-byte messages, one thread; verifications per CPU-second."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    algorithm = ec.ECDSA(hashes.SHA256())
    signed = [(m, key.sign(m, algorithm)) for m in (os.urandom(300) for _ in range(_MESSAGES))]
    done = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        for message, signature in signed:
            public.verify(signature, message, algorithm)
        done += len(signed)
    return done / (time.process_time() - start)
