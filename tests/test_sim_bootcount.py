"""The simulator's boot count behaves like a device's: a persisted counter, one more per simulated boot, so
re-running ``device-sim run`` against a hub is an honest reboot, not a boot-count jump the detector flags."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim import bootcounts
from device_sim.cli import main
from device_sim.profiles import build_fleet
from hub.anomaly import stats as anomaly
from hub.anomaly.records import findings
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.config import load_settings
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from tests.e2e import test_database_url

DEVICES = 12


def test_each_run_is_one_boot_more_per_device_kept_per_seed(tmp_path: Path) -> None:
    assert bootcounts.boot(tmp_path, "s", ["a", "b"]) == {"a": 1, "b": 1}
    assert bootcounts.boot(tmp_path, "s", ["a"]) == {"a": 2}
    assert bootcounts.boot(tmp_path, "s", ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 1}
    assert bootcounts.boot(tmp_path, "other seed", ["a"]) == {"a": 1}  # another fleet
    bootcounts.record(tmp_path, "s", {"a": 7, "b": 1})  # a rebooted during the run; b's count never goes back
    assert bootcounts.boot(tmp_path, "s", ["a", "b"]) == {"a": 8, "b": 3}
    assert bootcounts.boot(tmp_path, "s", ["a"], forced=100) == {"a": 100}  # --bootcount, and continued from
    assert bootcounts.boot(tmp_path, "s", ["a"]) == {"a": 101}


def test_an_unusable_counter_file_is_one_line(tmp_path: Path) -> None:
    bootcounts.counter_path(tmp_path, "s").write_text("{not json")
    with pytest.raises(bootcounts.BootCountError, match=r"not JSON.*delete the file"):
        bootcounts.boot(tmp_path, "s", ["a"])
    bootcounts.counter_path(tmp_path, "s").write_text('{"a": "x"}')
    with pytest.raises(bootcounts.BootCountError, match="expected"):
        bootcounts.boot(tmp_path, "s", ["a"])
    hub_key = tmp_path / "hub.pem"
    hub_key.write_text("unused")
    result = CliRunner().invoke(main, ["run", "--port", "1", "--hub-key", str(hub_key), "--state-dir", str(tmp_path),
                                       "--seed", "s", "--duration", "1"])
    assert result.exit_code == 2 and "boot counters" in result.output and result.exception is not None
    assert "Traceback" not in result.output


@pytest.mark.broker
@pytest.mark.slow
def test_two_simulator_runs_against_the_hub_raise_no_boot_rate_finding(broker: MosquittoProcess,
                                                                       tmp_path: Path) -> None:
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                                           broker_port=broker.port, anomaly_interval_s=0.5, anomaly_settle_s=0.3,
                                           database_url=test_database_url()))
    devices = build_fleet(DEVICES, "honest:1")
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    runner = CliRunner(env={"DEVICE_SIM_STATE_DIR": str(tmp_path / "sim")})
    with LocalHub(settings) as hub:
        key = tmp_path / "hub.pem"
        key.write_text(public_pem(hub.workers[0].keys.public_key))
        args = ["run", "--host", broker.host, "--port", str(broker.port), "--profile", "honest:1",
                "--hub-key", str(key), "--interval", "0.4", "--duration", "5", "--no-data"]
        # The whole fleet, then one device of each class again (an operator restarts them): each booted once
        # more, which is no boot rate to flag (with unix seconds as the count, it climbed by the seconds between).
        for count in (DEVICES, 2):
            result = runner.invoke(main, [*args, "--devices", str(count)])
            assert result.exit_code == 0, result.output
        time.sleep(2.0)  # a last pass over the settled verdicts
    store = open_store(settings)
    try:
        with store.reading() as conn:
            found = findings(conn, open_only=False)
    finally:
        store.close()
    assert found is not None and [f for f in found if f["kind"] == anomaly.BOOTS] == [], found


def test_the_readme_says_where_the_counts_are_kept_and_how_to_move_or_reset_them() -> None:
    """The counts outlive the run and are shared by every run of the user: the README names the folder, the file,
    the option and the variable that move it, and how to start again."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("`device-sim run` keeps state of its own")
    text = " ".join(readme[start:readme.index("\n\n", start)].split())
    default = bootcounts.default_state_dir({})
    assert str(default).replace(str(Path.home()), "~", 1) + "/" in text
    assert bootcounts.default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/device-sim")
    assert "$XDG_STATE_HOME/device-sim" in text
    assert bootcounts.counter_path(Path("d"), "s").name.startswith("bootcounts-")
    assert "bootcounts-<seed digest>.json" in text
    assert bootcounts.default_state_dir({bootcounts.ENV_STATE_DIR: "/elsewhere"}) == Path("/elsewhere")
    assert f"{bootcounts.ENV_STATE_DIR}=DIR" in text and "--state-dir DIR" in text
    assert "delete the file" in text and "--bootcount N" in text
