"""Fixtures for agents, models and memory: a fake OpenAI server, fast retries, and a network guard.

The guard makes every test here unable to reach anything but loopback: OpenAI calls must go to the
fake server (``fake_openai`` points ``OPENAI_BASE_URL`` at it), and without it the default model is
the offline one (no ``OPENAI_API_KEY``), so a forgotten setting fails loudly instead of calling out.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from storage import Database
from tests.fakes import DUMMY_KEY, FakeOpenAI, SleepRecorder
from workflows.memory import Memory
from workflows.models import OpenAIChatModel, OpenAIEmbedder
from workflows.step import RetryPolicy

#: Millisecond backoff: retry tests stay fast; the delays themselves are checked through ``sleeps``.
FAST_RETRY = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01)


def _is_local(host: Any) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("THREADFLOW_MODEL", raising=False)
    monkeypatch.delenv("THREADFLOW_EMBEDDER", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the discard port: refused at once
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(address: Any) -> None:
        raise ConnectionRefusedError(
            f"Tests must not reach the network ({address!r}); use the fake_openai fixture."
        )

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            refuse(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            refuse(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture
async def fake_openai(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
        yield fake


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def openai_model(fake_openai: FakeOpenAI, sleeps: SleepRecorder) -> AsyncIterator[OpenAIChatModel]:
    model = OpenAIChatModel(
        "gpt-test",
        api_key=DUMMY_KEY,
        base_url=fake_openai.base_url,
        timeout=5.0,
        retry=FAST_RETRY,
        sleep=sleeps,
    )
    yield model
    await model.aclose()


@pytest.fixture
async def openai_embedder(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIEmbedder]:
    embedder = OpenAIEmbedder(
        "embed-test", api_key=DUMMY_KEY, base_url=fake_openai.base_url, retry=FAST_RETRY
    )
    yield embedder
    await embedder.aclose()


@pytest.fixture
async def memory_db(tmp_path: Any) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await db.open()
    yield db
    await db.close()


@pytest.fixture
def memory(memory_db: Database) -> Memory:
    return Memory(memory_db, last_messages=4, summarize_after_tokens=None)
