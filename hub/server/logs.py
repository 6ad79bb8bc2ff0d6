"""Logging set-up for entry points: readable lines on a terminal, JSON lines otherwise.

Records about evidence carry ``device_id``, ``scheme``, ``verdict``, ``action``,
``problems`` and ``trace_id`` as extra fields; the JSON formatter keeps them all,
the terminal formatter writes one line per record with the device first::

    2026-11-30T17:11:01Z INFO  env-sensor-0003 firmware: quarantined, quarantine (component 'app' digest ...)

Verbosity, the same for ``serve`` and every worker process it starts: -1 (``-q``)
warnings and errors; 0 the operator commands' default (warnings); 1 ``serve``'s
default (one line per verdict, start-up and faults); 2 the hub's debug lines;
3 and more: debug from the libraries too (SQL statements, MQTT).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({})))
_NOISY = ("sqlalchemy", "alembic", "paho", "urllib3", "asyncio")


def _utc(record: logging.LogRecord, millis: bool) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{text}.{int(record.msecs):03d}Z" if millis else f"{text}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _utc(record, True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TerminalFormatter(logging.Formatter):
    """One readable line: UTC time, level, then the device (when the record is about one) and the message.

    A verdict record (``verdict`` extra) reads ``<device> <scheme>: <verdict>, <action> (<problems>)``.
    """

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_utc(record, False)} {record.levelname:<5}"
        extra = vars(record)
        device = extra.get("device_id")
        if "verdict" in extra and device:
            problems = "; ".join(str(p) for p in extra.get("problems") or ())
            action = extra.get("action")
            text = f"{device} {extra.get('scheme', '')}: {extra['verdict']}"
            text += f", {action}" if action and action != "none" else ""
            text += f" ({problems})" if problems else ""
        else:
            text = f"{device} {record.getMessage()}" if device else record.getMessage()
        line = f"{head} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def level_for(verbosity: int) -> int:
    """The hub's log level for a verbosity (see the module docstring)."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def configure_logging(verbosity: int = 0, *, json_lines: bool | None = None) -> None:
    """Log to stderr: JSON lines when it is not a terminal (or ``json_lines``), readable lines otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else TerminalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for(verbosity))
    for name in _NOISY:  # libraries stay at warnings until -vv (verbosity 3)
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 3 else logging.WARNING)
