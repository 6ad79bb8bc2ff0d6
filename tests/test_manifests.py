"""Signed firmware manifests: signature, trusted signers, anti-rollback of reference values, sources."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from helpers import parts, rebuild, sign_raw

from device_sim import firmware
from hub import wire
from hub.crypto.hubkeys import load_operator_keys
from hub.crypto.keys import PublicKey, fingerprint, load_private_file
from hub.reference.manifests import Manifest, ManifestError, parse_source, sign_manifest, verify_manifest
from hub.reference.values import References
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR
from tests.helpers import new_store

CLASSES = ("env-sensor", "smart-meter")


@pytest.fixture(scope="module")
def operator() -> ec.EllipticCurvePrivateKey:
    key = load_private_file(MANIFESTS_DIR / "keys" / "demo-operator.key.pem")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="module")
def trusted() -> dict[str, PublicKey]:
    return load_operator_keys((str(DEMO_OPERATOR_KEY),))


def source(device_class: str = "smart-meter") -> Manifest:
    return parse_source((MANIFESTS_DIR / device_class / "manifest.toml").read_text())


@pytest.mark.parametrize("device_class", CLASSES)
def test_repository_manifests_verify_and_match_their_sources(device_class: str, trusted: dict[str, PublicKey]) -> None:
    signed = verify_manifest((MANIFESTS_DIR / device_class / "manifest.cose").read_bytes(), trusted)
    assert signed.releases == source(device_class).releases and signed.min_svn == source(device_class).min_svn


@pytest.mark.parametrize("device_class", CLASSES)
def test_manifests_match_the_simulators_images(device_class: str) -> None:
    """Reference values are independent of the simulator's code: recomputed digests agree."""
    manifest = source(device_class)
    for rel in manifest.releases:
        digests = {c.name: c.digest for c in rel.components}
        for comp in firmware.components(device_class):
            assert digests[comp] == firmware.image_digest(device_class, comp, rel.version)


def test_sign_and_verify_round_trip(operator: ec.EllipticCurvePrivateKey, trusted: dict[str, PublicKey]) -> None:
    manifest = dataclasses.replace(source(), sequence=5)
    verified = verify_manifest(sign_manifest(manifest, operator, issued_at=1), trusted)
    assert verified.sequence == 5 and verified.releases == manifest.releases and verified.issued_at == 1
    assert verified.signer == fingerprint(operator.public_key())


def test_untrusted_signer_refused(trusted: dict[str, PublicKey]) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ManifestError, match="untrusted"):
        verify_manifest(sign_manifest(source(), rogue), trusted)


def test_trusted_kid_with_another_signature_refused(operator: ec.EllipticCurvePrivateKey,
                                                    trusted: dict[str, PublicKey]) -> None:
    """A rogue key naming the operator's fingerprint as kid: the trusted key does not verify it."""
    rogue = ec.generate_private_key(ec.SECP256R1())
    kid = fingerprint(operator.public_key()).encode()
    raw = sign_raw(parts(sign_manifest(source(), operator))[2], rogue,
                   protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: kid})
    with pytest.raises(ManifestError, match="bad-signature"):
        verify_manifest(raw, trusted)


def test_unprotected_kid_does_not_name_the_signer(operator: ec.EllipticCurvePrivateKey,
                                                  trusted: dict[str, PublicKey]) -> None:
    body = parts(sign_manifest(source(), operator))
    body[0] = cbor2.dumps({wire.HDR_ALG: wire.ALG_ES256})
    body[1] = {wire.HDR_KID: fingerprint(operator.public_key()).encode()}
    with pytest.raises(ManifestError, match="untrusted"):
        verify_manifest(rebuild(body), trusted)


def test_tampered_manifest_refused(operator: ec.EllipticCurvePrivateKey, trusted: dict[str, PublicKey]) -> None:
    body = parts(sign_manifest(source(), operator))
    payload = cbor2.loads(body[2])
    payload[wire.MF_MIN_SVN] = 0  # re-allow the rolled-back release
    body[2] = cbor2.dumps(payload)
    with pytest.raises(ManifestError, match="bad-signature"):
        verify_manifest(rebuild(body), trusted)


