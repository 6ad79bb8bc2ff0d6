"""``device-sim``: run a simulated fleet, write its enrolment, write its firmware images."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from device_sim import bootcounts, firmware, keys
from device_sim.device import SimDevice
from device_sim.fleet import Fleet, FleetError, FleetTls
from device_sim.profiles import MixError, build_fleet, device_ids, enrolment

_console = Console(stderr=True)
_UNBOUNDED_WIDTH = 10_000  # columns: wide enough for any table, which still takes only the width it needs


def _fleet_or_fail(devices: int, profile: str, seed: str,
                   bootcount: int | Mapping[str, int]) -> list[SimDevice]:
    try:
        return build_fleet(devices, profile, seed, bootcount=bootcount)
    except MixError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc


@click.group()
@click.version_option(package_name="fleet-attestation-hub", prog_name="device-sim")
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug logging.")
def main(verbose: int) -> None:
    """Simulated IoT fleet for the attestation hub."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=1883, show_default=True, type=click.IntRange(1, 65535))
@click.option("--devices", "count", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--profile", default="demo", show_default=True, help='Mix, e.g. "honest:40,tampered:3" or "demo".')
@click.option("--seed", default=keys.DEFAULT_SEED, show_default=True, help="Fleet seed the device keys derive from.")
@click.option("--hub-key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.01), help="Seconds.")
@click.option("--duration", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds; 0 runs until Ctrl-C.")
@click.option("--connections", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--bootcount", type=click.IntRange(min=0), default=None,
              help="Boot count of every device [default: each device's saved count + 1].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where each device's boot count is kept between runs [default: $DEVICE_SIM_STATE_DIR, else "
                   "$XDG_STATE_HOME/device-sim, else ~/.local/state/device-sim].")
@click.option("--resend-after", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Re-send evidence without a receipt after SECONDS.")
@click.option("--data/--no-data", default=True, show_default=True,
              help="Also publish signed, hash-chained telemetry batches on fleet/{id}/data.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Mutual TLS: the CA of the broker's certificate (needs --cert-dir).")
@click.option("--cert-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Mutual TLS: DIR/{device id}.crt and .key per device ('attest-hub pki device'); "
                   "one connection per device, client id = certificate CN.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def run(
    host: str,
    port: int,
    count: int,
    profile: str,
    seed: str,
    hub_key: Path,
    interval: float,
    duration: float,
    connections: int,
    bootcount: int | None,
    state_dir: Path | None,
    resend_after: float | None,
    data: bool,
    tls_ca: Path | None,
    cert_dir: Path | None,
    report_path: Path | None,
) -> None:
    """Connect the fleet and publish evidence every INTERVAL seconds."""
    # Each run is one boot of every device, as on a real one: its saved boot count plus one, so the hub's
    # (bootcount, seq) high-water mark from an earlier run does not reject it and the count climbs by one per
    # run (the anomaly detector reads that climb as a boot rate).
    if report_path is not None and not report_path.parent.is_dir():
        raise click.BadParameter(f"directory {report_path.parent} does not exist", param_hint="--report")
    _fleet_or_fail(count, profile, seed, 1)  # a bad --profile is refused before any count is taken
    state = state_dir if state_dir is not None else bootcounts.default_state_dir()
    try:
        counts = bootcounts.boot(state, seed, [d for d, _ in device_ids(count)], bootcount)
    except bootcounts.BootCountError as exc:
        raise click.BadParameter(str(exc), param_hint="--state-dir") from exc
    devices = _fleet_or_fail(count, profile, seed, counts)
    try:
        fleet = Fleet(host, port, devices, hub_key.read_bytes(), interval, connections, resend_after=resend_after,
                      data=data, tls=_tls(tls_ca, cert_dir, devices))
    except keys.HubKeyError as exc:
        raise click.BadParameter(str(exc), param_hint="--hub-key") from exc
    try:
        fleet.start()
    except (FleetError, OSError, ValueError) as exc:  # paho: ValueError for a host it cannot use
        raise click.ClickException(f"cannot connect to {host}:{port}: {exc}") from exc
    mix = Counter(d.profile.value for d in devices)
    _console.print(f"{len(devices)} devices on {host}:{port} ({dict(mix)}); waiting for the hub epoch")
    fleet.start_publishing()
    try:
        if duration > 0:
            time.sleep(duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
        try:
            bootcounts.record(state, seed, {d.device_id: d.bootcount for d in devices})
        except bootcounts.BootCountError as exc:
            _console.print(f"warning: {exc}")
    _summary(fleet)
    if report_path is not None:
        _write(report_path, json.dumps(fleet.report(), indent=2), "--report")
        _console.print(f"report written to {report_path}")
    if fleet.epoch is None:
        raise click.ClickException(_no_epoch(fleet, hub_key, duration))


def _no_epoch(fleet: Fleet, hub_key: Path, duration: float) -> str:
    """Why nothing was published: no epoch announcement verified (the devices attest only with its nonce)."""
    ran = f"in {duration:g} s" if duration > 0 else "before the run ended"
    reason = fleet.last_epoch_rejection
    if reason is None:
        return (f"no epoch announcement arrived on {fleet.host}:{fleet.port} {ran}, so no evidence was published; "
                "is the hub running and connected to this broker?")
    return (f"no epoch announcement verified {ran} ({fleet.rejected_epochs} rejected, last: {reason}), so no "
            f"evidence was published; is {hub_key} the public key of the hub on {fleet.host}:{fleet.port}?")


def _write(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror or exc}", param_hint=option) from exc


def _tls(ca: Path | None, cert_dir: Path | None, devices: list[SimDevice]) -> FleetTls | None:
    if ca is None and cert_dir is None:
        return None
    if ca is None or cert_dir is None:
        raise click.UsageError("--tls-ca and --cert-dir go together")
    certs = {d.device_id: (str(cert_dir / f"{d.device_id}.crt"), str(cert_dir / f"{d.device_id}.key")) for d in devices}
    missing = [d for d, (crt, key) in certs.items() if not Path(crt).is_file() or not Path(key).is_file()]
    if missing:
        raise click.BadParameter(f"no certificate/key for {', '.join(missing[:5])}", param_hint="--cert-dir")
    return FleetTls(str(ca), certs)


def _summary(fleet: Fleet) -> None:
    table = Table(title=f"device-sim: {fleet.published} evidence, {fleet.published_data} data batches published")
    table.add_column("device", no_wrap=True, min_width=max((len(d.device_id) for d in fleet.devices), default=6))
    for column in ("profile", "data", "version", "evidence", "accepted cmds", "rejected cmds",
                   "quarantined"):
        table.add_column(column)
    for d in fleet.devices:
        log = d.command_log
        accepted = sum(1 for c in log if c.accepted)
        table.add_row(
            d.device_id,
            d.profile.value,
            d.data_profile.value,
            d.version,
            str(len(d.evidence_log)),
            str(accepted),
            str(len(log) - accepted),
            "yes" if d.quarantined else "",
        )
    # Off a terminal Rich assumes 80 columns and would cut cells to fit ("env-se…"): print at full width there.
    console = _console if _console.is_terminal else Console(stderr=True, width=_UNBOUNDED_WIDTH)
    console.print(table)


@main.command()
@click.option("--devices", "count", default=50, show_default=True, type=click.IntRange(min=0))
@click.option("--profile", default="demo", show_default=True)
@click.option("--seed", default=keys.DEFAULT_SEED, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def enrol(count: int, profile: str, seed: str, out: Path) -> None:
    """Write the enrolment JSON (device id, class, enrolled public key, UEID)."""
    devices = _fleet_or_fail(count, profile, seed, 1)
    _write(out, json.dumps(enrolment(devices), indent=2), "--out")
    _console.print(f"{len(devices)} devices written to {out}")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def images(out: Path) -> None:
    """Write every firmware image as OUT/{class}/{version}/{component}.bin."""
    try:
        written = firmware.write_images(out)
    except OSError as exc:
        raise click.BadParameter(f"cannot write under {out}: {exc.strerror or exc}", param_hint="--out") from exc
    _console.print(f"{len(written)} images written under {out}")
