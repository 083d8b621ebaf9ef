"""Fakes of outside services that speak their real wire protocol (here: the OpenAI HTTP API)."""

from .openai_server import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder, bag_of_words

__all__ = ["DUMMY_KEY", "FakeOpenAI", "Reply", "SleepRecorder", "bag_of_words"]
