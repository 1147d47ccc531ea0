"""What bounding the decode costs, and what it saves: per-image overhead and the time to refuse bombs.

    python benchmarks/decode_bound.py [--runs 15] [--size 1024] [--bomb-scans 60000] [--json]

1. Per image, photo-like PNG and JPEG (``--size`` square): ``decode_image`` in this process (the
   baseline, what every way in did before) against ``DecodePool.decode`` (a child process, the pixels
   sent back: the worker, RunPod, the CLI) and ``DecodePool.check`` (decoded there, only the size
   back: REST and MCP validation); medians over ``--runs``, and the ratios to the baseline measured
   in the same run.
2. The issue-22 scan bomb (``--bomb-scans`` tiny scans on a 2048×2048 progressive JPEG, about 1 MB),
   plain and in every hiding place: whether the old counter saw its scans (what it missed, Pillow
   decoded whole: measured once, in this process), and the verdict and time now; and two floods no
   count sees (20 MB of empty JPEG segments, 19 MB of empty PNG chunks): Pillow's CPU time for them
   before, and now the CPU limit's refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from processor.core.decoding import DecodePool
from processor.devtools.hostile_images import (
    HIDING_PLACES,
    TINY_AC_SCAN,
    chunk_flood,
    photo_like,
    progressive_jpeg,
    segment_flood,
)
from processor.domain.errors import InvalidInput, ProcessorError
from processor.domain.images import ImageLimits, decode_image


def old_scan_count(data: bytes) -> int:
    """The counter before this branch (issue 22): it stopped at the first byte that was not FF."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif marker == 0xDA:
            return data.count(b"\xff\xda", pos)
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


def encoded(fmt: str, size: int) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {}
    photo_like(size, size).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def interleaved_ms(actions: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median milliseconds of each action, run in turn ``runs`` times: a load that comes and goes on
    the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def overhead(pool: DecodePool, size: int, runs: int) -> dict[str, dict[str, float]]:
    limits = ImageLimits()
    loop = asyncio.new_event_loop()
    report = {}
    try:
        for fmt in ("PNG", "JPEG"):
            data = encoded(fmt, size)
            decode_image(data, limits), pool.decode_blocking(data, limits)  # warm up both
            ms = interleaved_ms(
                {
                    "in_process": lambda d=data: decode_image(d, limits),  # type: ignore[misc]
                    "decode": lambda d=data: loop.run_until_complete(pool.decode(d, limits)),  # type: ignore[misc]
                    "check": lambda d=data: loop.run_until_complete(pool.check(d, limits)),  # type: ignore[misc]
                },
                runs,
            )
            report[fmt] = {
                "bytes": len(data),
                "in_process_ms": round(ms["in_process"], 2),
                "bounded_decode_ms": round(ms["decode"], 2),
                "bounded_check_ms": round(ms["check"], 2),
                "decode_ratio": round(ms["decode"] / ms["in_process"], 2),
                "check_ratio": round(ms["check"] / ms["in_process"], 2),
            }
    finally:
        loop.close()
    return report


def issue_bomb(scans: int) -> bytes:
    """About the reported file: tiny scans on a 2048×2048 progressive JPEG (16 bytes a scan)."""
    data = progressive_jpeg(2048)
    end = data.rfind(b"\xff\xd9")
    return data[:end] + TINY_AC_SCAN * scans + data[end:]


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (a killed decoding child is reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pillow_cpu(data: bytes) -> float:
    """CPU seconds Pillow takes to open and decode ``data`` here, with no count and no bound: what the
    old code ran for a bomb its counter missed."""
    started = time.process_time()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    return round(time.process_time() - started, 2)


def refusal(pool: DecodePool, data: bytes, limits: ImageLimits) -> dict[str, Any]:
    """The verdict through the pool, its wall seconds, and the CPU of a child it killed."""
    started, cpu = time.perf_counter(), children_cpu()
    try:
        pool.decode_blocking(data, limits)
        verdict = "decoded"
    except (InvalidInput, ProcessorError) as refused:
        verdict = str(refused.reason)
    return {
        "verdict": verdict,
        "seconds": round(time.perf_counter() - started, 2),
        "killed_child_cpu_seconds": round(children_cpu() - cpu, 2),
    }


def bombs(pool: DecodePool, scans: int) -> dict[str, Any]:
    bomb = issue_bomb(scans)
    hidden = HIDING_PLACES["junk-after-app0"](bomb)
    report: dict[str, Any] = {
        "bomb_bytes": len(bomb),
        "bomb_scans": scans + 10,
        # Every variant the old counter missed was decoded whole, each scan: this one measured.
        "old_decode_of_a_missed_bomb_cpu_seconds": pillow_cpu(hidden),
        "cases": {},
    }
    for name in ("plain", *HIDING_PLACES):
        data = bomb if name == "plain" else HIDING_PLACES[name](bomb)
        report["cases"][name] = {
            "old_counter_saw_it": old_scan_count(data) > 100,
            "now": refusal(pool, data, ImageLimits()),
        }
    floods = {
        "jpeg-segment-flood-20MB": segment_flood(5_000_000),
        "png-chunk-flood-19MB": chunk_flood(1_600_000),
    }
    for name, data in floods.items():
        started = time.process_time()
        old_scan_count(data)  # the old code walked a JPEG's header segments too
        walked = time.process_time() - started if data.startswith(b"\xff\xd8") else 0.0
        fresh = DecodePool(1)  # a new child, so the CPU of a killed one is its start and this image
        try:
            now = refusal(fresh, data, ImageLimits())
        finally:
            fresh.close()
        report["cases"][name] = {"old_cpu_seconds": round(pillow_cpu(data) + walked, 2), "now": now}
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--bomb-scans", type=int, default=60_000)
    parser.add_argument("--skip-bombs", action="store_true", help="only the per-image overhead")
    parser.add_argument("--skip-overhead", action="store_true", help="only the bombs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pool = DecodePool(1)
    try:
        started = time.perf_counter()
        pool.start()
        report: dict[str, Any] = {"child_start_seconds": round(time.perf_counter() - started, 2)}
        report["per_image"] = {} if args.skip_overhead else overhead(pool, args.size, args.runs)
        if not args.skip_bombs:
            report["bombs"] = bombs(pool, args.bomb_scans)
    finally:
        pool.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"child process start: {report['child_start_seconds']} s (once per pool place, and after a kill)")
    for fmt, row in report["per_image"].items():
        print(
            f"{fmt} {args.size}x{args.size} ({row['bytes']:,} B): in process {row['in_process_ms']} ms, "
            f"bounded decode {row['bounded_decode_ms']} ms ({row['decode_ratio']}x), "
            f"bounded check {row['bounded_check_ms']} ms ({row['check_ratio']}x)"
        )
    if "bombs" in report:
        bomb = report["bombs"]
        print(
            f"scan bomb: {bomb['bomb_bytes']:,} B, {bomb['bomb_scans']:,} scans; a variant the old counter "
            f"missed was decoded whole: {bomb['old_decode_of_a_missed_bomb_cpu_seconds']} s of CPU"
        )
        for name, case in bomb["cases"].items():
            now = case["now"]
            if "old_counter_saw_it" in case:
                before = "refused before" if case["old_counter_saw_it"] else "MISSED before"
            else:
                before = f"{case['old_cpu_seconds']} s of CPU before"
            killed = now["killed_child_cpu_seconds"]
            killed_text = f" (the killed child's CPU, its start included: {killed} s)" if killed else ""
            print(f"  {name}: {before}; now {now['verdict']} in {now['seconds']} s{killed_text}")
    return report


if __name__ == "__main__":
    main()
