"""Names the operating system shows for the hub's busy threads (``top -H``, ``ps -L``, ``/proc/PID/task/TID/comm``).

Python names its threads for itself only. The hub also gives the threads that do its work an OS name, so an
operator (and bench/hubproc.py) can tell the commit thread's CPU from the MQTT network thread's and the
anomaly pass's; a process's main thread keeps its name (renaming it would rename the process). Linux and
other glibc systems (``pthread_setname_np``, at most 15 bytes); elsewhere nothing happens.
"""

from __future__ import annotations

import ctypes
import threading

OS_NAME_MAX = 15
"""Bytes of a thread name the kernel keeps (``TASK_COMM_LEN`` 16, with the terminating NUL)."""


def name_thread(name: str, thread: threading.Thread | None = None) -> bool:
    """Give ``thread`` (default: the calling thread) the OS name ``name``, cut to ``OS_NAME_MAX`` ASCII bytes.

    Returns whether the name was set; False where the C library has no ``pthread_setname_np`` or the thread
    has not started. Never raises."""
    ident = (thread or threading.current_thread()).ident
    if ident is None:
        return False
    try:
        setname = ctypes.CDLL(None).pthread_setname_np
    except (OSError, AttributeError):
        return False
    setname.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
    setname.restype = ctypes.c_int
    return int(setname(ident, name.encode("ascii", "replace")[:OS_NAME_MAX])) == 0
