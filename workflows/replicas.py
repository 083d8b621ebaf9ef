"""What this process tells the others about the workflow versions it executes, and stranded runs.

An executing engine lists its versions in the database (``served_versions``) while it lives, pushing
their expiry forward every heartbeat, and deletes them when it closes. Once it has been up for a lease
period (long enough for replicas restarting in a rolling deploy to list theirs again) it also sweeps for
**stranded** runs, unfinished runs whose version no live process has, and commits one ``run.stranded``
event per run (the Slack thread says so once; again only if the version came back and went away again).

A resume, event or re-run of a run whose version this process lacks asks the same table: if a live
replica has the version, the error says where; if none has it, the run is stranded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from storage.failure_log import FailureLog
from storage.records import NewEvent, RunRecord, ServedVersion
from storage.versions import Serving, StrandedRun, VersionStore

from .errors import VersionNotRegistered, WorkflowNotFound
from .versions import VersionStatus, describe_version, version_key
from .waits import wait_set
from .workflow import CommittedWorkflow

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("threadflow.engine")


class Replica:
    """One engine's side of the version table: announce, sweep, and answer "who can run this version?"."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = VersionStore(engine.db)
        self._changed = asyncio.Event()
        self._failures = FailureLog(log, "announcing workflow versions")

    def registered(self) -> None:
        """The engine's registry changed: claim only its runs now, and tell the others soon."""
        self.engine.store.serving = self.mine()
        self._changed.set()

    async def run(self) -> None:
        """Background task of an executing engine: announce every heartbeat; sweep once up for a lease."""
        engine = self.engine
        interval = max(0.05, min(engine.lease_seconds / 3, 10.0))
        up_since = time.monotonic()
        while True:  # until the engine cancels it on close
            self._changed.clear()
            try:
                served = engine.registry.served()  # (earlier fingerprints of the same definitions too)
                await self.store.announce(engine.owner, served, engine.lease_seconds)
                if time.monotonic() - up_since >= engine.lease_seconds:
                    for s in await self.store.sweep(self.stranded_event, self.mine()):
                        log.warning("run %s is stranded: no live process has version %s of %s", s.run_id,
                                    describe_version(s.version, s.fingerprint), s.workflow_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failed(exc)
            else:
                self._failures.worked()
            await wait_set(self._changed, max(0.5, interval))  # not wait_for: it can swallow close's cancel

    async def withdraw(self) -> None:
        await self.store.withdraw(self.engine.owner)

    def stranded_event(self, s: StrandedRun) -> NewEvent:
        """``run.stranded``: the run's version, the versions live processes have, and a sentence for people."""
        version = describe_version(s.version, s.fingerprint)
        live = _newest_first(s.live)
        has = ", ".join(describe_version(v.version, v.fingerprint) for v in live) or "no version of it"
        return NewEvent(type="run.stranded", data={
            "workflow_id": s.workflow_id,
            "version": s.version,
            "fingerprint": s.fingerprint,
            "registered": [{"version": v.version, "fingerprint": v.fingerprint} for v in live],
            "message": (
                f"This run is on version {version} of {s.workflow_id}, which no running process has "
                f"(running processes have {has}). Nothing happens to it until version {version} is registered "
                f"again; or move it onto the current version with `threadflow rerun {s.run_id} --from STEP`, "
                f"or cancel it."
            ),
        })

    async def definition_for(self, run: RunRecord) -> CommittedWorkflow:
        """The definition that continues ``run`` here, or an error naming its version and what is registered."""
        registry = self.engine.registry
        wf = registry.for_run(run)
        if wf is not None:
            return wf
        if run.workflow_fingerprint is None:
            raise WorkflowNotFound(run.workflow_id, list(registry.workflow_ids()))
        live = await self.store.live(run.workflow_id)
        here = registry.infos(run.workflow_id) if registry.get(run.workflow_id) else []
        served_by = sorted({v.owner for v in live if v.fingerprint == run.workflow_fingerprint} - {self.engine.owner})
        names = [i.describe() for i in here]
        if not served_by:  # stranded: name every version anyone has
            names += [describe_version(v.version, v.fingerprint) for v in _newest_first(live)]
        raise VersionNotRegistered(
            run.id, run.workflow_id, describe_version(run.workflow_version, run.workflow_fingerprint),
            ", ".join(dict.fromkeys(names)) or "none", served_by,
        )

    async def is_stranded(self, run: RunRecord) -> bool:
        """No live process (this one included) can continue ``run``."""
        if run.is_terminal or self.engine.registry.for_run(run) is not None:
            return False
        if run.workflow_fingerprint is None:
            return not await self.store.live(run.workflow_id)
        return not await self.store.served_by(run.workflow_fingerprint)

    async def report(self) -> list[VersionStatus]:
        """Every version registered here, served by a live process, or with unfinished runs; newest first."""
        registry = self.engine.registry
        rows: dict[tuple[str, str | None], VersionStatus] = {}
        for info in registry.infos():
            rows[(info.workflow_id, info.fingerprint)] = VersionStatus(
                workflow_id=info.workflow_id, version=info.version, fingerprint=info.fingerprint, newest=info.newest,
                registered=True,
            )
        for sv in await self.store.live():
            row = rows.setdefault((sv.workflow_id, sv.fingerprint), VersionStatus(
                workflow_id=sv.workflow_id, version=sv.version, fingerprint=sv.fingerprint,
            ))
            row.served_by.append(sv.owner)
        for count in await self.store.open_counts():
            row = rows.setdefault((count.workflow_id, count.fingerprint), VersionStatus(
                workflow_id=count.workflow_id, version=count.version, fingerprint=count.fingerprint,
                registered=count.fingerprint is None and registry.get(count.workflow_id) is not None,
            ))
            row.open_runs += count.open_runs
        by_version = sorted(rows.values(), key=lambda r: version_key(r.version or ""), reverse=True)
        return sorted(by_version, key=lambda r: (r.workflow_id, not r.newest, not r.registered, r.fingerprint is None))

    def mine(self) -> Serving:
        """The versions this process has (fingerprints, and workflow ids for runs recorded without one)."""
        registry = self.engine.registry
        return Serving(registry.fingerprints(), registry.workflow_ids())


def _newest_first(versions: list[ServedVersion]) -> list[ServedVersion]:
    unique = {v.fingerprint: v for v in versions}
    return sorted(unique.values(), key=lambda v: (v.version is not None, version_key(v.version or "")), reverse=True)
