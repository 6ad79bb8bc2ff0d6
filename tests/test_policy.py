"""Policy files: validated at load, every error names its line."""

from __future__ import annotations

import pytest

from hub.reference.policy import Policy, PolicyError, TierActions, default_policy, load_policy
from hub.reference.values import References

GOOD = """\
device_class = "smart-meter"
version = 3
secure_boot = true
debug = "disabled"
min_svn = 2
allowed_versions = ["1.2.0"]
release = "operator"

[actions]
warning = "quarantine"
contraindicated = "require-release"

[runtime]
allowed_processes = ["init", "meterd"]
allowed_endpoints = ["mqtt.fleet:8883"]
"""


def test_valid_policy_loads() -> None:
    policy = load_policy(GOOD)
    assert policy == Policy(
        device_class="smart-meter", version=3, min_svn=2, allowed_versions=("1.2.0",), release="operator",
        actions=TierActions(warning="quarantine", contraindicated="require-release"),
        allowed_processes=("init", "meterd"), allowed_endpoints=("mqtt.fleet:8883",),
    )
    assert policy.ref == "smart-meter@3"


def test_default_policy_is_strict() -> None:
    policy = default_policy("x")
    assert policy.secure_boot and policy.debug == "disabled" and policy.actions.contraindicated == "quarantine"


@pytest.mark.parametrize(
    ("replace", "by", "line", "words"),
    [
        ("secure_boot = true", "secure_boot = \"yes\"", 3, "true or false"),
        ("min_svn = 2", "min_svn = -1", 5, "non-negative"),
        ("min_svn = 2", "min_svn = true", 5, "non-negative"),
        ('debug = "disabled"', 'debug = "sometimes"', 4, "debug"),
        ('release = "operator"', 'release = "never"', 7, "release"),
        ('allowed_versions = ["1.2.0"]', "allowed_versions = [1]", 6, "list of strings"),
        ('release = "operator"', 'relase = "operator"', 7, "unknown setting"),
        ('warning = "quarantine"', 'warning = "explode"', 10, "action must be"),
        ('warning = "quarantine"', 'catastrophic = "quarantine"', 10, "unknown tier"),
        ('allowed_endpoints = ["mqtt.fleet:8883"]', 'allowed_ports = [1]', 15, "unknown runtime setting"),
        ('allowed_processes = ["init", "meterd"]', "allowed_processes = \"init\"", 14, "list of strings"),
        ("min_svn = 2", "min_svn = 2\nrequired_evidence = [\"vibes\"]", 6, "unknown evidence kind"),
        ("min_svn = 2", "min_svn = yes", 5, "not valid TOML"),
    ],
)
def test_errors_name_the_line(replace: str, by: str, line: int, words: str) -> None:
    text = GOOD.replace(replace, by)
    assert text != GOOD
    with pytest.raises(PolicyError) as info:
        load_policy(text)
    assert info.value.line == line, info.value
    assert words in str(info.value) and str(info.value).startswith(f"line {line}:")


def test_device_class_required() -> None:
    with pytest.raises(PolicyError, match="device_class"):
        load_policy("version = 1\n")


def test_lower_policy_version_refused() -> None:
    refs = References({})
    assert refs.offer_policy(GOOD) is not None
    assert refs.offer_policy(GOOD) is None
    with pytest.raises(PolicyError, match="lower"):
        refs.offer_policy(GOOD.replace("version = 3", "version = 2"))
    assert refs.policy("smart-meter").version == 3
    assert refs.policy("other") == default_policy("other")
