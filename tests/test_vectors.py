"""Protocol test vectors (tests/vectors/<kind>/<case>.json) run through the hub's own verifiers.

Kinds checked here: evidence, commands, results, manifests, epoch. Other kinds
under tests/vectors/ (tpm, psa, data) belong to their schemes' own tests.
Valid vectors are also checked by an independent implementation (pycose for
the signature, the simulator's parser for commands and epochs), and
``generate.py --check`` must find every file current.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

from device_sim import commands as sim_commands
from device_sim.keys import load_hub_public_key
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, Sign1, decode_sign1, verify_sign1
from hub.crypto.freshness import check_nonce, epoch_nonce
from hub.crypto.keys import PublicKey, fingerprint, load_public_pem
from hub.reference.manifests import ManifestError, verify_manifest
from hub.reference.trust import TrustVector, tier_of
from hub.reference.values import References
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.firmware import FirmwareClaims, FirmwareScheme
from hub.server.localhub import LocalHub, enrol_all
from tests.e2e import Observer, make_env, signed_payload

VECTORS = Path(__file__).parent / "vectors"
KNOWN_KINDS = ("evidence", "commands", "results", "manifests", "epoch")
REQUIRED = {"description": str, "kind": str, "expected": str, "cose_hex": str, "public_key_pem": str}
PYCOSE_ALGS = {wire.ALG_ES256, wire.ALG_ES384, wire.ALG_ES512, wire.ALG_EDDSA}


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _files(*kinds: str) -> list[Path]:
    return sorted(p for kind in kinds for p in (VECTORS / kind).glob("*.json"))


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.stem}" for p in paths]


def _params(*kinds: str) -> pytest.MarkDecorator:
    paths = _files(*kinds)
    return pytest.mark.parametrize("path", paths, ids=_ids(paths))


def _raw(vector: Mapping[str, Any]) -> bytes:
    return bytes.fromhex(vector["cose_hex"])


def _key(vector: Mapping[str, Any], field: str = "public_key_pem") -> PublicKey:
    return load_public_pem(vector[field])


# --- shape --------------------------------------------------------------------------------------


def test_every_kind_has_vectors() -> None:
    for kind in KNOWN_KINDS:
        assert _files(kind), f"no vectors for {kind}"
    assert len(_files("evidence")) >= 30


@_params(*KNOWN_KINDS)
def test_vector_shape(path: Path) -> None:
    vector = _load(path)
    for name, kind in REQUIRED.items():
        assert isinstance(vector.get(name), kind), f"{name} missing or not {kind.__name__}"
    assert vector["kind"] == path.parent.name
    assert vector["expected"] in ("valid", "invalid")
    if vector["expected"] == "invalid":
        assert isinstance(vector.get("reason"), str) and vector["reason"]
    load_public_pem(vector["public_key_pem"])


def test_vectors_are_current() -> None:
    """generate.py reproduces every vector and docs/EXAMPLES.md byte for byte."""
    module: ModuleType = importlib.import_module("tests.vectors.generate")
    outputs: dict[Path, str] = module.outputs()
    stale = [str(p) for p, text in outputs.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"run tests/vectors/generate.py: {stale}"
    on_disk = set(_files(*KNOWN_KINDS))
    assert on_disk == {p for p in outputs if p.suffix == ".json"}, "vector files not written by generate.py"


# --- evidence -----------------------------------------------------------------------------------


def _anchor(vector: Mapping[str, Any]) -> TrustAnchor:
    ueid = vector.get("anchor_ueid_hex")
    return TrustAnchor(vector["device_id"], vector["device_class"], _key(vector),
                       bytes.fromhex(ueid) if ueid else None)


@_params("evidence")
def test_evidence(path: Path) -> None:
    vector = _load(path)
    scheme = FirmwareScheme()
    if vector["expected"] == "invalid":
        with pytest.raises(EvidenceError) as info:
            scheme.verify(_raw(vector), _anchor(vector))
        assert info.value.reason == vector["reason"], info.value
        assert info.value.authenticated == vector["authenticated"], "authenticated evidence decides quarantine"
        return
    claims = scheme.verify(_raw(vector), _anchor(vector))
    expected = vector["expected_claims"]
    body = claims.body
    assert isinstance(body, FirmwareClaims)
    assert claims.counter == (expected["bootcount"], expected["seq"])
    assert claims.dedup_key == expected["dedup_key"]
    assert claims.issued_at == expected["iat"]
    assert claims.nonce is not None and claims.nonce.hex() == expected["nonce_hex"]
    assert body.swversion == expected["swversion"]
    assert [{"name": c.name, "version": c.version, "digest_hex": c.digest.hex()} for c in body.components] == \
        expected["components"]
    fresh = vector.get("freshness")
    if fresh is not None:
        check = check_nonce(bytes.fromhex(fresh["nonce_secret_hex"]), claims.nonce, vector["device_id"],
                            fresh["current_epoch"])
        assert check.ok and check.kind == fresh["nonce_kind"], check
        too_late = check_nonce(bytes.fromhex(fresh["nonce_secret_hex"]), claims.nonce, vector["device_id"],
                               fresh["current_epoch"] + 2)
        assert not too_late.ok and "stale" in too_late.problem


def test_evidence_variants_share_one_dedup_key() -> None:
    """Re-encoded or malleated evidence is the same evidence: the dedup key comes from the signed payload."""
    keys = set()
    for name in ("valid-es256", "valid-es256-high-s", "valid-unprotected-extra"):
        vector = _load(VECTORS / "evidence" / f"{name}.json")
        keys.add(FirmwareScheme().verify(_raw(vector), _anchor(vector)).dedup_key)
    assert keys == {"3:42"}


def test_evidence_limit_is_16_kib() -> None:
    unknown = _load(VECTORS / "evidence" / "valid-unknown-claim.json")
    oversized = _load(VECTORS / "evidence" / "oversized.json")
    assert len(_raw(unknown)) <= 16 * 1024 < len(_raw(oversized))


# --- hub messages: what a device does ------------------------------------------------------------


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _verified(raw: bytes, key: PublicKey) -> tuple[Sign1, Mapping[object, object]]:
    try:
        message = decode_sign1(raw)
        verify_sign1(message, key)
        payload = loads_strict(message.payload, max_depth=8)
    except (CoseError, CborError) as exc:
        raise Refused(exc.reason) from exc
    if not isinstance(payload, Mapping):
        raise Refused("bad-payload")
    return message, payload


def device_applies(vector: Mapping[str, Any]) -> Mapping[object, object]:
    """The rules of PROTOCOL.md "Commands" in the order a device applies them; raises Refused."""
    _, payload = _verified(_raw(vector), _key(vector))
    kind = payload.get(wire.CMD_TYPE)
    if kind not in wire.COMMAND_TYPES:
        raise Refused("bad-payload")
    if payload.get(wire.SUB) != vector["device_id"]:
        raise Refused("misaddressed")
    exp = payload.get(wire.EXP)
    if not isinstance(exp, int) or exp <= vector["now"]:
        raise Refused("expired")
    seq = payload.get(wire.CMD_SEQ)
    assert isinstance(seq, int)
    last = vector["last_applied_seq"]
    if kind in (wire.COMMAND_QUARANTINE, wire.COMMAND_RELEASE, wire.COMMAND_REMEDIATE) and last is not None \
            and seq <= last:
        raise Refused("replayed")
    if kind == wire.COMMAND_CHALLENGE and not isinstance(payload.get(wire.NONCE), bytes):
        raise Refused("bad-payload")
    return payload


@_params("commands")
def test_command(path: Path) -> None:
    vector = _load(path)
    if vector["expected"] == "invalid":
        with pytest.raises(Refused) as info:
            device_applies(vector)
        assert info.value.reason == vector["reason"]
        return
    payload = device_applies(vector)
    expected = vector["expected_command"]
    assert payload[wire.CMD_TYPE] == expected["type"] and payload[wire.SUB] == expected["sub"]
    assert payload[wire.CMD_SEQ] == expected["seq"] and payload[wire.EXP] == expected["exp"]
    assert decode_sign1(_raw(vector)).kid == vector["hub_kid"].encode()
    if expected["type"] == wire.COMMAND_CHALLENGE:
        nonce = payload[wire.NONCE]
        assert isinstance(nonce, bytes) and nonce.hex() == expected["nonce_hex"] and nonce[:1] == b"C"


@_params("commands", "epoch")
def test_simulator_agrees_on_hub_messages(path: Path) -> None:
    """The simulator's own COSE parser (no hub code) accepts exactly the authentic messages."""
    vector = _load(path)
    hub_key = load_hub_public_key(vector["public_key_pem"].encode())
    parse = sim_commands.parse_epoch if vector["kind"] == "epoch" else sim_commands.parse_command
    if vector["expected"] == "valid" or vector["reason"] in ("expired", "expired-at-exp", "misaddressed", "replayed"):
        parse(_raw(vector), hub_key)  # authentic: refusing it is the device's state and clock's call
    else:
        with pytest.raises(sim_commands.MessageError) as info:
            parse(_raw(vector), hub_key)
        assert info.value.reason is sim_commands.Rejection.FORGED


