"""Output helpers shared by the commands: ISO 8601 times, fixed-width tables that fit the terminal, durations.

Times are UTC (``2026-11-30T17:11:01Z``) unless ``--local-time`` asks for the local zone (with its offset).
Tables are plain text, laid out in one pass (fast for tens of thousands of rows): identifier columns are never
cut, a free-text column wraps, and when the terminal is still too narrow the least useful columns are left out,
then the free text moves to indented lines under its row (``--json`` always has every field, never truncated).
Into a pipe or a file (``output_width``) nothing wraps, nothing is left out: one record per line, whole, so
``grep`` and ``wc -l`` work; rich's own output (``stdout_console``) follows the same width.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import click
from rich.console import Console

__all__ = ["DURATION", "Column", "Duration", "format_table", "iso_time", "json_time", "output_width",
           "stdout_console", "terminal_width"]


def iso_time(at: float | None, local: bool = False) -> str:
    """Unix seconds to ISO 8601: UTC with ``Z``, or local time with its offset; ``-`` for None."""
    if at is None:
        return "-"
    if local:
        return dt.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_time(at: float | None) -> str | None:
    """A time for ``--json`` output: ISO 8601 UTC (``2026-11-30T17:11:01Z``, RFC 3339), ``null`` for never;
    always UTC whatever ``--local-time`` says, so scripts parse one form."""
    return None if at is None else iso_time(at)


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` first); 80 when unknown, at least 40."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


UNBOUNDED_WIDTH = 1_000_000  # columns: every line whole, however long


def output_width() -> int:
    """Columns a table may use on standard output: the terminal's (or ``COLUMNS``) on a terminal or when
    ``COLUMNS`` is set; otherwise (a pipe, a file) unbounded, so ``grep`` and ``less -S`` see whole lines."""
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return terminal_width()
    return UNBOUNDED_WIDTH


def stdout_console() -> Console:
    """rich's console on standard output, ``output_width`` wide: a terminal's width, whole lines into a pipe
    (rich itself would wrap at 80 columns there). A closed pipe ends the command as for every other command
    (exit 0, quietly) instead of rich's own exit 1."""
    return _Console(width=output_width())


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


@dataclass(frozen=True, slots=True)
class Column:
    """A table column. ``wrap``: free text that may wrap; ``drop``: left out first (higher drops earlier), 0 never."""

    title: str
    wrap: bool = False
    drop: int = 0
    min_width: int = 12


def format_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """Rows as aligned text within ``width`` columns (default ``output_width``: unbounded into a pipe); ids are
    never cut (see the module docstring)."""
    width = width or output_width()
    keep = list(range(len(columns)))
    natural = [max([len(columns[i].title), *(len(r[i]) for r in rows)]) for i in keep]

    def needed(indices: list[int]) -> int:
        return sum(min(natural[i], columns[i].min_width) if columns[i].wrap else natural[i] for i in indices) \
            + 2 * (len(indices) - 1)

    for i in sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop):
        if needed(keep) <= width:
            break
        keep.remove(i)
    below = [i for i in keep if columns[i].wrap] if needed(keep) > width else []
    keep = [i for i in keep if i not in below]  # still too wide: free text goes on indented lines under its row
    fixed = sum(natural[i] for i in keep if not columns[i].wrap) + 2 * (len(keep) - 1)
    wrapping = [i for i in keep if columns[i].wrap]
    share = max(1, (width - fixed) // len(wrapping)) if wrapping else 0
    widths = {i: (max(columns[i].min_width, min(natural[i], share)) if columns[i].wrap else natural[i]) for i in keep}
    out = ["  ".join(columns[i].title.ljust(widths[i]) for i in keep).rstrip()]
    for row in rows:
        cells = {i: (textwrap.wrap(row[i], widths[i], break_on_hyphens=False) or [""]) if columns[i].wrap
                 else [row[i]] for i in keep}
        for n in range(max(len(c) for c in cells.values())):
            out.append("  ".join((cells[i][n] if n < len(cells[i]) else "").ljust(widths[i]) for i in keep).rstrip())
        for i in below:
            if row[i] not in ("", "-"):
                out.extend(textwrap.wrap(f"{columns[i].title}: {row[i]}", width, initial_indent="    ",
                                         subsequent_indent="      ", break_on_hyphens=False))
    return "\n".join(out) + "\n"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_SCALE = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2 on
    """``90s``, ``15m``, ``6h``, ``2d``, ``1w`` or plain seconds, converted to seconds (float)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        match = _DURATION.match(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a duration: a number with s, m, h, d or w (e.g. 90s, 15m, 6h, 2d)",
                      param, ctx)
        seconds = float(match.group(1)) * _SCALE[match.group(2)]
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is too large a duration", param, ctx)
        return seconds


DURATION = Duration()
