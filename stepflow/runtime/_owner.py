"""Who holds a lease, and whether that process is gone.

A worker started with a stable ``worker_id`` signs its leases
``ID@HOST:PID:START``, where ``START`` names this incarnation of the process:
its start time in clock ticks since boot, prefixed with the boot's id (Linux),
or the time the worker was made elsewhere. A restarted worker with the same id
finds leases signed by an earlier incarnation and asks :func:`holder_is_gone`:

* a holder on another host: unknown (``None``), so it waits for the lease to
  expire, as for any other worker;
* a holder on this host whose pid is not running, is a zombie, or is running
  but started at another time (the pid was reused): gone (``True``);
* a holder on this host whose pid runs and started at the recorded time: alive
  (``False``), even if it is this very process: a live holder is never robbed.

Only a ``True`` lets a worker expire the holder's leases at once (see
:meth:`Store.expire_leases <stepflow.stores.base.Store.expire_leases>`); the
lease tokens fence off any save the old holder could still attempt.
"""

from __future__ import annotations

import functools
import os
import socket
import time

__all__ = ["holder_is_gone", "owner_for", "split_owner"]


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip().replace("-", "")[:8]
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """Return ``(state, start ticks)`` of a process from ``/proc``, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime)


def _start(pid: int) -> str | None:
    """Return the incarnation mark of a running process, or ``None`` if unknown."""
    stat = _stat(pid)
    if stat is None:
        return None
    return f"{_boot_id()}.{stat[1]}"


@functools.cache
def _own_start() -> str:
    return _start(os.getpid()) or f"t{time.time():.0f}"


def owner_for(worker_id: str) -> str:
    """Return the lease owner string of this process for ``worker_id``."""
    return f"{worker_id}@{socket.gethostname()}:{os.getpid()}:{_own_start()}"


def split_owner(owner: str) -> tuple[str, str, int, str] | None:
    """Return ``(worker_id, host, pid, start)`` of an owner string, or ``None``."""
    worker_id, at, where = owner.rpartition("@")
    if not at:
        return None
    host, _, rest = where.partition(":")
    pid_text, _, start = rest.partition(":")
    if not pid_text.isdigit() or not start:
        return None
    return worker_id, host, int(pid_text), start


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_is_gone(owner: str) -> bool | None:
    """Decide whether the process that signed ``owner`` is gone (see the module doc).

    Returns:
        ``True`` (gone), ``False`` (alive), or ``None`` (cannot tell: another
        host, or a name not made by :func:`owner_for`).

    """
    parts = split_owner(owner)
    if parts is None:
        return None
    _, host, pid, start = parts
    if host != socket.gethostname():
        return None
    if not _running(pid):
        return True
    stat = _stat(pid)
    if stat is None:  # no /proc: a running pid is taken as the holder
        return False
    if stat[0] in ("Z", "X"):  # a zombie is dead, only not yet reaped
        return True
    # A start time unlike the recorded one: the pid now belongs to another process.
    return _start(pid) != start if start[0] != "t" else False
