"""Shared test helpers: a hub on a SQLite file store (no broker), enrolled simulated devices,
evidence builders and raw COSE_Sign1 construction for negative tests.

The evidence is built with the simulator's claims map (``device_sim.evidence``) and signed
either by the simulator (``SimDevice``) or, for crafted variants, here by hand with
``cbor2`` + ``cryptography`` so that a test can put anything anywhere in the structure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.evidence import EvidenceClaims, claims_map
from device_sim.records import Profile
from hub import wire
from hub.appraisal.operations import Enrolment, enrol
from hub.appraisal.pipeline import BatchOutcome, Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.config import Settings, load_settings
from hub.crypto.freshness import challenge_nonce, epoch_nonce
from hub.crypto.hubkeys import HubKeys, load_hub_keys
from hub.crypto.hubstate import init_hub, open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.schemes.base import TrustAnchor
from hub.server.localhub import prepare_state
from hub.store import DeviceRecord, Store

SEED = "security-tests"
EPOCH = 7
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Claims = dict[int, Any]


# --- raw COSE ----------------------------------------------------------------------


def ecdsa_raw(key: ec.EllipticCurvePrivateKey, data: bytes, hash_alg: hashes.HashAlgorithm) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected_bytes, b"", payload])


def sign_raw(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    *,
    protected: Mapping[int, object] | bytes | None = None,
    unprotected: Mapping[object, object] | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
    tag: int | None = wire.COSE_SIGN1_TAG,
) -> bytes:
    """A COSE_Sign1 with exactly the headers given (protected may be pre-encoded bytes)."""
    if protected is None:
        protected = {wire.HDR_ALG: wire.ALG_ES256}
    protected_bytes = protected if isinstance(protected, bytes) else cbor2.dumps(dict(protected))
    tbs = sig_structure(protected_bytes, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(tbs)
    else:
        signature = ecdsa_raw(key, tbs, hash_alg or hashes.SHA256())
    body = [protected_bytes, dict(unprotected or {}), payload, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


def parts(raw: bytes) -> list[Any]:
    """The four elements of a tagged COSE_Sign1 (as a mutable list)."""
    item = cbor2.loads(raw)
    return list(item.value)


def rebuild(body: Sequence[object], tag: int = wire.COSE_SIGN1_TAG) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, list(body)))


def malleate(raw: bytes) -> bytes:
    """The same ES256 message with s replaced by n - s: a different byte string that still verifies."""
    body = parts(raw)
    sig = body[3]
    s = int.from_bytes(sig[32:], "big")
    body[3] = sig[:32] + (P256_ORDER - s).to_bytes(32, "big")
    return rebuild(body)


# --- evidence ------------------------------------------------------------------------


def honest_claims(device: SimDevice, nonce: bytes, seq: int, *, bootcount: int | None = None,
                  version: str | None = None) -> Claims:
    """The simulator's claims map for ``device`` (mutable, for crafting variants)."""
    version = version or device.version
    claims = EvidenceClaims(
        device_class=device.device_class, ueid=device.ueid, nonce=nonce,
        bootcount=device.bootcount if bootcount is None else bootcount, seq=seq, iat=int(time.time()),
        sw_name=firmware.sw_name(device.device_class), sw_version=version,
        measurements=firmware.measurements(device.device_class, version),
    )
    return dict(claims_map(claims))


def sign_claims(claims: Mapping[int, object], key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    return sign_raw(cbor2.dumps(dict(claims)), key,
                    protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: device_id.encode()})


def component(name: str, version: str | None, digest: bytes) -> list[object]:
    ident: list[object] = [name] if version is None else [name, version]
    return [wire.MC_CONTENT_FORMAT, cbor2.dumps({wire.MC_ID: ident, wire.MC_MEASUREMENT: [wire.SHA256, digest]})]


def incoming(device_id: str, payload: bytes, *, leaf: str = wire.EVIDENCE,
             content_type: str | None = wire.FIRMWARE_MEDIA_TYPE) -> Incoming:
    return Incoming(wire.device_topic(device_id, leaf), payload, content_type)


def anchor_for(device: SimDevice) -> TrustAnchor:
    return TrustAnchor(device.device_id, device.device_class, device.enrolled_key.public_key(), device.ueid)


# --- a hub on SQLite, no broker --------------------------------------------------------


