"""Runs whose process died holding them: counted, kept apart, and failed when they keep killing processes.

A run still ``running`` under an expired lease, or held by a process on this host that no longer exists, is taken
over and counted a recovery (``runs.recoveries``; it starts over whenever the run makes progress). A step that
kills its process (``os._exit``, a segfault, the out-of-memory killer) would otherwise be recovered forever and
take every worker down in turn: once a run has died ``max_recoveries`` times (THREADFLOW_MAX_RECOVERIES, default
3, or the workflow's ``max_recoveries``) the first step it would execute again fails it instead (StepCrashed),
with a ``run.failed`` event.

Bystanders: when a process dies, every run it was executing is counted, not only the one that killed it. So a
run on its last chance (one more death fails it) is executed with no other recovered run beside it in its
process, and no recovered run is claimed while it executes: if it dies again it dies alone among the suspects,
and a healthy run that was merely in the wrong process (in a long step, say) is not failed with it. Runs that
never died are claimed as usual, so a single crash slows nothing down.
"""

from __future__ import annotations

from collections.abc import Callable

from storage.records import ClaimCandidate

from .env_settings import number_setting

DEFAULT_MAX_RECOVERIES = 3


def default_max_recoveries() -> int:
    """``THREADFLOW_MAX_RECOVERIES``, else DEFAULT_MAX_RECOVERIES."""
    value = number_setting("THREADFLOW_MAX_RECOVERIES", None, int, lambda v: v >= 1, "a whole number, 1 or more",
                           " It is how many times a run may be taken over from a process that died while executing it.")
    return DEFAULT_MAX_RECOVERIES if value is None else value


class Recoveries:
    """The recovered runs this process executes, and which ready runs it may claim next.

    ``limit(workflow_id)`` is how many deaths a run of that workflow survives (at least 1).
    """

    def __init__(self, limit: Callable[[str], int]) -> None:
        self.limit = limit
        #: Runs executing here that were recovered and have not made progress since.
        self.executing: set[str] = set()
        #: The one among them on its last chance, if any.
        self.last_chance: str | None = None

    def pick(self, candidates: list[ClaimCandidate], recovered: dict[str, bool]) -> list[str]:
        """The candidates to claim; ``recovered`` receives those that were recovered (True: on their last chance).

        Called inside the claim's transaction, possibly in the database's writer thread: it only reads state.
        """
        recovered.clear()
        chosen: list[str] = []
        last_chance = self.last_chance is not None
        any_recovered = bool(self.executing)
        for c in candidates:
            limit = self.limit(c.workflow_id)
            if 0 < c.recoveries < limit:  # (at the limit it is not executed: it fails at once)
                is_last = c.recoveries >= limit - 1
                if last_chance or (is_last and any_recovered):
                    continue  # stays ready: claimed once no recovered run here is in the way
                last_chance = last_chance or is_last
                any_recovered = True
                recovered[c.id] = is_last
            chosen.append(c.id)
        return chosen

    def claimed(self, run_id: str, recovered: dict[str, bool]) -> None:
        """``run_id`` was claimed here (``recovered`` as filled by ``pick``)."""
        if run_id in recovered:
            self.executing.add(run_id)
            if recovered[run_id] and self.last_chance is None:
                self.last_chance = run_id

    def progressed(self, run_id: str) -> bool:
        """The run committed a step (or its execution here ended); True if it was one kept apart."""
        if run_id not in self.executing:
            return False
        self.executing.discard(run_id)
        if self.last_chance == run_id:
            self.last_chance = None
        return True
