"""Who holds a lease: an owner names its process (``host:pid:random:scope``), so a process can tell a dead one beside it.

A lease held by a process that no longer exists would otherwise block everyone until it runs out. Processes that
see the same process ids (a restart after a crash, a second worker on one machine) see that at once; processes
elsewhere wait for the lease, as they must.

A hostname alone does not say that two processes see the same process ids: two machines can share a name (two
virtual machines left as ``localhost``, two hosts imaged alike), and containers on one machine can share its name
(host networking, a ``hostname:`` in a compose file) while each has its own PID namespace, where the other's pid
is missing or is someone else. Taken for dead, a live replica's runs would be handed back while it executes them:
its steps would run twice. So an owner also carries its ``scope``: the machine's boot and the PID namespace it
runs in (on Linux). A pid is tested only for an owner of this process's own scope. An owner without one (written by
an earlier version, or where no scope can be read) is judged by its hostname, as before.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid


def new_owner() -> str:
    """This process's owner name: its host, its pid, a few random digits (two engines of one process differ) and,
    where it can be read, its scope."""
    scope = process_scope()
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}" + (f":{scope}" if scope else "")


def dead_here(owner: str, host: str | None = None) -> bool:
    """Whether ``owner`` (``host:pid:random[:scope]``) is a process that this one could see, and that no longer exists."""
    parts = owner.split(":")
    pid_text = parts[1] if len(parts) > 1 else ""
    scope = parts[3] if len(parts) > 3 else ""
    if parts[0] != (host or socket.gethostname()) or not pid_text.isdigit():
        return False
    if scope and scope != process_scope():
        return False  # another machine or another PID namespace under the same name: its pid means nothing here
    return not _pid_alive(int(pid_text))


@functools.cache
def process_scope() -> str:
    """The machine's boot and this process's PID namespace, as 12 hex digits ("" where they cannot be read).

    Two processes have the same scope only if each can see the other's pid: the boot id is new at every boot of
    every machine (Linux), and the namespace's inode tells PID namespaces apart on one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
