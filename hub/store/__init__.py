"""Persistence: tables (``models``) and the store (``db``)."""

from hub.store.db import DeviceRecord, Store, StoreError

__all__ = ["DeviceRecord", "Store", "StoreError"]
