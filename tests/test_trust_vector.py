"""The AR4SI trust vector's encodings (draft-ietf-rats-ar4si; EAR, draft-ietf-rats-ear: ``ear.trustworthiness-vector``).

Checked against the definition, written out here from the dataclass's own fields, for every value kind: the
tier is the worst claim's tier, CBOR keys are the claim positions 0..7, JSON keys the hyphenated claim names,
and a zero claim is left out of both."""

from __future__ import annotations

from dataclasses import fields

from hypothesis import given
from hypothesis import strategies as st

from hub.reference.trust import Tier, TrustVector, tier_of

CLAIM = st.sampled_from([0, 1, 2, 3, 32, 33, 36, 95, 96, 97, 99, 127, -1, -2, -33, -97, -128])
VECTOR = st.builds(TrustVector, *([CLAIM] * len(fields(TrustVector))))


@given(VECTOR)
def test_encodings_follow_the_field_definition(vector: TrustVector) -> None:
    by_field = [(f.name, getattr(vector, f.name)) for f in fields(vector)]
    assert vector.values() == tuple(value for _, value in by_field)
    assert vector.to_cbor() == {key: value for key, (_, value) in enumerate(by_field) if value != 0}
    assert vector.to_json() == {name.replace("_", "-"): value for name, value in by_field if value != 0}
    assert vector.tier() == max((tier_of(value) for _, value in by_field), default=Tier.NONE)
    assert TrustVector.from_json(vector.to_json()) == vector


def test_claim_keys_are_the_ar4si_order() -> None:
    vector = TrustVector(instance_identity=2, executables=33, sourced_data=96)
    assert vector.to_cbor() == {0: 2, 2: 33, 7: 96}
    assert vector.to_json() == {"instance-identity": 2, "executables": 33, "sourced-data": 96}
    assert vector.tier() is Tier.CONTRAINDICATED and TrustVector().tier() is Tier.NONE
