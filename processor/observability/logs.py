"""Structured logging: one JSON object per line, with the request id of the job in hand.

The request id travels in a context variable, so every log line written while a job
runs (in the worker task or in the thread running the model) carries it. Secrets are
never passed to loggers; ``SecretStr`` settings print as ``**********`` anyway.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


@contextmanager
def request_context(request_id: object) -> Iterator[None]:
    """Tag every log line inside the block with ``request_id``."""
    token = request_id_var.set(str(request_id))
    try:
        yield
    finally:
        request_id_var.reset(token)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was at set-up: a stream
    replaced since (a test runner's capture, closed after its test) would raise on every record."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route the root logger to stderr as JSON (or plain text for a terminal)."""
    handler = _StderrHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{request_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines and the HTTP client's chatter add noise, not information.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
