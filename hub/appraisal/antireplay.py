"""The anti-replay window: which counters below a device's high-water mark may still be judged (late).

RFC 4303 §3.4.3 (IPsec ESP sliding window), applied to the evidence counter ``(bootcount, seq)``
(docs/PROTOCOL.md#counter-and-replay). Per device the hub keeps the highest counter it accepted (the mark)
and, beside it, a bitmap of the ``width`` sequence numbers ending at the mark (same bootcount): bit ``d``
is set once ``seq = mark.seq - d`` has been judged; bit 0 is the mark itself. So:

* a counter above the mark is **new**: it moves the mark, the bitmap shifts by the distance moved
  (a new bootcount starts it again: only the mark is set);
* a counter of the mark's bootcount, ``1 <= mark.seq - seq <= width - 1``, whose bit is clear, is
  **late**: it was never judged; it is judged now and its bit set, the mark stays;
* anything else is a **replay**: at or below the window's bottom (``mark.seq - seq >= width``), a bit
  already set (judged before, the mark included), or another bootcount below the mark.

The bitmap is stored as little-endian bytes (``(width + 7) // 8`` of them) in the device row, with the
mark, in the verdict's transaction. ``None`` (a row from before the window existed) counts every
counter below the mark as judged, as do bits beyond a bitmap stored while the window was narrower:
widening the window never makes something judged before look new. ``width = 1`` is no window at all.
Pure: no store, no clock.
"""

from __future__ import annotations

from typing import Literal

NEW: Literal["new"] = "new"
LATE: Literal["late"] = "late"
REPLAY: Literal["replay"] = "replay"
Placement = Literal["new", "late", "replay"]

DEFAULT_WIDTH = 64
"""RFC 4303 §3.4.3: "a minimum window size of 32 packets MUST be supported ...; a window size of 64 is
preferred and SHOULD be employed as the default"."""
MAX_WIDTH = 4096


def place(counter: tuple[int, int], mark: tuple[int, int], bitmap: bytes | None, width: int) -> Placement:
    """Where ``counter`` falls against ``mark`` and its window ``bitmap`` of ``width`` (>= 1) counters."""
    if counter > mark:
        return NEW
    distance = mark[1] - counter[1]
    if counter[0] != mark[0] or not 1 <= distance < width:
        return REPLAY
    return REPLAY if bits(bitmap, width) >> distance & 1 else LATE


def judged(counter: tuple[int, int], mark: tuple[int, int], bitmap: bytes | None, width: int) -> bytes:
    """The bitmap after ``counter`` (``NEW`` or ``LATE`` by ``place``) is judged; the mark is the caller's
    to move (to ``counter`` when it was new). A jump of ``width`` or more leaves only the mark set."""
    if counter > mark:
        distance = counter[1] - mark[1]
        if counter[0] != mark[0] or distance >= width:
            value = 1
        else:
            value = (bits(bitmap, width) << distance | 1) & _mask(width)
    else:
        value = bits(bitmap, width) | 1 << (mark[1] - counter[1])
    return value.to_bytes(_size(width), "little")


def why_replay(counter: tuple[int, int], mark: tuple[int, int], width: int) -> str:
    """Why ``counter``, placed ``REPLAY``, is one: for the verdict's problem (docs/PROTOCOL.md#counter-and-replay).
    A counter in the window whose bit is set is named "judged already" (a different piece signed with a
    counter already used, or the copy of one whose verdict was pruned)."""
    text = f"counter {counter} is not above {mark}"
    if counter == mark or width <= 1:
        return text
    if counter[0] != mark[0]:
        return f"{text}: an earlier boot"
    if mark[1] - counter[1] >= width:
        return f"{text}: at or below the bottom of the window of {width}"
    return f"{text}: judged already"


def bits(bitmap: bytes | None, width: int) -> int:
    """The window as an integer of ``width`` bits; bits the stored bitmap does not hold count as judged."""
    if bitmap is None:
        return _mask(width)
    value = int.from_bytes(bitmap[:_size(width)], "little")
    held = 8 * len(bitmap)
    if held < width:
        value |= _mask(width) & ~_mask(held)
    return value & _mask(width)


def _mask(width: int) -> int:
    return (1 << width) - 1


def _size(width: int) -> int:
    return (width + 7) // 8
