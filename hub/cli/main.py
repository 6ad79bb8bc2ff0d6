"""``attest-hub``: the verifier service and the operator's commands.

Exit codes: 0 success; 1 the action was refused or the input is invalid
(the message says why); 2 usage error; 3 an infrastructure fault (broker or
database unreachable, key files missing).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from hub.cli.anomalies import anomalies
from hub.cli.api import api, token
from hub.cli.audit import audit, report
from hub.cli.broker import broker
from hub.cli.common import HubContext, HubGroup, emit, fail, json_option, pass_hub
from hub.cli.db import db
from hub.cli.device import device
from hub.cli.manifest import manifest
from hub.cli.pki import pki
from hub.cli.policy import policy
from hub.cli.result import result
from hub.cli.shipped import files
from hub.cli.whatif import whatif
from hub.config import ConfigError, load_settings, settings_reference
from hub.crypto.hubkeys import HubKeyError
from hub.crypto.hubstate import init_hub
from hub.crypto.keys import public_pem
from hub.server.logs import configure_logging
from hub.store import StoreError


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleet-attestation-hub", prog_name="attest-hub")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ATTEST_HUB_CONFIG", help="TOML configuration file (env ATTEST_HUB_CONFIG).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the hub keeps its keys and SQLite database.")
@click.option("--database-url", default=None, help="SQLAlchemy URL; default sqlite in the state dir.")
@click.option("--broker", "broker", default=None, metavar="HOST:PORT", help="MQTT broker address.")
@click.option("-v", "--verbose", count=True, help="More log output: -v the hub's debug lines, -vv libraries too.")
@click.option("-q", "--quiet", count=True, help="Less log output: serve logs only warnings and errors.")
@click.option("--local-time", is_flag=True, help="Show times in the local zone (with its offset) instead of UTC.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, state_dir: Path | None, database_url: str | None,
        broker: str | None, verbose: int, quiet: int, local_time: bool) -> None:
    """Fleet attestation hub: verifies COSE-signed evidence from IoT devices over MQTT.

    \b
    Example:
      attest-hub --state-dir var init
      attest-hub --state-dir var device enroll --file fleet.json
      attest-hub --state-dir var --broker 127.0.0.1:1883 serve --workers 2
    """
    host, port = None, None
    if broker:
        host, _, port_text = broker.rpartition(":")
        if not host or not port_text.isdigit():
            raise click.BadParameter("expected HOST:PORT", param_hint="--broker")
        port = int(port_text)
    try:
        settings = load_settings(config_path, state_dir=state_dir, database_url=database_url,
                                 broker_host=host, broker_port=port)
    except ConfigError as exc:
        fail(f"configuration: {exc}", code=1)
    configure_logging(verbose - quiet)
    ctx.obj = HubContext(settings)
    ctx.call_on_close(ctx.obj.close)
    ctx.obj.verbosity = verbose - quiet
    ctx.obj.local_time = local_time


@cli.command()
@json_option
@pass_hub
def init(hub: HubContext) -> None:
    """Create the state directory, the hub's keys and secrets, and the database schema (idempotent).

    Everything is created owner-only (umask 077). The schema is created only in an empty database of a new
    hub: a state directory that already holds a hub's keys refuses an empty database (it was lost, not new).

    Example: attest-hub --state-dir var init
    """
    try:
        database = init_hub(hub.settings)
    except (StoreError, HubKeyError, OSError) as exc:
        fail(str(exc), code=3)
    keys = hub.keys()
    emit(hub, {"state_dir": str(hub.settings.state_dir), "database": database,
               "hub_public_key": public_pem(keys.public_key)},
         lambda d: click.echo(f"state in {d['state_dir']} (database {d['database']}); hub public key:\n"
                              f"{d['hub_public_key']}"))


@cli.command("hub-key")
@json_option
@pass_hub
def hub_key(hub: HubContext) -> None:
    """Print the hub's public key (PEM): devices verify commands and results with it.

    Example: attest-hub --state-dir var hub-key > hub.pem
    """
    pem = public_pem(hub.keys().public_key)
    emit(hub, {"hub_public_key": pem}, lambda d: click.echo(d["hub_public_key"], nl=False))


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default from config).")
@pass_hub
def serve(hub: HubContext, workers: int | None) -> None:
    """Run the verifier: consume evidence, appraise, store, publish results, quarantine.

    On a terminal it logs one line per verdict (device, verdict, action, reason); elsewhere JSON lines. -q: only
    warnings and errors; -v, -vv: debug. A broker or database that cannot be reached at start-up ends it with one
    line and exit code 3; so does a worker that keeps dying right after each start. Without operator_keys it
    refuses to start (exit 1) unless allow_no_operator_keys is set. The first problem found ends it, checked in
    this order: the state dir, the database, the keys, the configuration, the broker.

    \b
    Example:
      attest-hub --state-dir var --broker 127.0.0.1:1883 serve --workers 2
    """
    from hub.server.serve import ServeError, serve_forever

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    verbosity = hub.verbosity + 1  # serve's default: one line per verdict
    configure_logging(verbosity)
    try:
        serve_forever(hub.settings, workers or hub.settings.workers, stop, verbosity)
    except ServeError as exc:
        fail(str(exc), code=exc.code)


@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@json_option
@pass_hub
def config_show(hub: HubContext) -> None:
    """Print the effective configuration (file + environment + options), secrets masked.

    Example: attest-hub --config /etc/attest-hub/hub.toml config show --json
    """
    data = hub.settings.masked()
    emit(hub, data, lambda d: click.echo("\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in d.items())))


@config.command("reference")
def config_reference() -> None:
    """Print the settings reference (Markdown): every setting's type, default, environment variable and meaning.

    Example: attest-hub config reference > docs/SETTINGS.md
    """
    click.echo(settings_reference(), nl=False)


@cli.command()
@click.option("--devices", type=click.IntRange(2, 10_000), default=50, show_default=True,
              help="The whole fleet, TPM-backed gateways and PSA platforms included.")
@click.option("--seconds", type=click.FloatRange(5, 600), default=25.0, show_default=True,
              help="How long the fleet runs before the table is printed.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's state (database, keys) in this directory.")
@click.option("--enforcement", type=click.Choice(["acl-file", "dynsec"]), default="acl-file", show_default=True,
              help="acl-file: the broker's ACL file and SIGHUP (same host); dynsec: its control topic over MQTT.")
@click.option("--linger", type=click.FloatRange(0, 86400), default=0.0, show_default=True,
              help="Seconds to keep the hub and its web console up after the fleet stops.")
def demo(devices: int, seconds: float, keep: Path | None, enforcement: str, linger: float) -> None:
    """Start a broker, the hub and a simulated fleet; serve the web console; print every device's verdict.

    TPM-backed gateways need the tpm extra and swtpm; without them they are left out (one line says why).

    \b
    Examples:
      attest-hub demo
      attest-hub demo --devices 10 --seconds 5 --keep demo-state
      attest-hub demo --enforcement dynsec --linger 600
    """
    from hub.cli.demo import run_demo

    configure_logging(0)
    sys.exit(run_demo(devices, seconds, keep, enforcement, linger))


cli.add_command(device)
cli.add_command(anomalies)
cli.add_command(manifest)
cli.add_command(pki)
cli.add_command(policy)
cli.add_command(audit)
cli.add_command(report)
cli.add_command(whatif)
cli.add_command(db)
cli.add_command(result)
cli.add_command(broker)
cli.add_command(files)
cli.add_command(api)
cli.add_command(token)


def main() -> Any:
    """The console entry point: usage errors are JSON objects too when ``--json`` is on the command line."""
    logging.captureWarnings(True)
    try:
        code = cli.main(prog_name="attest-hub", standalone_mode=False)
    except click.ClickException as exc:
        if "--json" in sys.argv[1:]:
            click.echo(json.dumps({"error": exc.format_message(), "exit_code": exc.exit_code}, sort_keys=True))
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