@_params("results")
def test_result(path: Path) -> None:
    vector = _load(path)
    if vector["expected"] == "invalid":
        with pytest.raises(Refused) as info:
            _verified(_raw(vector), _key(vector))
        assert info.value.reason == vector["reason"]
        return
    message, payload = _verified(_raw(vector), _key(vector))
    expected = vector["expected_result"]
    assert message.protected.get(wire.HDR_CONTENT_TYPE) == "application/eat+cwt"
    assert payload[wire.EAT_PROFILE] == wire.EAR_PROFILE and payload[wire.SUB] == vector["device_id"]
    submods = payload[wire.SUBMODS]
    assert isinstance(submods, Mapping) and list(submods) == ["firmware"]
    appraisal = submods["firmware"]
    assert isinstance(appraisal, Mapping)
    vector_cbor = appraisal[wire.EAR_TRUST_VECTOR]
    assert isinstance(vector_cbor, Mapping)
    assert {str(k): v for k, v in vector_cbor.items()} == expected["trust_vector"]
    values = [int(v) for v in vector_cbor.values()]
    assert appraisal[wire.EAR_STATUS] == expected["tier"] == max(int(tier_of(v)) for v in values)
    assert payload[wire.RES_ACTION] == expected["action"]
    assert payload[wire.RES_EVIDENCE_REF] == expected["evidence_ref"]
    assert payload[wire.RES_MANIFEST_REF] == expected["manifest_ref"]
    assert payload[wire.RES_POLICY_REF] == expected["policy_ref"]
    assert list(payload[wire.RES_PROBLEMS]) == expected["problems"]  # type: ignore[call-overload]
    nonce = payload.get(wire.NONCE)
    assert (nonce.hex() if isinstance(nonce, bytes) else nonce) == expected["nonce_hex"]
    rebuilt = TrustVector(*[int(vector_cbor.get(i, 0)) for i in range(8)])
    assert int(rebuilt.tier()) == expected["tier"]


