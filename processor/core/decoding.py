"""Untrusted images decoded where their work can be cut off: child processes with a CPU-time limit.

``decode_image`` refuses what it can count before decoding (bytes, pixels, JPEG scans); this bounds
everything else, whatever the decoder does with the bytes. Each image is decoded in a child process
(``python -m processor.core.decoding``) whose CPU time the kernel limits: ``RLIMIT_CPU`` at
``ImageLimits.max_decode_seconds`` more than it had used, rounded up to whole seconds; past it the
child gets ``SIGXCPU`` and dies, the caller gets ``decode_too_slow`` and the next image a new child.
A child that stops using CPU (blocked, or starved by the machine) for ``rules.DECODE_STALL_SECONDS``
is killed (``transient_error``, retried); one that keeps running is stopped only by its CPU limit, so
an image's verdict never depends on how loaded the machine is. Cancelling a decode (a worker's job
canceled) kills its child.

The child gets the bytes and limits as JSON and raw bytes, answers with a fixed binary layout (never a
pickle: a decoder exploit stays in the child), and runs without the parent's environment (no secrets).
docs/decisions/0030-decode-in-child-processes.md has why not multiprocessing or pebble. POSIX only
(Linux, macOS): RLIMIT_CPU and select() on pipes have no Windows twins.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import math
import os
import queue
import resource
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import IO, BinaryIO

import psutil
from PIL import Image

from processor.domain.errors import InvalidInput, ProcessorError, TransientError
from processor.domain.images import ImageLimits, decode_image
from processor.domain.reasons import ReasonCode
from processor.domain.rules import DECODE_PROCESSES, DECODE_STALL_SECONDS

_SIGXCPU = getattr(signal, "SIGXCPU", None)
_HEADER = struct.Struct(">BIII")  # kind, then three numbers whose meaning depends on it
_DECODED, _CHECKED, _REFUSED, _FAILED = 0, 1, 2, 3
_MAX_TEXT = 64 * 1024  # the most a child's refusal message may carry
# What a child inherits of the environment: enough to start Python and import the processor.
_ENVIRONMENT = (
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONNOUSERSITE",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "DYLD_LIBRARY_PATH",
    "LANG",
    "LC_ALL",
    "TMPDIR",
)
# One image at a time on one thread: without these, numpy's OpenBLAS (numpy comes with the processor's
# image code) starts a thread per core in every child, idle but counted, on a 64-core GPU host 64 each.
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True, slots=True)
class Decoded:
    size: tuple[int, int]
    rgb: bytes | bytearray
    """Empty when only a check was asked for."""


class _Died(Exception):
    def __init__(self, returncode: int | None) -> None:
        super().__init__(returncode)
        self.returncode = returncode


class _Stale(_Died):
    """The child was gone before it got the request (killed while idle): the image is not to blame."""


class _Child:
    """One decoding process, fed one image at a time over its stdin and stdout."""

    def __init__(self) -> None:
        environment = {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ} | _ONE_THREAD
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
        for pipe in (self._process.stdin, self._process.stdout):
            _widen(pipe)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()

    def close(self) -> None:
        self.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()

    def call(
        self, request: bytes, max_answer: int, sent: Callable[[], object], stall_seconds: float
    ) -> tuple[int, int, int, int, bytearray]:
        """Send one request (``sent()`` once it is all written); the answer's header and body.
        ``_Stale`` when the child was gone before it had the request, ``_Died`` when it ends
        after, ``TimeoutError`` (the child killed) once it stalls (``_Watch``)."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        watch = _Watch(self._process.pid, stall_seconds)
        try:
            _write_all(stdin.fileno(), request, watch)
        except TimeoutError:  # an OSError too, but the child is there: it stalled
            self.kill()
            raise
        except OSError as exc:  # no reader: the child ended before this request
            self.kill()
            raise _Stale(self._process.wait()) from exc
        sent()
        try:
            header = _read_exactly(stdout.fileno(), _HEADER.size, watch)
            kind, a, b, body_size = _HEADER.unpack(header)
            if body_size > max_answer:
                raise _Died(None)  # a child that lies about its answer is not trusted with more
            return kind, a, b, body_size, _read_exactly(stdout.fileno(), body_size, watch)
        except TimeoutError:
            self.kill()
            raise
        except (OSError, EOFError) as exc:
            self.kill()
            raise _Died(self._process.wait()) from exc


