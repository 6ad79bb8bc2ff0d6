"""Evidence of each profile, decoded with plain cbor2 and verified with cryptography; fleet mixes."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from device_sim import Profile, SimDevice, build_fleet, enrolment, firmware, parse_mix
from device_sim.commands import Epoch
from device_sim.profiles import MixError
from hub import wire

NONCE = bytes(range(32))


def open_evidence(raw: bytes, public_key_pem: bytes) -> tuple[dict[int, object], dict[int, object]]:
    """(protected header, claims) after verifying with the given public key, all by hand."""
    key = serialization.load_pem_public_key(public_key_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    tag = cbor2.loads(raw)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert dict(unprotected) == {} and len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA256()))
    return dict(cbor2.loads(protected)), dict(cbor2.loads(payload))


def claims_of(raw: bytes) -> dict[int, object]:
    return dict(cbor2.loads(cbor2.loads(raw).value[2]))


def measured(claims: dict[int, object]) -> list[tuple[str, str, int, bytes]]:
    out = []
    for content_format, component in claims[273]:  # type: ignore[attr-defined]
        assert content_format == 10000
        decoded = cbor2.loads(component)
        (name, version), (alg, digest) = decoded[1], decoded[2]
        out.append((name, version, alg, digest))
    return out


def genuine_sha256(cls: str, component: str, version: str) -> bytes:
    return hashlib.sha256(firmware.image_bytes(cls, component, version)).digest()


@pytest.mark.parametrize(
    ("cls", "names"), [("env-sensor", ["bootloader", "app"]), ("smart-meter", ["bootloader", "rtos", "metering-app"])]
)
def test_honest_evidence_claims(cls: str, names: list[str]) -> None:
    device = SimDevice(f"{cls}-0001", cls, clock=lambda: 1_800_000_000.5)
    first, second = device.make_evidence(NONCE), device.make_evidence(NONCE)
    protected, claims = open_evidence(first, device.public_key_pem)
    assert protected == {1: -7, 4: f"{cls}-0001".encode()}
    assert claims[265] == wire.FIRMWARE_PROFILE
    assert claims[10] == NONCE
    assert claims[256] == device.ueid and len(device.ueid) == 17 and device.ueid[0] == 1
    assert claims[259] == cls.encode()
    assert claims[262] is True
    assert claims[263] == 1
    assert claims[267] == 1
    assert claims[-65537] == 1
    assert claims[6] == 1_800_000_000 and type(claims[6]) is int
    assert claims[270] == f"{cls}-fw"
    assert claims[271] == ["1.2.0"]
    assert measured(claims) == [(n, "1.2.0", -16, genuine_sha256(cls, n, "1.2.0")) for n in names]
    assert open_evidence(second, device.public_key_pem)[1][-65537] == 2
    assert [r.seq for r in device.evidence_log] == [1, 2]
    assert device.evidence_log[0].raw == first


def test_reboot_resets_seq_and_counts_boots() -> None:
    device = SimDevice("env-sensor-0001", "env-sensor", bootcount=7)
    device.make_evidence(NONCE)
    device.reboot()
    claims = claims_of(device.make_evidence(NONCE))
    assert (claims[267], claims[-65537]) == (8, 1)


def test_tampered_app_digest_is_in_no_release() -> None:
    device = SimDevice("smart-meter-0001", "smart-meter", Profile.TAMPERED)
    found = measured(open_evidence(device.make_evidence(NONCE), device.public_key_pem)[1])
    genuine = {
        genuine_sha256("smart-meter", c, r.version)
        for c in firmware.components("smart-meter")
        for r in firmware.RELEASES
    }
    assert found[0][3] == genuine_sha256("smart-meter", "bootloader", "1.2.0")
    assert found[1][3] == genuine_sha256("smart-meter", "rtos", "1.2.0")
    assert found[2][0] == "metering-app" and found[2][3] not in genuine


def test_rollback_runs_release_1_0_0() -> None:
    device = SimDevice("env-sensor-0001", "env-sensor", Profile.ROLLBACK)
    claims = open_evidence(device.make_evidence(NONCE), device.public_key_pem)[1]
    assert claims[271] == ["1.0.0"]
    assert measured(claims) == [
        (n, "1.0.0", -16, genuine_sha256("env-sensor", n, "1.0.0")) for n in ("bootloader", "app")
    ]
    assert device.release.svn == 1


def test_forged_signs_with_another_key_but_keeps_its_kid() -> None:
    device = SimDevice("env-sensor-0001", "env-sensor", Profile.FORGED)
    raw = device.make_evidence(NONCE)
    with pytest.raises(InvalidSignature):
        open_evidence(raw, device.public_key_pem)
    assert cbor2.loads(cbor2.loads(raw).value[0]) == {1: -7, 4: b"env-sensor-0001"}
    # the enrolled key is the legit derived one, the same an honest twin has
    assert device.public_key_pem == SimDevice("env-sensor-0001", "env-sensor").public_key_pem


def test_replay_withholds_and_later_publishes_stale_evidence() -> None:
    device = SimDevice("env-sensor-0001", "env-sensor", Profile.REPLAY)
    assert device.evidence_due() == []  # no epoch yet
    nonces = [bytes([i]) * 32 for i in range(1, 5)]
    rounds = []
    for i, nonce in enumerate(nonces):
        device.set_epoch(Epoch(i + 1, nonce, 0))
        rounds.append([claims_of(raw) for raw in device.evidence_due()])
    assert [[(c[-65537], c[10]) for c in r] for r in rounds] == [
        [(1, nonces[0])],
        [(66, nonces[1])],  # a whole anti-replay window (64) above the withheld seq 2
        [(67, nonces[2]), (2, nonces[0])],  # stale: below the window of the high-water mark 67, old nonce
        [(68, nonces[3])],
    ]
    for rnd in rounds:  # every evidence, the stale one too, is properly signed
        assert all(c[256] == device.ueid for c in rnd)
    assert [(r.seq, r.kind.value) for r in device.evidence_log] == [
        (1, "epoch"),
        (66, "epoch"),
        (67, "epoch"),
        (2, "replay"),
        (68, "epoch"),
    ]


def test_demo_mix_for_50_devices() -> None:
    fleet = build_fleet(50, "demo", "demo")
    counts = {p: sum(1 for d in fleet if d.profile is p) for p in Profile}
    assert counts == {
        Profile.HONEST: 40,
        Profile.TAMPERED: 3,
        Profile.ROLLBACK: 3,
        Profile.REPLAY: 2,
        Profile.FORGED: 2,
        Profile.IGNORES_COMMANDS: 0,  # not in the "demo" mix (hub/cli/demo.py adds it)
    }
    assert [d.device_id for d in fleet[:4]] == [
        "env-sensor-0001",
        "smart-meter-0001",
        "env-sensor-0002",
        "smart-meter-0002",
    ]
    assert [d.device_class for d in fleet[:4]] == ["env-sensor", "smart-meter"] * 2
    assert len({d.device_id for d in fleet}) == 50
    again = build_fleet(50, "honest:40,tampered:3,rollback:3,replay:2,forged:2", "demo")
    assert [(d.device_id, d.profile) for d in fleet] == [(d.device_id, d.profile) for d in again]
    assert all(d.version == "1.2.0" for d in fleet if d.profile is not Profile.ROLLBACK)


def test_small_fleets_get_every_profile_and_versions_can_be_set() -> None:
    fleet = build_fleet(10, "demo")
    assert len(fleet) == 10 and {d.profile for d in fleet} == set(Profile) - {Profile.IGNORES_COMMANDS}
    assert [d.version for d in build_fleet(4, "honest@1.1.0:1")] == ["1.1.0"] * 4
    assert build_fleet(0, "demo") == []
    assert [e.weight for e in parse_mix("honest:2,forged")] == [2, 1]
    for bad in ("nonsense:3", "honest:x", "honest:0", "honest@9.9.9:1"):
        with pytest.raises(MixError):
            parse_mix(bad)


def test_enrolment_document() -> None:
    fleet = build_fleet(6, "honest:1,forged:1", "s1")
    doc = enrolment(fleet)
    entries = doc["devices"]
    assert isinstance(entries, list) and len(entries) == 6
    for device, entry in zip(fleet, entries, strict=True):
        assert set(entry) == {"device_id", "device_class", "public_key_pem", "ueid"}
        assert entry["public_key_pem"] == device.public_key_pem.decode()
        assert bytes.fromhex(entry["ueid"]) == device.ueid
    assert enrolment(build_fleet(6, "honest:1,forged:1", "s1")) == doc
    assert enrolment(build_fleet(6, "honest:1,forged:1", "s2")) != doc
