"""``GET /healthz`` and ``GET /metrics`` while PostgreSQL is down: what a load balancer and Prometheus see.

The database sits behind a TCP proxy the test takes down (the database host goes away: new connections are
refused, open ones cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from bot.emulator import SlackEmulator
from bot.runtime import build_engine
from bot.server import start_server
from tests.bot.conftest import make_settings


class Outage:
    """A TCP proxy in front of PostgreSQL: ``await down()`` and ``await up()``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()  # new connections are refused at once...
        for writer in list(self.writers):  # ...and open ones cut
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("the outage is a PostgreSQL server going away")
    return db_url


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    started = time.monotonic()
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


async def test_healthz_and_metrics_answer_promptly_while_the_database_is_down(
        pg_url: str, emu: SlackEmulator, tmp_path: Path) -> None:
    """Both waited out the database's 10 s retry window first: a probe with any usual timeout (Kubernetes: 1 s)
    timed out instead of seeing the 503, and the scrape outlasted Prometheus' default 10 s scrape_timeout, so
    ``threadflow_db_outages_total`` was never scraped while an outage lasted."""
    url = make_url(pg_url)
    outage = Outage(url.host or "127.0.0.1", url.port or 5432)
    await outage.up()
    proxied = url.set(host="127.0.0.1", port=outage.port).render_as_string(hide_password=False)
    settings = make_settings(emu, tmp_path / "unused.db", THREADFLOW_DATABASE_URL=proxied)
    engine = build_engine(settings, poll_interval=0.05, lease_seconds=2.0)
    runner, _, port = await start_server(settings, engine, host="127.0.0.1", port=0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            assert (await timed_get(session, f"{base}/healthz"))[0] == 200
            assert (await timed_get(session, f"{base}/metrics"))[0] == 200
            await outage.down()
            # A load balancer's probe and a Prometheus scrape arrive at the same moment.
            (health, health_seconds), (metrics, metrics_seconds) = await asyncio.gather(
                timed_get(session, f"{base}/healthz"), timed_get(session, f"{base}/metrics"))
            async with session.get(f"{base}/healthz") as resp:
                body = await resp.json()
            scraped = await (await session.get(f"{base}/metrics")).text()
            await outage.up()  # (so the shutdown below is quick)
        assert health == 503 and health_seconds < 1.5, (health, health_seconds)
        assert body == {"ok": False, "database": "unreachable: no answer within 0.8 s (read failing)"}
        assert metrics == 200 and metrics_seconds < 5, (metrics, metrics_seconds)
        assert 'threadflow_db_outages_total{kind="connection"}' in scraped
    finally:
        await asyncio.wait_for(runner.cleanup(), 30)
        await outage.down()
