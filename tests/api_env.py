"""Plumbing of the HTTP API tests: a prepared hub state, a few enrolled devices, tokens, the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_sim.profiles import build_fleet
from hub.appraisal.operations import Enrolment
from hub.config import Settings, load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.server.api.app import build_app
from hub.server.api.context import ApiContext
from hub.server.api.tokens import create_token
from hub.server.localhub import enrol_all, prepare_state
from hub.store import Store


@dataclass
class ApiEnv:
    settings: Settings
    store: Store
    ctx: ApiContext
    app: Any
    read: str
    operate: str
    device_ids: list[str]

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def make_api_env(tmp_path: Path, n: int = 6, **overrides: Any) -> ApiEnv:
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub", **overrides)
    settings = prepare_state(settings)
    devices = build_fleet(n, "honest", seed="api")
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                         for d in devices])
    store = open_store(settings)
    ctx = ApiContext(settings, store, load_hub_keys(settings), publish=False)
    read, _ = create_token(store, "viewer", "read", ttl_s=None)
    operate, _ = create_token(store, "ops", "operate", ttl_s=None)
    return ApiEnv(settings, store, ctx, build_app(ctx), read, operate, sorted(d.device_id for d in devices))
