"""Who holds a lease: an owner names its process (``host:pid:random``), so a process can tell a dead one on its host.

A lease held by a process that no longer exists would otherwise block everyone until it runs out. Processes on
the same host (a restart after a crash, a second worker on one machine) see that at once; processes elsewhere
wait for the lease, as they must.
"""

from __future__ import annotations

import os
import socket
import uuid


def new_owner() -> str:
    """This process's owner name: its host, its pid, and a few random digits (two engines of one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_here(owner: str, host: str | None = None) -> bool:
    """Whether ``owner`` (``host:pid:...``) is a process on this host that no longer exists."""
    owner_host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if owner_host != (host or socket.gethostname()) or not pid_text.isdigit():
        return False
    return not _pid_alive(int(pid_text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
