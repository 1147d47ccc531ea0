"""The processor's log set-up (processor/observability/logs.py)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from processor.observability.logs import configure_logging


def test_records_go_to_the_stderr_of_the_moment_not_the_one_at_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stream replaced and closed after set-up (a test runner's capture, a daemon's redirect) made
    # every later record a "--- Logging error --- I/O operation on closed file" instead of a line.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        at_setup = io.StringIO()
        monkeypatch.setattr(sys, "stderr", at_setup)
        configure_logging("info", "console")
        at_setup.close()
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("processor.test").info("after the stream of the set-up closed")
        written = now.getvalue()
        assert "Logging error" not in written
        assert written.rstrip().endswith("after the stream of the set-up closed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
