"""Validation turns: a user with many images queued delays another user's image by one, not by all."""

from __future__ import annotations

import asyncio

import pytest

from processor.core.turns import FairTurns


async def _run(turns: FairTurns, who: str, order: list[str], release: asyncio.Event) -> None:
    async with turns.turn(who):
        order.append(who)
        await release.wait()


def test_a_newcomer_goes_before_the_queue_of_another_user() -> None:
    async def main() -> list[str]:
        turns = FairTurns(slots=2, per_user=1)
        order: list[str] = []
        gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1")}
        tasks = [asyncio.create_task(_run(turns, "a", order, gates[f"a{i}"])) for i in range(1, 5)]
        await asyncio.sleep(0)
        # Within their share of one slot, user a holds one; the other three wait, the second slot free.
        assert order == ["a"] and turns.held("a") == 1 and turns.waiting == 3
        b = asyncio.create_task(_run(turns, "b", order, gates["b1"]))
        await asyncio.sleep(0)
        assert order == ["a", "b"]  # at once, ahead of a's queue
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*tasks, b)
        return order

    assert asyncio.run(main()) == ["a", "b", "a", "a", "a"]


def test_waiting_users_are_served_round_robin() -> None:
    async def main() -> list[str]:
        turns = FairTurns(slots=1, per_user=1)
        order: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(_run(turns, "x", order, release))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(_run(turns, who, order, release)) for who in "aaabbc"]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, *waiting)
        return order

    assert asyncio.run(main()) == ["x", "a", "b", "c", "a", "b", "a"]


def test_a_canceled_waiter_gives_up_its_place_and_its_slot() -> None:
    async def main() -> None:
        turns = FairTurns(slots=1, per_user=1)
        order: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(_run(turns, "a", order, release))
        await asyncio.sleep(0)
        canceled = asyncio.create_task(_run(turns, "b", order, release))
        await asyncio.sleep(0)
        canceled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await canceled
        assert turns.waiting == 0
        release.set()
        await holder
        # Everything given back: a new turn is free at once.
        async with asyncio.timeout(5), turns.turn("c"):
            assert turns.held("c") == 1

    asyncio.run(main())