def test_ed25519_operator_key_accepted() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trusted = {fingerprint(key.public_key()): key.public_key()}
    assert verify_manifest(sign_manifest(source(), key), trusted).device_class == "smart-meter"


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        {wire.MF_VERSION: 2},
        {wire.MF_VERSION: 1, wire.MF_SEQUENCE: "1", wire.MF_DEVICE_CLASS: "c", wire.MF_MIN_SVN: 0,
         wire.MF_RELEASES: []},
        {wire.MF_VERSION: 1, wire.MF_SEQUENCE: 1, wire.MF_DEVICE_CLASS: "c", wire.MF_MIN_SVN: 0,
         wire.MF_RELEASES: [{wire.REL_VERSION: "1", wire.REL_SVN: 1,
                             wire.REL_COMPONENTS: [{wire.COMP_NAME: "a", wire.COMP_DIGEST: [-16, b"short"]}]}]},
        {wire.MF_VERSION: 1, wire.MF_SEQUENCE: 1, wire.MF_DEVICE_CLASS: "c", wire.MF_MIN_SVN: 0,
         wire.MF_RELEASES: [{wire.REL_VERSION: "1", wire.REL_SVN: 1, wire.REL_STATUS: "blessed",
                             wire.REL_COMPONENTS: [{wire.COMP_NAME: "a", wire.COMP_DIGEST: [-16, bytes(32)]}]}]},
        {wire.MF_VERSION: 1, wire.MF_SEQUENCE: True, wire.MF_DEVICE_CLASS: "c", wire.MF_MIN_SVN: 0,
         wire.MF_RELEASES: []},
    ],
    ids=["array", "version-2", "sequence-text", "short-digest", "bad-status", "sequence-bool"],
)
def test_signed_but_malformed_payload_refused(operator: ec.EllipticCurvePrivateKey, trusted: dict[str, PublicKey],
                                              payload: object) -> None:
    kid = fingerprint(operator.public_key()).encode()
    raw = sign_raw(cbor2.dumps(payload), operator, protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: kid})
    with pytest.raises(ManifestError):
        verify_manifest(raw, trusted)


# --- sequence numbers (RFC 9124 4.3.1) ---------------------------------------------------------


def test_lower_sequence_refused_by_references(operator: ec.EllipticCurvePrivateKey,
                                              trusted: dict[str, PublicKey]) -> None:
    refs = References(trusted)
    newer = sign_manifest(dataclasses.replace(source(), sequence=3), operator)
    older = sign_manifest(dataclasses.replace(source(), sequence=2, min_svn=0), operator)
    assert refs.offer_manifest(newer) is not None
    with pytest.raises(ManifestError, match="rollback"):
        refs.offer_manifest(older)
    assert refs.offer_manifest(newer) is None  # the same one again: nothing to adopt
    manifest = refs.manifest("smart-meter")
    assert manifest is not None and manifest.sequence == 3 and manifest.min_svn == 2


def test_higher_sequence_adopted(operator: ec.EllipticCurvePrivateKey, trusted: dict[str, PublicKey]) -> None:
    refs = References(trusted)
    refs.offer_manifest(sign_manifest(source(), operator))
    adopted = refs.offer_manifest(sign_manifest(dataclasses.replace(source(), sequence=2, min_svn=3), operator))
    assert adopted is not None and refs.manifest("smart-meter") == adopted


def test_store_keeps_old_manifests_and_refuses_lower(tmp_path: Path) -> None:
    store = new_store(tmp_path / 'hub')
    try:
        with store.transaction() as conn:
            assert store.save_manifest(conn, "smart-meter", 2, "op", b"two")
            assert not store.save_manifest(conn, "smart-meter", 1, "op", b"one")
            assert not store.save_manifest(conn, "smart-meter", 2, "op", b"two again")
            assert store.save_manifest(conn, "smart-meter", 3, "op", b"three")
        with store.reading() as conn:
            assert [r["sequence"] for r in store.manifest_history(conn, "smart-meter")] == [2, 3]
            assert store.latest_manifests(conn) == {"smart-meter": b"three"}
    finally:
        store.close()


# --- sources ---------------------------------------------------------------------------------

GOOD_RELEASE = (
    '[[release]]\nversion = "1"\nsvn = 1\n[[release.component]]\nname = "a"\ndigest = "sha256:' + "0" * 64 + '"\n'
)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("device_class = [", "not valid TOML"),
        ('sequence = 1\nmin_svn = 0\n' + GOOD_RELEASE, "device_class"),
        ('device_class = "c"\nmin_svn = 0\n' + GOOD_RELEASE, "sequence"),
        ('device_class = "c"\nsequence = -1\nmin_svn = 0\n' + GOOD_RELEASE, "non-negative"),
        ('device_class = "c"\nsequence = 1\nmin_svn = 0\n' + GOOD_RELEASE.replace("sha256:", "md5:"), "digest"),
        ('device_class = "c"\nsequence = 1\nmin_svn = 0\n' + GOOD_RELEASE.replace("sha256:0", "sha256:z"), "hex"),
        ('device_class = "c"\nsequence = 1\nmin_svn = 0\n' + GOOD_RELEASE * 2, "appears twice"),
        ('device_class = "c"\nsequence = 1\nmin_svn = 0\n' + GOOD_RELEASE.replace("svn = 1", 'svn = 1\nstatus = "ok"'),
         "status"),
        ('device_class = "c"\nsequence = 1\nmin_svn = 0\n[[release]]\nversion = "1"\nsvn = 1\n', "no components"),
    ],
    ids=["toml", "no-class", "no-sequence", "negative", "algorithm", "hex", "duplicate", "status", "empty-release"],
)
def test_source_errors(text: str, match: str) -> None:
    expected: type[ValueError] = ManifestError
    with pytest.raises(expected, match=match):
        parse_source(text)