def _widen(pipe: IO[bytes] | None) -> None:
    """A 1 MiB pipe where Linux allows it (64 KiB by default): a 3 MB image crosses in 3 turns of the
    scheduler instead of 48, which on a loaded machine is most of the cost of the round trip."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if pipe is not None and setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), setpipe, 1 << 20)


class _Watch:
    """Whether a child still works on its request: it does while it uses CPU time or moves bytes.
    ``TimeoutError`` once it has done neither for ``stall`` seconds; a child that keeps computing is
    left to its CPU limit, however little of the CPU a loaded machine gives it."""

    def __init__(self, pid: int, stall: float) -> None:
        self._stall = stall
        try:
            self._process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._process = None  # gone already: the pipe says so at once
        self._cpu = self._cpu_seconds()
        self._until = time.monotonic() + stall

    def wait(self, selector: selectors.BaseSelector) -> None:
        """Until ``selector`` is ready (bytes move: progress), or ``TimeoutError`` when the child
        stalls meanwhile."""
        while not selector.select(max(0.0, self._until - time.monotonic())):
            cpu = self._cpu_seconds()
            if cpu is None or self._cpu is None or cpu <= self._cpu:
                raise TimeoutError
            self._cpu = cpu
            self._until = time.monotonic() + self._stall
        self._until = time.monotonic() + self._stall

    def _cpu_seconds(self) -> float | None:
        if self._process is None:
            return None
        try:
            times = self._process.cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)


def _write_all(stdin: int, request: bytes, watch: _Watch) -> None:
    """Write ``request`` (the child reads it whole before it decodes)."""
    view = memoryview(request)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        while view:
            watch.wait(selector)
            view = view[os.write(stdin, view[: 1 << 20]) :]


def _read_exactly(fd: int, size: int, watch: _Watch) -> bytearray:
    """``size`` bytes from ``fd``, read straight into one buffer (an image's pixels are copied once
    on their way in, into the ``Image``)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while got < size:
            watch.wait(selector)
            read = os.readv(fd, [view[got:]])
            if not read:
                raise EOFError
            got += read
    return buffer