@_params("epoch")
def test_epoch(path: Path) -> None:
    vector = _load(path)
    if vector["expected"] == "invalid":
        with pytest.raises(Refused) as info:
            _verified(_raw(vector), _key(vector))
        assert info.value.reason == vector["reason"]
        return
    _, payload = _verified(_raw(vector), _key(vector))
    expected = vector["expected_epoch"]
    assert payload[wire.EAT_PROFILE] == wire.EPOCH_PROFILE
    assert payload[wire.EPOCH_ID] == expected["epoch"] and payload[wire.IAT] == expected["iat"]
    nonce = payload[wire.NONCE]
    assert isinstance(nonce, bytes) and len(nonce) == 32 and nonce.hex() == expected["nonce_hex"]
    assert nonce == epoch_nonce(bytes.fromhex(vector["nonce_secret_hex"]), expected["epoch"])


# --- manifests ----------------------------------------------------------------------------------


def _trusted(vector: Mapping[str, Any]) -> dict[str, PublicKey]:
    keys = [load_public_pem(text) for text in vector["trusted_keys_pem"]]
    return {fingerprint(k): k for k in keys}


def _manifest_reason(exc: ManifestError) -> str:
    cause = exc.__cause__
    if isinstance(cause, (CoseError, CborError)):
        return cause.reason
    if "untrusted key" in str(exc):
        return "untrusted-signer"
    return "bad-payload"


@_params("manifests")
def test_manifest(path: Path) -> None:
    vector = _load(path)
    trusted = _trusted(vector)
    if vector["expected"] == "invalid":
        with pytest.raises(ManifestError) as info:
            verify_manifest(_raw(vector), trusted)
        assert _manifest_reason(info.value) == vector["reason"], info.value
        return
    manifest = verify_manifest(_raw(vector), trusted)
    assert decode_sign1(_raw(vector)).kid == manifest.signer.encode()
    assert manifest.signer == fingerprint(_key(vector))
    expected = vector.get("expected_manifest")
    if expected is not None:
        assert (manifest.device_class, manifest.sequence, manifest.min_svn) == \
            (expected["device_class"], expected["sequence"], expected["min_svn"])
        assert [{"version": r.version, "svn": r.svn, "status": r.status,
                 "components": {c.name: c.digest.hex() for c in r.components}} for r in manifest.releases] == \
            expected["releases"]
    if "held_cose_hex" not in vector:
        return
    references = References(trusted)
    held = references.offer_manifest(bytes.fromhex(vector["held_cose_hex"]))
    assert held is not None and held.sequence == vector["held_sequence"]
    if vector["store_expected"] == "refused":
        with pytest.raises(ManifestError, match="rollback"):
            references.offer_manifest(_raw(vector))
    else:
        assert references.offer_manifest(_raw(vector)) is None
    current = references.manifest(held.device_class)
    assert current is not None and current.sequence == vector["held_sequence"]


