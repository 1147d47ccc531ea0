"""One user's submissions against another's: how long a victim's one-image edit takes to be accepted
while a hostile user floods the ways in (issue 22 item 4).

    python benchmarks/hostile_submissions.py [--batches 8] [--images 10] [--rounds 3] [--json PATH]

The real user actions (``core.user_actions``: validation in decoding processes, uploads to the
Storage stand-in in its own process, inserts as the user into a scratch database with the
migrations), called directly as REST and MCP call them. The hostile user sends ``--batches``
concurrent batches of ``--images`` one-colour 25 MP PNGs each (5,000 × 5,000: small to send, about
0.35 s each to decode); the victim, 0.3 s into the flood, submits one 64 × 48 PNG. Three runs:

- baseline: the victim alone;
- over limits: the hostile user has ``max_in_flight = 0``, so every batch of theirs is refused;
- within limits: the hostile user's batches are accepted (the victim competes for validation).

Printed: the victim's submit time (median of ``--rounds``) and its ratio to the baseline, the hostile
submissions' answers by code, and the hostile user's objects left in Storage.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
from PIL import Image
from scratch import ADMIN, ScratchDatabases
from stack import JWT_SECRET, SERVICE_KEY, StorageServer

from processor.composition import build_user_actions
from processor.core.user_actions import UserActions
from processor.domain.errors import ProcessorError
from processor.domain.request import EditParams
from processor.domain.users import User
from processor.settings import load_settings


def one_colour_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def user(dsn: str, **limits: float) -> User:
    user_id = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into auth.users (id) values (%s)", (user_id,))
        if limits:
            names = ", ".join(limits)
            marks = ", ".join(["%s"] * len(limits))
            conn.execute(
                f"insert into edit_user_limits (user_id, {names}) values (%s, {marks})",
                (user_id, *limits.values()),
            )
    return User(user_id, {"sub": str(user_id), "role": "authenticated"})


async def flood(
    actions: UserActions, hostile: User, victim: User, args: argparse.Namespace, big: bytes
) -> dict[str, Any]:
    params = EditParams(prompt="make it blue", num_inference_steps=2)
    codes: Counter[str] = Counter()

    async def batch() -> None:
        try:
            await actions.submit_batch(hostile, [big] * args.images, [], params)
            codes["accepted"] += 1
        except ProcessorError as exc:
            codes[str(exc.reason)] += 1

    tasks = [asyncio.create_task(batch()) for _ in range(args.batches)]
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    await actions.submit(victim, [small_png()], params)
    victim_seconds = time.perf_counter() - started
    await asyncio.gather(*tasks)
    return {"victim_seconds": victim_seconds, "hostile": dict(codes)}


async def alone(actions: UserActions, victim: User) -> float:
    started = time.perf_counter()
    await actions.submit(victim, [small_png()], EditParams(prompt="make it blue", num_inference_steps=2))
    return time.perf_counter() - started


def objects_of(dsn: str, owner: User) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*) from storage.objects where name like %s", (f"{owner.id}/%",)
        ).fetchone()
    return int(row[0]) if row else 0


async def run(dsn: str, storage_url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(
        database_url=dsn,
        supabase_url=storage_url,
        supabase_service_role_key=SERVICE_KEY,
        supabase_jwt_secret=JWT_SECRET,
    )
    big = one_colour_png(5000)
    results: dict[str, Any] = {"hostile_image_bytes": len(big)}
    actions = build_user_actions(settings)
    await actions.open()
    try:
        victim = user(dsn)
        await alone(actions, victim)  # decoding processes started, pools warm
        results["baseline_seconds"] = statistics.median(
            [await alone(actions, victim) for _ in range(args.rounds)]
        )
        for label, limits in (("over_limits", {"max_in_flight": 0}), ("within_limits", {})):
            rounds = []
            for _ in range(args.rounds):
                hostile = user(dsn, **limits)
                rounds.append(
                    {
                        **await flood(actions, hostile, victim, args, big),
                        "objects_left": objects_of(dsn, hostile),
                    }
                )
            seconds = statistics.median(r["victim_seconds"] for r in rounds)
            results[label] = {
                "victim_seconds_median": round(seconds, 3),
                "victim_seconds": [round(r["victim_seconds"], 3) for r in rounds],
                "ratio_to_baseline": round(seconds / results["baseline_seconds"], 1),
                "hostile_answers": rounds[-1]["hostile"],
                "hostile_objects_left": rounds[-1]["objects_left"],
            }
    finally:
        await actions.close()
    results["baseline_seconds"] = round(results["baseline_seconds"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with ScratchDatabases(ADMIN) as scratch:
        dsn = scratch.migrated("hostile")
        with StorageServer(dsn) as storage:
            results = asyncio.run(run(dsn, storage.url, args))
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