class _Call:
    """One decode in flight: a cancel from the event loop kills the child serving it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self.cancelled = False

    def serve_with(self, child: _Child) -> bool:
        with self._lock:
            self._child = child
            return not self.cancelled

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._child is not None:
                self._child.kill()


class DecodePool:
    """Decodes untrusted images in at most ``processes`` child processes, each image within its
    limits' CPU time. Refusals are ``InvalidInput`` with ``decode_image``'s reasons, plus
    ``decode_too_slow`` (the CPU limit) and ``corrupt_image`` (the decoder crashed its process); a
    decode whose child stalls (no CPU time for ``stall_seconds``) is a ``TransientError``. Thread-safe;
    children start on first use and are reused."""

    def __init__(self, processes: int, *, stall_seconds: float = DECODE_STALL_SECONDS) -> None:
        self._stall_seconds = stall_seconds
        self._slots: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(processes):
            self._slots.put(None)
        # The threads that wait on the children for async callers: one per child.
        self._threads = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="decode")
        self._closed = False
        self._children: dict[int, _Child] = {}  # by pid: every child started and not yet closed
        self._children_lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Children decoding an image now (its bytes all sent to them)."""
        return self._busy

    def _count_busy(self, change: int) -> None:
        with self._children_lock:
            self._busy += change

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now (idle or decoding)."""
        with self._children_lock:
            return sorted(self._children)

    def start(self) -> None:
        """Start one child now rather than on the first image (blocks until it answers)."""
        with contextlib.suppress(InvalidInput):
            self._run(b"", ImageLimits(), keep_pixels=False, call=_Call())

    async def decode(self, data: bytes, limits: ImageLimits) -> Image.Image:
        """The decoded image (upright RGB); cancelling this kills its child."""
        return _image(await self._in_thread(data, limits, keep_pixels=True))

    async def check(self, data: bytes, limits: ImageLimits) -> tuple[int, int]:
        """Decode ``data`` only to see that it decodes within ``limits``; its size."""
        return (await self._in_thread(data, limits, keep_pixels=False)).size

    def decode_blocking(self, data: bytes, limits: ImageLimits) -> Image.Image:
        """``decode`` for callers without an event loop (the CLI, RunPod's reading thread)."""
        return _image(self._run(data, limits, keep_pixels=True, call=_Call()))

    def close(self) -> None:
        """Kill the children; a decode in flight fails, and so does every later one."""
        self._closed = True
        drained = []
        while True:
            try:
                drained.append(self._slots.get_nowait())
            except queue.Empty:
                break
        for child in drained:
            if child is not None:
                self._forget(child)
            self._slots.put(None)  # so a later call finds its place, and the pool shut
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, data: bytes, limits: ImageLimits, *, keep_pixels: bool) -> Decoded:
        call = _Call()
        waiting = asyncio.get_running_loop().run_in_executor(
            self._threads, lambda: self._run(data, limits, keep_pixels=keep_pixels, call=call)
        )
        try:
            return await waiting
        except asyncio.CancelledError:
            call.cancel()  # the thread sees its child die and gives the slot back
            raise

    def _run(self, data: bytes, limits: ImageLimits, *, keep_pixels: bool, call: _Call) -> Decoded:
        request = _request(data, limits, keep_pixels)
        child = self._slots.get()
        try:
            if self._closed:
                raise TransientError("the image decoding processes are shut down")
            max_answer = max(3 * limits.max_pixels if keep_pixels else 0, _MAX_TEXT)
            for attempt in (1, 2):
                if child is None or not child.alive:
                    if child is not None:
                        self._forget(child)
                    child = self._started()
                if not call.serve_with(child):
                    raise TransientError("the decode was cancelled")
                decoding = _Counted(self._count_busy)
                try:
                    answer = child.call(request, max_answer, decoding.start, self._stall_seconds)
                    break
                except _Stale:
                    self._forget(child)
                    child = None
                    if attempt == 2:
                        raise TransientError("the image decoding processes keep ending") from None
                except (TimeoutError, _Died) as exc:
                    self._forget(child)
                    child = None
                    raise _failure(exc, limits, call, self._stall_seconds) from None
                finally:
                    decoding.stop()
            return _answer(*answer, limits=limits)
        finally:
            if child is not None and self._closed:
                self._forget(child)
                child = None
            self._slots.put(child)

    def _started(self) -> _Child:
        try:
            child = _Child()
        except OSError as exc:
            raise TransientError(f"cannot start an image decoding process: {exc}") from exc
        with self._children_lock:
            self._children[child.pid] = child
        return child

    def _forget(self, child: _Child) -> None:
        child.close()
        with self._children_lock:
            self._children.pop(child.pid, None)


class _Counted:
    """One child's decode, counted in ``DecodePool.busy`` from its request sent to its answer."""

    def __init__(self, count: Callable[[int], None]) -> None:
        self._count, self._counted = count, False

    def start(self) -> None:
        self._count(1)
        self._counted = True

    def stop(self) -> None:
        if self._counted:
            self._count(-1)
            self._counted = False


_shared: DecodePool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> DecodePool:
    """The process's pool for the worker's decodes, RunPod's and the CLI's (``rules.DECODE_PROCESSES``
    children, started on first use). Upload validation has pools of its own (``UserActions``), so a
    flood of uploads never delays a claimed job's decode."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodePool(DECODE_PROCESSES)
            # The process owns it: its children end with the process, not as running
            # subprocesses Python warns about at exit.
            atexit.register(_shared.close)
        return _shared


def _request(data: bytes, limits: ImageLimits, keep_pixels: bool) -> bytes:
    header = json.dumps({"limits": asdict(limits), "keep_pixels": keep_pixels}).encode()
    return struct.pack(">II", len(header), len(data)) + header + data


def _answer(kind: int, a: int, b: int, _size: int, body: bytearray, *, limits: ImageLimits) -> Decoded:
    """The child's answer, checked: a child is not trusted to keep to its own layout."""
    if kind == _DECODED and 0 < a * b <= limits.max_pixels and len(body) == 3 * a * b:
        return Decoded((a, b), body)
    if kind == _CHECKED and not body:
        return Decoded((a, b), b"")
    if kind == _REFUSED and a + b == len(body):
        reason, message = body[:a].decode(errors="replace"), body[a:].decode(errors="replace")
        if reason in ReasonCode._value2member_map_:
            raise InvalidInput(message, reason=reason)
    if kind == _FAILED:
        name, message = body[:a].decode(errors="replace"), body[a:].decode(errors="replace")
        if name == "MemoryError":
            raise TransientError(f"out of memory while decoding the image: {message}")
        raise ProcessorError(f"the image decoder failed: {name}: {message}", reason=ReasonCode.INTERNAL_ERROR)
    raise InvalidInput("the image decoder gave a malformed answer", reason=ReasonCode.CORRUPT_IMAGE)


