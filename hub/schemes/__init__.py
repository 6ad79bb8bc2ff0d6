"""Evidence schemes, registered in one explicit list (see docs/SCHEMES.md to add one)."""

from __future__ import annotations

from collections.abc import Sequence

from hub.schemes.base import EvidenceScheme
from hub.schemes.data import DataScheme
from hub.schemes.firmware import FirmwareScheme
from hub.schemes.keyrotation import KeyRotationScheme
from hub.schemes.psa import PsaScheme
from hub.schemes.tpm import TpmScheme

__all__ = ["EvidenceScheme", "SchemeRegistry", "default_schemes"]


def default_schemes() -> list[EvidenceScheme]:
    return [FirmwareScheme(), KeyRotationScheme(), PsaScheme(), DataScheme(), TpmScheme()]


class SchemeRegistry:
    """Finds a scheme by MQTT v5 Content Type, else by the topic leaf it arrived on."""

    def __init__(self, schemes: Sequence[EvidenceScheme]) -> None:
        self._by_media: dict[str, EvidenceScheme] = {}
        self._by_leaf: dict[str, EvidenceScheme] = {}
        self._by_name: dict[str, EvidenceScheme] = {}
        for scheme in schemes:
            for media_type in scheme.media_types:
                self._by_media[_normalise(media_type)] = scheme
            self._by_leaf.setdefault(scheme.topic_leaf, scheme)
            self._by_name[scheme.name] = scheme

    def find(self, content_type: str | None, topic_leaf: str) -> EvidenceScheme | None:
        if content_type:
            return self._by_media.get(_normalise(content_type))
        return self._by_leaf.get(topic_leaf)

    def by_name(self, name: str) -> EvidenceScheme | None:
        return self._by_name.get(name)

    @property
    def topic_leaves(self) -> frozenset[str]:
        return frozenset(self._by_leaf)


def _normalise(media_type: str) -> str:
    return "".join(media_type.split()).lower()
