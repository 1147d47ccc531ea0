"""Structured logging: one JSON object per line, with the request id of the job in hand.

The request id travels in a context variable, so every log line written while a job
runs (in the worker task or in the thread running the model) carries it. Secrets are
never passed to loggers; ``SecretStr`` settings print as ``**********`` anyway, and what
libraries log (a signed URL in an HTTP client's request line, an Authorization header in an
error) is redacted from every line before it is written (``redact``).

Every long-running command (and ``dev``) sets this up once; libraries that install handlers
of their own on the root logger (the MCP SDK's Rich handler) are undone (``keep_root_logging``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id = request_id_var.get()
        # The text format shows the request only on lines written for one (not "[None]" on the rest).
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


@contextmanager
def request_context(request_id: object) -> Iterator[None]:
    """Tag every log line inside the block with ``request_id``."""
    token = request_id_var.set(str(request_id))
    try:
        yield
    finally:
        request_id_var.reset(token)


REDACTED = "[redacted]"

# What must never reach a log line, wherever it sits in it (message, exception, extra field; plain
# text or JSON-escaped): credentials in query strings (Storage's signed URLs carry ?token=<JWT>),
# Authorization values (the scheme stays, so a line still says which kind was sent), and bare
# tokens and keys by their shape (JWTs, Supabase's sb_secret_ keys, Standard Webhooks secrets).
_SECRETS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"(?i)([?&](?:token|access_token|refresh_token|id_token|apikey|api_key|key|secret|signature|sig)=)"
            r"[^&\s\"'#<>]+"
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(
            r"(?i)(\b(?:proxy-)?authorization\\?[\"']?\s*[:=]\s*\\?[\"']?)(?:(bearer|basic|token)\s+)?[^\s\"'\\,;}\]]+"
        ),
        lambda found: found[1] + (f"{found[2]} " if found[2] else "") + REDACTED,
    ),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), REDACTED),
    (re.compile(r"\b(sb_secret_|whsec_)[\w+/=-]+"), rf"\1{REDACTED}"),
)


def redact(text: str) -> str:
    """``text`` with every credential ``_SECRETS`` knows replaced by ``[redacted]``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was at set-up: a stream
    replaced since (a test runner's capture, closed after its test) would raise on every record.
    Every line is redacted after formatting, so nothing in it escapes (arguments, tracebacks, extras)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
            logging.Formatter("%(asctime)s %(levelname)s %(name)s%(request_tag)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines (health polling: a line per probe) and the HTTP client's chatter
    # (a line per request, signed URLs included) add noise, not information.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def keep_root_logging() -> Iterator[None]:
    """Undo whatever the block does to the root logger's handlers and level.

    The MCP SDK's server constructor calls ``logging.basicConfig`` with a Rich handler: where no
    handler was set yet (``dev`` before it had one), every library's INFO line then went to stderr
    in Rich's format, signed URLs included."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
