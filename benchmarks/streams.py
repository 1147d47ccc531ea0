"""What open event streams cost other users: GET latency with none, then with many streams held.

    python benchmarks/streams.py [--streams 300] [--gets 200]

One `serve` process on a scratch database (the real REST API, worker and LISTEN). Each stream
follows a row that never finishes (its input never arrives), by as many users as the per-user
bound needs. Before, every stream polled its row four times a second through the API's pool of
four connections (300 streams: other users' GET median 7 → 154 ms); now streams sleep on
``LISTEN edit_request_changes`` and re-read only every ``CHANGES_FALLBACK_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from load import JWT_SECRET, Stack

from processor.devtools.tokens import mint_token
from processor.domain.rules import WAITS_PER_USER


def new_user(stack: Stack) -> tuple[str, str]:
    row = stack.db.execute(
        "insert into auth.users (email) values (%s) returning id", (f"{uuid.uuid4().hex}@x.test",)
    ).fetchone()
    assert row is not None
    user = str(row["id"])
    return user, mint_token(JWT_SECRET, sub=user)


def waiting_row(stack: Stack, user: str) -> str:
    row = stack.db.execute(
        "insert into edit_requests (user_id, prompt, input_paths) values (%s, 'x', %s) returning id",
        (user, [f"{user}/never-uploaded.png"]),
    ).fetchone()
    assert row is not None
    return str(row["id"])


async def get_latencies(url: str, token: str, request_id: str, count: int) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            (await client.get(f"{url}/v1/edits/{request_id}")).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


async def hold_stream(
    client: httpx.AsyncClient, url: str, opened: asyncio.Event, counter: list[int], total: int
) -> None:
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                counter[0] += 1
                if counter[0] == total:
                    opened.set()
            # keep reading until cancelled


async def measure(stack: Stack, streams: int, gets: int) -> None:
    url = stack.worker_urls[0]
    _, token = new_user(stack)
    probe_user, probe_token = new_user(stack)
    probe = waiting_row(stack, probe_user)
    await get_latencies(url, probe_token, probe, 20)  # warm-up
    baseline = await get_latencies(url, probe_token, probe, gets)

    clients, tasks = [], []
    opened, counter = asyncio.Event(), [0]
    for index in range(streams):
        if index % WAITS_PER_USER == 0:
            user, token = new_user(stack)
            client = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=None)
            clients.append(client)
        request_id = waiting_row(stack, user)
        tasks.append(
            asyncio.create_task(
                hold_stream(client, f"{url}/v1/edits/{request_id}/events", opened, counter, streams)
            )
        )
    await asyncio.wait_for(opened.wait(), timeout=300)
    loaded = await get_latencies(url, probe_token, probe, gets)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()

    def median_ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"GET /v1/edits/{{id}}, {gets} sequential requests by another user")
    print(f"  no streams open:      median {median_ms(baseline):6.1f} ms")
    print(
        f"  {streams} streams open:   median {median_ms(loaded):6.1f} ms  ({median_ms(loaded) / median_ms(baseline):.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--gets", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(1, Path(workdir))
        try:
            asyncio.run(measure(stack, args.streams, args.gets))
        finally:
            stack.close()


if __name__ == "__main__":
    main()
