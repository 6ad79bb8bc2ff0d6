"""``attest-hub manifest``: create from firmware images, sign, verify, show, diff, publish, deprecate or revoke a
release, history."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import click
import tomli_w

from hub import wire
from hub.appraisal.operations import OperationError, import_manifest, manifest_announcement
from hub.cli.common import HubContext, announce_or_explain, emit, fail, json_option, pass_hub
from hub.cli.output import iso_time
from hub.crypto.hubkeys import HubKeyError, load_operator_keys
from hub.crypto.keys import KeyFileError, load_private_file
from hub.reference.manifests import (
    Component,
    Manifest,
    ManifestError,
    Release,
    check_manifest,
    parse_source,
    sign_manifest,
    to_source,
)
from hub.reference.manifests import verify_manifest as verify_signed
from hub.store import StoreError


@click.group()
def manifest() -> None:
    """Reference values: signed firmware manifests, one series per device class."""


@manifest.command("create")
@click.option("--class", "device_class", required=True)
@click.option("--sequence", type=click.IntRange(0), required=True, help="SUIT sequence number (monotonic).")
@click.option("--min-svn", type=click.IntRange(0), required=True, help="Lowest security version accepted.")
@click.option("--release", "releases", multiple=True, required=True, metavar="VERSION:SVN:DIR",
              help="A release: its version, security version and a directory of component images (*.bin).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="TOML source to write.")
@json_option
@pass_hub
def create(hub: HubContext, device_class: str, sequence: int, min_svn: int, releases: tuple[str, ...],
           out: Path) -> None:
    """Write a manifest source from firmware image files (digests and sizes computed).

    Example: attest-hub manifest create --class env-sensor --sequence 4 --min-svn 2
               --release 1.2.0:3:build/env-sensor/1.2.0 --out env-sensor.toml
    """
    built = []
    for spec in releases:
        try:
            version, svn_text, directory = spec.split(":", 2)
            svn = int(svn_text)
        except ValueError:
            fail(f"--release {spec!r}: expected VERSION:SVN:DIR")
        images = sorted(Path(directory).glob("*.bin"))
        if not images:
            fail(f"--release {spec!r}: no *.bin images in {directory}")
        components = tuple(Component(p.stem, hashlib.sha256(p.read_bytes()).digest(), p.stat().st_size)
                           for p in images)
        built.append(Release(version, svn, components))
    source = Manifest(device_class, sequence, min_svn, tuple(built))
    try:
        check_manifest(source)
    except ManifestError as exc:
        fail(str(exc))
    out.write_text(tomli_w.dumps(to_source(source)))
    emit(hub, {"source": str(out), "releases": len(built)}, lambda d: click.echo(f"wrote {d['source']}"))


@manifest.command("sign")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Operator signing key (PEM).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Signed manifest to write (default: SOURCE with .cose).")
@json_option
@pass_hub
def sign(hub: HubContext, source: Path, key_path: Path, out: Path | None) -> None:
    """Sign a TOML manifest source with an operator key (COSE_Sign1, ES256).

    Example: attest-hub manifest sign env-sensor.toml --key operator.key.pem --out env-sensor.cose
    """
    try:
        parsed = parse_source(source.read_text())
        key = load_private_file(key_path)
    except (ManifestError, KeyFileError) as exc:
        fail(str(exc))
    target = out or source.with_suffix(".cose")
    target.write_bytes(sign_manifest(parsed, key))
    emit(hub, {"signed": str(target), "device_class": parsed.device_class, "sequence": parsed.sequence},
         lambda d: click.echo(f"signed {d['device_class']}#{d['sequence']} -> {d['signed']}"))


def _trusted(hub: HubContext, operator_keys: tuple[Path, ...]) -> Any:
    try:
        return load_operator_keys(tuple(map(str, operator_keys)) or hub.settings.operator_keys)
    except HubKeyError as exc:
        fail(str(exc), code=3)


@manifest.command("verify")
@click.argument("signed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operator-key", "operator_keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Trusted operator public key(s); default: the configured ones.")
@json_option
@pass_hub
def verify(hub: HubContext, signed: Path, operator_keys: tuple[Path, ...]) -> None:
    """Check a signed manifest's signature and structure; exit 1 if it does not verify.

    Example: attest-hub manifest verify env-sensor.cose
    """
    try:
        parsed = verify_signed(signed.read_bytes(), _trusted(hub, operator_keys))
    except ManifestError as exc:
        fail(str(exc))
    emit(hub, {"valid": True, "device_class": parsed.device_class, "sequence": parsed.sequence,
               "signer": parsed.signer},
         lambda d: click.echo(f"valid: {d['device_class']}#{d['sequence']} signed by {d['signer'][:16]}"))


@manifest.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operator-key", "operator_keys", multiple=True, type=click.Path(exists=True, path_type=Path))
@json_option
@pass_hub
def show(hub: HubContext, path: Path, operator_keys: tuple[Path, ...]) -> None:
    """Print a manifest (a TOML source, or a signed one after verifying it).

    Example: attest-hub manifest show env-sensor.cose --json
    """
    try:
        if path.suffix == ".toml":
            parsed = parse_source(path.read_text())
        else:
            parsed = verify_signed(path.read_bytes(), _trusted(hub, operator_keys))
    except ManifestError as exc:
        fail(str(exc))
    emit(hub, to_source(parsed), lambda d: click.echo(tomli_w.dumps(d)))


@manifest.command("publish")
@click.argument("signed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_hub
def publish(hub: HubContext, signed: Path) -> None:
    """Store a signed manifest and announce it to all running hub workers over MQTT (retained).

    When the broker is unreachable the manifest stays stored (exit 3) and the message says how to announce it
    again: attest-hub manifest announce --class CLASS.

    Example: attest-hub manifest publish env-sensor-4.cose
    """
    try:
        parsed = import_manifest(hub.store(), hub.keys(), signed.read_bytes())
    except (ManifestError, OperationError) as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    ref = f"{parsed.device_class}#{parsed.sequence}"
    broker = announce_or_explain(hub, [manifest_announcement(parsed)], f"manifest {ref}",
                                 f"attest-hub manifest announce --class {parsed.device_class}")
    emit(hub, {"published": ref, "announced": True, "broker": broker},
         lambda d: click.echo(f"published {d['published']}, announced through the broker at {d['broker']}"))


@manifest.command("announce")
@click.option("--class", "device_classes", multiple=True, metavar="CLASS",
              help="Only this device class (repeatable); default: every class with a stored manifest.")
@json_option
@pass_hub
def announce(hub: HubContext, device_classes: tuple[str, ...]) -> None:
    """Announce the newest stored manifest of each class again (retained), e.g. after the broker was down.

    Each manifest is verified with the configured operator keys before it is announced; workers adopt only a
    sequence newer than theirs, so announcing again is always safe.

    \b
    Examples:
      attest-hub manifest announce
      attest-hub manifest announce --class env-sensor --json
    """
    try:
        store = hub.store()
        with store.reading() as conn:
            latest = store.latest_manifests(conn)
    except StoreError as exc:
        fail(str(exc), code=3)
    unknown = sorted(set(device_classes) - set(latest))
    if unknown:
        fail(f"no manifest stored for {', '.join(map(repr, unknown))} (stored: {', '.join(sorted(latest)) or 'none'})")
    chosen = sorted(device_classes or latest)
    if not chosen:
        fail("no manifest is stored yet: publish one first (attest-hub manifest publish FILE)")
    try:
        manifests = [verify_signed(latest[c], hub.keys().operator_keys) for c in chosen]
    except ManifestError as exc:
        fail(f"a stored manifest does not verify with the configured operator keys: {exc}")
    refs = [f"{m.device_class}#{m.sequence}" for m in manifests]
    retry = "attest-hub manifest announce" + "".join(f" --class {c}" for c in chosen)
    what = ("manifest " if len(refs) == 1 else "manifests ") + ", ".join(refs)
    broker = announce_or_explain(hub, [manifest_announcement(m) for m in manifests], what, retry, newly_stored=False)
    emit(hub, {"announced": refs, "broker": broker},
         lambda d: click.echo(f"announced {', '.join(d['announced'])} through the broker at {d['broker']}"))


@manifest.command("import")
@click.argument("signed", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_hub
def import_(hub: HubContext, signed: tuple[Path, ...]) -> None:
    """Store signed manifests without announcing them (before the hub starts).

    Example: attest-hub manifest import "$(attest-hub files firmware_manifests)"/*/manifest.cose
    """
    done = []
    for path in signed:
        raw = path.read_bytes()
        if _looks_like_source(raw):
            fail(f"{path} is a manifest source (TOML), not a signed manifest: sign it first with "
                 f"'attest-hub manifest sign {path} --key KEY' and import the .cose file")
        try:
            parsed = import_manifest(hub.store(), hub.keys(), raw)
        except (ManifestError, OperationError) as exc:
            fail(f"{path}: {exc}")
        done.append(f"{parsed.device_class}#{parsed.sequence}")
    emit(hub, {"imported": done}, lambda d: click.echo(f"imported {', '.join(d['imported'])}"))


def _looks_like_source(raw: bytes) -> bool:
    """A TOML manifest source given where a signed (COSE, binary) one is expected: UTF-8 text whose first
    non-blank, non-comment line is a table or a ``key =`` line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return bool(lines) and (lines[0].startswith("[") or "=" in lines[0])


@manifest.command("history")
@click.option("--class", "device_class", default=None)
@json_option
@pass_hub
def history(hub: HubContext, device_class: str | None) -> None:
    """Every manifest ever stored (manifests are never deleted).

    Example: attest-hub manifest history --class env-sensor
    """
    store = hub.store()
    with store.reading() as conn:
        rows = store.manifest_history(conn, device_class)
    data = [{"device_class": r["device_class"], "sequence": r["sequence"], "signer": r["signer"],
             "received_at": r["received_at"]} for r in rows]
    emit(hub, data, lambda d: click.echo("\n".join(
        f"{r['device_class']}#{r['sequence']}  {iso_time(r['received_at'], hub.local_time)}"
        f"  signer {r['signer'][:16]}" for r in d) or "no manifests"))


def _load_any(hub: HubContext, path: Path) -> Manifest:
    """A TOML source, or a signed manifest after verifying it with the configured operator keys."""
    try:
        if path.suffix == ".toml":
            return parse_source(path.read_text())
        return verify_signed(path.read_bytes(), _trusted(hub, ()))
    except ManifestError as exc:
        fail(f"{path}: {exc}")


def manifest_changes(old: Manifest, new: Manifest) -> list[dict[str, Any]]:
    """What changed between two manifests of a class, release by release."""
    changes: list[dict[str, Any]] = []
    for name in ("device_class", "sequence", "min_svn"):
        if getattr(old, name) != getattr(new, name):
            changes.append({"release": None, "what": name, "old": getattr(old, name), "new": getattr(new, name)})
    before = {r.version: r for r in old.releases}
    after = {r.version: r for r in new.releases}
    for version in sorted(before.keys() | after.keys()):
        a, b = before.get(version), after.get(version)
        if a is None or b is None:
            present = b or a
            assert present is not None
            changes.append({"release": version, "what": "added" if a is None else "removed",
                            "old": None if a is None else f"svn {a.svn}, {a.status}",
                            "new": None if b is None else f"svn {b.svn}, {b.status}"})
            continue
        for name in ("svn", "status"):
            if getattr(a, name) != getattr(b, name):
                changes.append({"release": version, "what": name, "old": getattr(a, name), "new": getattr(b, name)})
        digests_a = {c.name: c.digest.hex() for c in a.components}
        digests_b = {c.name: c.digest.hex() for c in b.components}
        for comp in sorted(digests_a.keys() | digests_b.keys()):
            if digests_a.get(comp) != digests_b.get(comp):
                changes.append({"release": version, "what": f"component {comp}",
                                "old": digests_a.get(comp), "new": digests_b.get(comp)})
    return changes


@manifest.command("diff")
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--exit-code", is_flag=True, help="Exit 1 if the manifests differ (like git diff --exit-code).")
@json_option
@pass_hub
def diff(hub: HubContext, old: Path, new: Path, exit_code: bool) -> None:
    """What changed between two manifests (sources or signed): releases, statuses, svn, component digests.

    \b
    Example:
      attest-hub manifest diff firmware_manifests/env-sensor/manifest.cose env-sensor-2.cose
    """
    a, b = _load_any(hub, old), _load_any(hub, new)
    changes = manifest_changes(a, b)
    data = {"old": f"{a.device_class}#{a.sequence}", "new": f"{b.device_class}#{b.sequence}", "changes": changes}

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['old']} -> {d['new']}: {len(d['changes'])} change(s)")
        for c in d["changes"]:
            where = f"release {c['release']} " if c["release"] else ""
            click.echo(f"  {where}{c['what']}: {c['old'] if c['old'] is not None else '-'} -> "
                       f"{c['new'] if c['new'] is not None else '-'}")

    emit(hub, data, human)
    if exit_code and changes:
        raise SystemExit(1)


def _release_status(hub: HubContext, status: str, version: str, device_class: str, base: Path | None,
                    key_path: Path, out: Path, publish_it: bool) -> None:
    """The next manifest of the class: sequence + 1, one release's status changed, signed, optionally published."""
    if base is not None:
        current = _load_any(hub, base)
    else:
        store = hub.store()
        try:
            with store.reading() as conn:
                signed = store.latest_manifests(conn).get(device_class)
        except StoreError as exc:
            fail(str(exc), code=3)
        if signed is None:
            fail(f"no manifest stored for class {device_class!r}; give --from")
        try:
            current = verify_signed(signed, _trusted(hub, ()))
        except ManifestError as exc:
            fail(f"stored manifest for {device_class}: {exc}")
    if current.device_class != device_class:
        fail(f"{base} is a manifest for {current.device_class!r}, not {device_class!r}")
    release = current.release(version)
    if release is None:
        fail(f"{device_class}#{current.sequence} has no release {version!r} "
             f"(releases: {', '.join(r.version for r in current.releases)})")
    if release.status == status:
        fail(f"release {version} is already {status}")
    if release.status == wire.RELEASE_REVOKED:
        fail(f"release {version} is revoked; a revocation is final")
    try:
        key = load_private_file(key_path)
    except KeyFileError as exc:
        fail(str(exc))
    releases = tuple(dataclasses.replace(r, status=status) if r.version == version else r for r in current.releases)
    nxt = Manifest(current.device_class, current.sequence + 1, current.min_svn, releases)
    out.write_bytes(sign_manifest(nxt, key))
    published = False
    if publish_it:
        try:
            parsed = import_manifest(hub.store(), hub.keys(), out.read_bytes())
        except (ManifestError, OperationError) as exc:
            fail(str(exc))
        except StoreError as exc:
            fail(str(exc), code=3)
        announce_or_explain(hub, [manifest_announcement(parsed)], f"manifest {device_class}#{nxt.sequence}",
                            f"attest-hub manifest announce --class {device_class}")
        published = True
    data = {"device_class": device_class, "sequence": nxt.sequence, "release": version, "status": status,
            "signed": str(out), "published": published}
    emit(hub, data, lambda d: click.echo(
        f"{d['device_class']}#{d['sequence']}: release {d['release']} {d['status']} -> {d['signed']}"
        + (" (published)" if d["published"] else "")))


def _status_command(status: str, verb: str, example: str) -> click.Command:
    @click.argument("version")
    @click.option("--class", "device_class", required=True, help="Device class of the release.")
    @click.option("--from", "base", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Manifest to start from (default: the latest stored for the class).")
    @click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                  help="Operator signing key (PEM).")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="Signed manifest to write.")
    @click.option("--publish", "publish_it", is_flag=True, help="Also store and announce it to the running hub.")
    @json_option
    @pass_hub
    def command(hub: HubContext, version: str, device_class: str, base: Path | None, key_path: Path, out: Path,
                publish_it: bool) -> None:
        _release_status(hub, status, version, device_class, base, key_path, out, publish_it)

    command.__doc__ = (f"{verb} a release: writes the next signed manifest (sequence + 1) with the release "
                       f"{status}.\n\n\b\nExample:\n  {example}")
    return manifest.command(verb.lower())(command)


_status_command(wire.RELEASE_DEPRECATED, "Deprecate",
                "attest-hub manifest deprecate 1.1.0 --class env-sensor --key op.key.pem \\\n"
                "    --out env-sensor-3.cose --publish\n(devices on a deprecated release are appraised 'warning')")
_status_command(wire.RELEASE_REVOKED, "Revoke",
                "attest-hub manifest revoke 1.0.0 --class env-sensor --key op.key.pem \\\n"
                "    --out env-sensor-4.cose --publish\n(devices on a revoked release are quarantined)")
