"""Talking to Slack's Web API: a typed, paced client, and what its errors mean."""

from .client import (
    DEFAULT_TIMEOUT,
    Posted,
    SlackClient,
    delivery_metadata,
    make_web_client,
    ts_of_delivery,
    with_retries,
)
from .errors import Permanent, RateLimited, SlackCallError, Transient, describe_for_people
from .pacing import Pacer, pace_of
from .streams import AnswerStream, StreamingSupport

__all__ = [
    "DEFAULT_TIMEOUT",
    "AnswerStream",
    "Pacer",
    "Permanent",
    "Posted",
    "RateLimited",
    "SlackCallError",
    "SlackClient",
    "StreamingSupport",
    "Transient",
    "delivery_metadata",
    "ts_of_delivery",
    "describe_for_people",
    "make_web_client",
    "pace_of",
    "with_retries",
]
