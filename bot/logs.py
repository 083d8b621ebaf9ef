"""Logging: plain text by default, one JSON object per line with ``THREADFLOW_LOG_FORMAT=json``.

Each line carries the run, step path and Slack thread it concerns: the engine and the bot set them with
``workflows.tracing.log_context`` and :class:`~workflows.tracing.ContextFilter` copies them onto records.
Tokens that slip into a message (a library's error text, say) are masked on the way out; message bodies
are logged only at debug level by our own code.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from workflows.secrets import redact
from workflows.tracing import CONTEXT_FIELDS, ContextFilter

_EXTRA_FIELDS = CONTEXT_FIELDS


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in _EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message [run_id=… path=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        context = " ".join(f"{k}={getattr(record, k)}" for k in _EXTRA_FIELDS if getattr(record, k, None) is not None)
        return f"{text} [{context}]" if context else text


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` as ``fmt`` (checked beforehand: ``Settings.require_logging``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt.strip().lower() == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.strip().upper())
    # Third-party request logs can carry tokens in URLs or bodies: keep them quiet.
    for noisy in ("slack_bolt", "slack_sdk", "httpx", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Schema migration chatter (a dozen lines on every start) says nothing unless something is wrong.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