def _failure(exc: TimeoutError | _Died, limits: ImageLimits, call: _Call, stall_seconds: float) -> Exception:
    """What a decode whose child did not answer means for the caller."""
    if call.cancelled:
        return TransientError("the decode was cancelled")
    if isinstance(exc, TimeoutError):
        return TransientError(
            f"the image decoder used no CPU time for {stall_seconds:g} s "
            "(a machine that gives it none, or a decoder that hangs)"
        )
    if exc.returncode == -signal.SIGKILL:
        # Nothing in the child sends it (its CPU limit is SIGXCPU): the out-of-memory killer or an
        # operator did, so the image is not to blame, and a retry may pass.
        return TransientError("the image decoding process was killed from outside (out of memory?)")
    if _SIGXCPU is not None and exc.returncode == -_SIGXCPU:
        return InvalidInput(
            f"decoding the image took more than {math.ceil(limits.max_decode_seconds)} s of CPU time",
            reason=ReasonCode.DECODE_TOO_SLOW,
        )
    return InvalidInput(
        f"the image decoder crashed (its process ended with {exc.returncode})",
        reason=ReasonCode.CORRUPT_IMAGE,
    )


def _image(decoded: Decoded) -> Image.Image:
    return Image.frombytes("RGB", decoded.size, decoded.rgb)


# --- The child ------------------------------------------------------------------------------------


def _limit_cpu(seconds: float) -> Callable[[], None]:
    """Let this process use ``seconds`` more CPU time (rounded up); returns what lifts the limit again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    limit = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _decode_one(request: bytes) -> list[bytes]:
    """One request's answer, in parts: ``decode_image`` under the CPU limit."""
    header_size, data_size = struct.unpack(">II", request[:8])
    header = json.loads(request[8 : 8 + header_size])
    data = request[8 + header_size : 8 + header_size + data_size]
    limits = ImageLimits(**header["limits"])
    lift = _limit_cpu(limits.max_decode_seconds)
    try:
        image = decode_image(data, limits)
    except InvalidInput as refused:
        return _text_answer(_REFUSED, refused.reason, refused.message)
    except Exception as exc:  # MemoryError, or a bug: said, not pickled
        return _text_answer(_FAILED, type(exc).__name__, str(exc))
    finally:
        lift()
    width, height = image.size
    if not header["keep_pixels"]:
        return [_HEADER.pack(_CHECKED, width, height, 0)]
    rgb = image.tobytes()
    return [_HEADER.pack(_DECODED, width, height, len(rgb)), rgb]


def _text_answer(kind: int, name: str, message: str) -> list[bytes]:
    first, second = name.encode(), message.encode()[: _MAX_TEXT - 256]
    return [_HEADER.pack(kind, len(first), len(second), len(first) + len(second)), first, second]


def _read_request(stdin: BinaryIO) -> bytes | None:
    sizes = stdin.read(8)
    if len(sizes) < 8:
        return None
    header_size, data_size = struct.unpack(">II", sizes)
    return sizes + stdin.read(header_size + data_size)


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: one request in, one answer out, until the parent closes the pipe."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when a child ends
    # (it kills it, or closes its stdin), so a decode is never cut short and misread as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file when the CPU limit strikes
    while (request := _read_request(stdin)) is not None:
        for part in _decode_one(request):
            stdout.write(part)
        stdout.flush()


if __name__ == "__main__":
    # The answers get a descriptor of their own; whatever else writes to stdout (Python or C) goes
    # to stderr instead of into the answers.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, answers)
