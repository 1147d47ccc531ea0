"""Fault injection for the in-memory adapters: the next N calls fail with ``TransientError``."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from processor.domain.errors import TransientError


@dataclass
class _Rule:
    remaining: int
    operation: str | None
    error: Exception


class Faults:
    """``fail_next(2, "download")``: the next two downloads raise; other calls are untouched."""

    def __init__(self, reason: str) -> None:
        self._reason = reason
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    def fail_next(
        self, count: int = 1, operation: str | None = None, *, error: Exception | None = None
    ) -> None:
        """Make the next ``count`` calls (of ``operation``, or of any) raise ``error``
        (default: ``TransientError`` with the adapter's outage reason, as a real outage would)."""
        error = error or TransientError(f"injected fault ({operation or 'any call'})", reason=self._reason)
        with self._lock:
            self._rules.append(_Rule(count, operation, error))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def check(self, operation: str) -> None:
        """Raise if a rule matches this call (the adapter calls it first thing)."""
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.operation in (None, operation):
                    rule.remaining -= 1
                    error = rule.error
                    break
            else:
                return
            self._rules = [rule for rule in self._rules if rule.remaining > 0]
        raise error