# --- an independent COSE implementation ---------------------------------------------------------


def _pycose_verifies(raw: bytes, key: PublicKey) -> bool:
    """pycose 1.1 on the parts decoded by cbor2 (it cannot decode tagged messages under cbor2 6 itself)."""
    tag = cbor2.loads(raw)
    protected, unprotected, payload, signature = tag.value
    message = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    message.key = CoseKey._from_cryptography_key(key)
    return bool(message.verify_signature())


def _pycose_cases() -> list[Path]:
    cases = []
    for path in _files(*KNOWN_KINDS):
        vector = _load(path)
        alg = cbor2.loads(cbor2.loads(_raw(vector)).value[0]).get(wire.HDR_ALG) \
            if vector["expected"] == "valid" or vector.get("reason") == "bad-signature" else None
        if alg in PYCOSE_ALGS and path.stem not in ("der-signature", "signature-short"):
            cases.append(path)
    return cases


@pytest.mark.parametrize("path", _pycose_cases(), ids=_ids(_pycose_cases()))
def test_pycose_agrees(path: Path) -> None:
    vector = _load(path)
    assert _pycose_verifies(_raw(vector), _key(vector)) == (
        vector["expected"] == "valid" or (vector["kind"] == "manifests" and vector["reason"] == "untrusted-signer"))


# --- through a real broker ----------------------------------------------------------------------


@pytest.mark.broker
def test_invalid_evidence_through_the_hub(broker: MosquittoProcess, tmp_path: Path) -> None:
    """Each evidence vector published to a live hub gets a result naming its reason code; evidence that
    does not authenticate never moves the device, evidence the device signed but that breaks the profile does."""
    env = make_env(broker, tmp_path, 1, "honest", device_burst=1000, device_rate_per_s=1000.0,
                   rejected_rows_per_min=1000)  # every vector gets its result (the budget is tested elsewhere)
    honest = _load(VECTORS / "evidence" / "valid-es256.json")
    device_id = honest["device_id"]
    enrol_all(env.settings, [Enrolment(device_id, honest["device_class"], honest["public_key_pem"],
                                       bytes.fromhex(honest["anchor_ueid_hex"]))])
    unauthenticated = {p.stem: v for p, v in ((p, _load(p)) for p in _files("evidence"))
                       if v["expected"] == "invalid" and not v["authenticated"]
                       and v["public_key_pem"] == honest["public_key_pem"]}
    result_topic = wire.device_topic(device_id, wire.RESULT)
    observer = Observer(broker.host, broker.port, (result_topic, wire.device_topic(device_id, wire.COMMAND))).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="vector-publisher", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()

    def publish(name: str, vector: Mapping[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        props.UserProperty = [("trace-id", name)]
        client.publish(wire.device_topic(device_id, wire.EVIDENCE), _raw(vector), qos=1,
                       properties=props).wait_for_publish(10)

    def reasons() -> dict[str, str]:
        out = {}
        for message in observer.on(result_topic):
            trace = dict(message.props.UserProperty).get("trace-id") if message.props else None
            problems = signed_payload(message.payload, env.keys)[wire.RES_PROBLEMS]
            out[str(trace)] = str(problems[0]).split(":")[0] if problems else ""
        return out

    try:
        with LocalHub(env.settings):
            for name, vector in unauthenticated.items():
                publish(name, vector)
            assert observer.wait(lambda: len(observer.on(result_topic)) >= len(unauthenticated), 20)
            got = reasons()
            assert {name: got.get(name) for name in unauthenticated} == \
                {name: v["reason"] for name, v in unauthenticated.items()}
            assert env.device_status(device_id) == "enrolled"
            assert observer.on(wire.device_topic(device_id, wire.COMMAND)) == []
            publish("valid-es256", honest)  # authentic, but its nonce is not from this hub's secret
            missing = _load(VECTORS / "evidence" / "missing-nonce.json")
            publish("missing-nonce", missing)  # authentic and breaks the profile: the device's own fault
            assert observer.wait(lambda: len(observer.on(wire.device_topic(device_id, wire.COMMAND))) >= 1, 20)
            assert observer.wait(lambda: len(observer.on(result_topic)) >= len(unauthenticated) + 2, 20)
            got = reasons()
            assert got["valid-es256"] == "bad-nonce"
            assert got["missing-nonce"] == "missing-claim"
            assert env.device_status(device_id) == "quarantined"
    finally:
        client.loop_stop()
        client.disconnect()
        observer.stop()
