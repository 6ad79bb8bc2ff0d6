"""Device classes, firmware releases and deterministic firmware images.

Every image is 4096 bytes, SHA-256 in counter mode over a label, so anyone (manifest
authors, the hub's tests) can recompute the digests without this package:

    label = f"{device_class}/{component}/{version}" (UTF-8)
    image = SHA-256(label || 0x00000000) || SHA-256(label || 0x00000001) || ... (128 blocks)

A *tampered* image is the genuine one with its first 8 bytes overwritten by
``b"TAMPERED"``: its digest is in no manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hub import wire

IMAGE_SIZE: Final = 4096
_BLOCK: Final = 32
TAMPER_MARK: Final = b"TAMPERED"

ENV_SENSOR: Final = "env-sensor"
SMART_METER: Final = "smart-meter"
DEVICE_CLASSES: Final = (ENV_SENSOR, SMART_METER)
EDGE_GATEWAY: Final = "edge-gateway"  # TPM-backed (device_sim/tpm.py); not part of the firmware-evidence fleet
TPM_CLASSES: Final = (EDGE_GATEWAY,)
PSA_SENSOR: Final = "psa-sensor"  # a TF-M platform attesting with PSA tokens (device_sim.psa), not in mixed fleets


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    svn: int


RELEASES: Final = (Release("1.0.0", 1), Release("1.1.0", 2), Release("1.2.0", 3))
CURRENT_VERSION: Final = "1.2.0"
ROLLBACK_VERSION: Final = "1.0.0"


class UnknownFirmwareError(ValueError):
    """A device class, component or version that the simulated fleet does not have."""


def components(device_class: str) -> tuple[str, ...]:
    """The measured firmware components of a class, in the fixed measurement order."""
    if device_class == ENV_SENSOR:
        return ("bootloader", "app")
    if device_class == SMART_METER:
        return ("bootloader", "rtos", "metering-app")
    if device_class == EDGE_GATEWAY:
        return ("bootloader", "kernel", "rootfs")
    if device_class == PSA_SENSOR:  # TF-M: MCUboot BL2, PSA RoT, Application RoT, non-secure application
        return ("BL2", "PRoT", "ARoT", "NSPE")
    raise UnknownFirmwareError(f"unknown device class {device_class!r}")


def application_component(device_class: str) -> str:
    """The component a tampering device modifies (the last one: app / metering-app)."""
    return components(device_class)[-1]


def sw_name(device_class: str) -> str:
    """EAT swname (270) of the firmware a class runs, e.g. ``env-sensor-fw``."""
    components(device_class)  # validates the class
    return f"{device_class}-fw"


def release(version: str) -> Release:
    for candidate in RELEASES:
        if candidate.version == version:
            return candidate
    raise UnknownFirmwareError(f"unknown release {version!r}")


def image_bytes(device_class: str, component: str, version: str) -> bytes:
    """The genuine image of ``component`` at ``version`` for ``device_class``."""
    if component not in components(device_class):
        raise UnknownFirmwareError(f"{device_class} has no component {component!r}")
    release(version)
    label = f"{device_class}/{component}/{version}".encode()
    blocks = (hashlib.sha256(label + i.to_bytes(4, "big")).digest() for i in range(IMAGE_SIZE // _BLOCK))
    return b"".join(blocks)


def tampered_image_bytes(device_class: str, component: str, version: str) -> bytes:
    return TAMPER_MARK + image_bytes(device_class, component, version)[len(TAMPER_MARK) :]


def image_digest(device_class: str, component: str, version: str, *, tampered: bool = False) -> bytes:
    """SHA-256 of the image (COSE/SUIT digest algorithm -16)."""
    make = tampered_image_bytes if tampered else image_bytes
    return hashlib.sha256(make(device_class, component, version)).digest()


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured component: name, version and SHA-256 digest of its image."""

    name: str
    version: str
    digest: bytes
    alg: int = wire.SHA256


def measurements(device_class: str, version: str, *, tampered: bool = False) -> tuple[Measurement, ...]:
    """What a device of ``device_class`` running ``version`` measures at boot.

    With ``tampered`` the application component's image is the modified one.
    """
    app = application_component(device_class)
    return tuple(
        Measurement(name, version, image_digest(device_class, name, version, tampered=tampered and name == app))
        for name in components(device_class)
    )


def write_images(out: Path) -> list[Path]:
    """Write ``out/{class}/{version}/{component}.bin`` for every class, release and component."""
    written: list[Path] = []
    for device_class in DEVICE_CLASSES:
        for rel in RELEASES:
            folder = out / device_class / rel.version
            folder.mkdir(parents=True, exist_ok=True)
            for component in components(device_class):
                path = folder / f"{component}.bin"
                path.write_bytes(image_bytes(device_class, component, rel.version))
                written.append(path)
    return written