@dataclass
class HubEnv:
    settings: Settings
    keys: HubKeys
    store: Store
    references: References
    devices: dict[str, SimDevice] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)

    def pipeline(self, *, clock: Callable[[], float] = time.time,
                 rate_limiter: RateLimiter | None = None) -> Pipeline:
        return Pipeline(self.store, SchemeRegistry(default_schemes()), self.keys, self.references,
                        rate_limiter=rate_limiter, clock=clock)

    def add_device(self, device_id: str, device_class: str = firmware.SMART_METER, profile: Profile = Profile.HONEST,
                   version: str | None = None, *, enrolled: bool = True) -> SimDevice:
        device = SimDevice(device_id, device_class, profile, seed=SEED, version=version)
        self.devices[device_id] = device
        if enrolled:
            enrol(self.store, [Enrolment(device_id, device_class, device.public_key_pem.decode(), device.ueid)],
                  actor="test")
        return device

    @property
    def epoch_nonce(self) -> bytes:
        return epoch_nonce(self.keys.nonce_secret, EPOCH)

    def challenge(self, device_id: str, epoch: int = EPOCH) -> bytes:
        return challenge_nonce(self.keys.nonce_secret, device_id, epoch)

    def next_seq(self, device_id: str) -> int:
        self._seq[device_id] = self._seq.get(device_id, 0) + 1
        return self._seq[device_id]

    def claims(self, device_id: str, nonce: bytes | None = None, seq: int | None = None, **kw: Any) -> Claims:
        device = self.devices[device_id]
        return honest_claims(device, self.epoch_nonce if nonce is None else nonce,
                             self.next_seq(device_id) if seq is None else seq, **kw)

    def evidence(self, device_id: str, claims: Mapping[int, object] | None = None) -> bytes:
        """Evidence signed with the device's key (its enrolled key, or the forged one for a forged profile)."""
        device = self.devices[device_id]
        key = device._signing_key
        return sign_claims(claims if claims is not None else self.claims(device_id), key, device_id)

    def set_epoch(self, epoch: int) -> None:
        with self.store.transaction() as conn:
            self.store.set_state(conn, "epoch", str(epoch))

    def device(self, device_id: str) -> DeviceRecord:
        with self.store.reading() as conn:
            return self.store.devices(conn, [device_id])[device_id]

    def verdicts(self, device_id: str) -> list[dict[str, Any]]:
        with self.store.reading() as conn:
            return list(reversed(self.store.verdict_history(conn, device_id, limit=10_000)))

    def command_count(self, device_id: str) -> int:
        with self.store.reading() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM command WHERE device_id = ?", (device_id,))
            return int(rows.scalar_one())

    def close(self) -> None:
        self.store.close()


def build_env(tmp_path: Path) -> HubEnv:
    """Hub keys, the repository's signed manifests, epoch ``EPOCH``, no devices yet."""
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub")
    settings = prepare_state(settings)
    keys = load_hub_keys(settings)
    store = open_store(settings)
    references = References(keys.operator_keys)
    with store.reading() as conn:
        problems = references.load(store.latest_manifests(conn), store.latest_policies(conn))
    assert problems == []
    env = HubEnv(settings, keys, store, references)
    env.set_epoch(EPOCH)
    return env


def only(outcome: BatchOutcome) -> Any:
    assert len(outcome.decisions) == 1, outcome
    return outcome.decisions[0]


def publishes_on(outcome: BatchOutcome, leaf: str) -> list[Any]:
    return [p for p in outcome.publishes if p.topic.endswith("/" + leaf)]


def run_cli(env: HubEnv, *args: str) -> Any:
    """``attest-hub --state-dir <env's> ARGS`` in-process, trusting the demo operator key."""
    from click.testing import CliRunner

    from hub.cli.main import cli
    from hub.server.localhub import DEMO_OPERATOR_KEY

    return CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), *args],
                              env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}, catch_exceptions=False)


def new_store(state_dir: Path, database_url: str = "") -> Store:
    """A new hub's store the way an operator makes one: ``attest-hub init`` (keys, schema by the migrations,
    generation), then opened as the hub opens it (audit key, checks). Opening a ``Store`` never creates a schema."""
    settings = load_settings(None, environ={}, state_dir=state_dir, database_url=database_url or None)
    init_hub(settings)
    return open_store(settings)


def env_fixture(*device_ids: str) -> Any:
    """A pytest fixture ``env``: a hub (``build_env``) with ``device_ids`` enrolled, closed afterwards.

    Use as ``env = env_fixture(A)`` at a test module's top level."""

    @pytest.fixture
    def env(tmp_path: Path) -> Iterator[HubEnv]:
        hub = build_env(tmp_path)
        for device_id in device_ids:
            hub.add_device(device_id)
        try:
            yield hub
        finally:
            hub.close()

    return env
