"""The worker's trust-anchor cache: verification may use an anchor cached from an earlier batch, but the
verdict always follows the device row read under lock (another worker or an operator may have changed it)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from helpers import HubEnv, env_fixture, incoming, only, sign_claims

from hub.appraisal.operations import revoke
from hub.crypto.keys import public_pem

A = "smart-meter-0001"


env = env_fixture(A)


def _rotate_elsewhere(env: HubEnv, key: ec.EllipticCurvePrivateKey) -> None:
    """A key change committed by someone else (another worker's rotation evidence, an operator)."""
    with env.store.transaction() as conn:
        device = env.store.devices(conn, [A], lock=True)[A]
        device.public_key_pem = public_pem(key.public_key())
        device.key_version += 1
        env.store.save_devices(conn, [device])


def test_second_batch_uses_cached_anchor_and_is_affirmed(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    reads: list[object] = []
    original = env.store.devices

    def counting(conn, ids, *, lock=False):  # type: ignore[no-untyped-def]
        reads.append(lock)
        return original(conn, ids, lock=lock)

    env.store.devices = counting  # type: ignore[method-assign]
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))
    assert decision.status == "affirming"
    assert reads == [True]  # no unlocked pre-read: the anchor came from the cache; the locked read stays


def test_key_changed_elsewhere_is_verified_with_the_locked_rows_key(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    new_key = ec.generate_private_key(ec.SECP256R1())
    _rotate_elsewhere(env, new_key)
    decision = only(pipeline.process([incoming(A, sign_claims(env.claims(A), new_key, A))]))
    assert decision.status == "affirming"
    assert env.device(A).key_version == 2


def test_old_key_after_a_change_elsewhere_is_rejected(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    _rotate_elsewhere(env, ec.generate_private_key(ec.SECP256R1()))
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))  # still signed with the old, cached key
    assert decision.status == "rejected" and decision.reason == "bad-signature"
    assert env.device(A).seq == 1


def test_revocation_elsewhere_after_caching_is_honoured(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    revoke(env.store, A, "compromised", actor="test")
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))
    assert decision.status == "rejected" and decision.reason == "revoked"
    assert env.device(A).seq == 1


def test_every_evidence_of_a_changed_device_in_one_batch_is_verified_again(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    new_key = ec.generate_private_key(ec.SECP256R1())
    _rotate_elsewhere(env, new_key)
    outcome = pipeline.process([incoming(A, sign_claims(env.claims(A), new_key, A)),
                                incoming(A, sign_claims(env.claims(A), new_key, A))])
    assert [d.status for d in outcome.decisions] == ["affirming", "affirming"]
    assert env.device(A).seq == 3
