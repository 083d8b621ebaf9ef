"""The events outbox insert, shared by the run repository's writes (runs.py, resolves.py).

Deferrable (see prepared.py): a batch executes every writer's event rows as one ``executemany`` before its
commit, so one statement object must serve them all.
"""

from __future__ import annotations

from sqlalchemy import insert

from .prepared import prepared
from .tables import events

INSERT_EVENTS = prepared(insert(events), deferrable=True)
