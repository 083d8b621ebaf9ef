"""Fakes of outside services that speak their real wire protocol (here: the OpenAI HTTP API)."""

from .openai_server import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder, bag_of_words
from .server_families import FAMILIES

__all__ = ["DUMMY_KEY", "FAMILIES", "FakeOpenAI", "Reply", "SleepRecorder", "bag_of_words"]
