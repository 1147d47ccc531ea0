"""The run's output and its deadline: one JSON line per event, written as it happens, and an alarm
that stops whatever runs when the time is up."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def process_started() -> float:
    """When this process started, on the ``time.monotonic`` clock (imports count against the deadline)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - max(uptime - started_after_boot, 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


class Recorder:
    """One JSON line per event, printed and appended to ``path`` (flushed and synced) as it happens,
    so that a run killed at any point keeps every line it wrote."""

    def __init__(self, path: Path | None, started: float) -> None:
        self.path = path
        self.started = started
        self.lines: list[dict[str, Any]] = []

    def emit(self, line: dict[str, Any]) -> dict[str, Any]:
        line = {**line, "elapsed_s": round(time.monotonic() - self.started, 2)}
        text = json.dumps(line, default=str)
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a") as out:
                out.write(text + "\n")
                out.flush()
                os.fsync(out.fileno())
        self.lines.append(line)
        return line

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]


class DeadlineReached(BaseException):
    """Raised in the main thread at the deadline (or on SIGTERM). Not an ``Exception``: a variant's
    failure handling does not swallow it."""


@contextmanager
def alarm_at(deadline: float) -> Iterator[None]:
    """Interrupt whatever runs in the main thread when ``deadline`` (``time.monotonic``) passes. A
    long device kernel finishes first: Python runs the handler between bytecodes. An alarm already
    set (a test runner's timeout) still fires when it is due, and is set again afterwards. Off the
    main thread there is no alarm."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    started = time.monotonic()
    remaining = deadline - started
    if remaining <= 0:
        raise DeadlineReached("the deadline had passed")

    def interrupt(signum: int, frame: Any) -> None:
        if time.monotonic() >= deadline - 0.01:
            raise DeadlineReached("the deadline passed")
        if callable(previous):  # the earlier alarm's turn
            previous(signum, frame)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))  # ours again

    previous = signal.signal(signal.SIGALRM, interrupt)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, remaining)
    if 0 < outer < remaining:
        signal.setitimer(signal.ITIMER_REAL, outer)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        left = outer - (time.monotonic() - started)
        if outer > 0 and left > 0:  # not yet due: set again for what is left of it
            signal.setitimer(signal.ITIMER_REAL, left, interval)
        elif interval > 0:
            signal.setitimer(signal.ITIMER_REAL, interval, interval)


@contextmanager
def terminate_gracefully() -> Iterator[None]:
    """SIGTERM (an outer ``timeout``) ends the run as the deadline does: the summary is still written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signal: int, _frame: Any) -> None:
        raise DeadlineReached("terminated")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish(recorder: Recorder, args: argparse.Namespace, status: int) -> int:
    results = recorder.events("result")
    recorder.emit(
        {
            "event": "summary",
            "exit": status,
            "results": [line["variant"] for line in results],
            "failed": [line["variant"] for line in recorder.events("failed")],
            "skipped": [line["variant"] for line in recorder.events("skipped")],
            "device": torch.cuda.get_device_name()
            if args.device == "cuda" and torch.cuda.is_available()
            else args.device,
        }
    )
    print_table(results)
    return status


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'variant':<20}{'s/image':>9}{'s/step':>9}{'×stock':>8}{'TFLOP/s':>9}{'floor':>7}{'peak GiB':>9}{'error':>10}{'frames':>7}"
    print(header, file=sys.stderr)
    for line in results:
        memory = line.get("memory") or {}
        error = (line.get("error_vs_reference") or {}).get("relative_l1")
        print(
            f"{line['variant']:<20}{line['seconds_per_image']:>9.3f}{line['seconds_per_step']:>9.4f}"
            f"{line.get('vs_stock', 1.0):>8.2f}{line.get('achieved_tflops') or 0:>9.1f}"
            f"{line.get('fraction_of_floor') or 0:>7.2f}{memory.get('peak_allocated_gib', 0):>9.1f}"
            f"{(f'{error:.2e}' if error is not None else '-'):>10}"
            f"{(line.get('compile') or {}).get('frames_compiled', '-'):>7}",
            file=sys.stderr,
        )
