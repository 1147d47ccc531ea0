"""Turns at a shared resource for users who may be hostile: a few slots, taken round robin by user.

``FairTurns`` hands out ``slots`` slots (the validation processes, say), at most ``per_user`` of them
to one user at once. Users who wait are served in turn, one slot each, least recently served first,
however many submissions each has queued: a user who queues a hundred images delays another user's
image by one image per slot, not by a hundred.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairTurns:
    """Slots taken round robin by user; for one event loop."""

    def __init__(self, slots: int, per_user: int) -> None:
        if slots < 1 or per_user < 1:
            raise ValueError("slots and per_user must be at least 1")
        self._free = slots
        self._per_user = per_user
        self._held: Counter[Hashable] = Counter()
        # Users who wait, least recently served first, each with their waiters in arrival order.
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Turns asked for and not yet given."""
        return sum(len(queue) for queue in self._waiting.values())

    def held(self, who: Hashable) -> int:
        """Slots ``who`` holds now."""
        return self._held[who]

    @asynccontextmanager
    async def turn(self, who: Hashable) -> AsyncIterator[None]:
        """Hold one slot for ``who`` while the block runs; wait for it in turn if none is free to them."""
        # Whoever still waits while a slot is free is over their own share: a newcomer within theirs
        # goes at once (``_grant`` leaves no grantable waiter behind).
        if self._free > 0 and self._held[who] < self._per_user:
            self._take(who)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(who, deque()).append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.cancelled():
                    self._forget(who, future)
                else:  # given a slot just as it was canceled: hand it on
                    self._give_back(who)
                raise
        try:
            yield
        finally:
            self._give_back(who)

    def _take(self, who: Hashable) -> None:
        self._free -= 1
        self._held[who] += 1

    def _give_back(self, who: Hashable) -> None:
        self._free += 1
        self._held[who] -= 1
        if not self._held[who]:
            del self._held[who]
        self._grant()

    def _forget(self, who: Hashable, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(who)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[who]

    def _grant(self) -> None:
        """Give free slots to waiters: the least recently served user within their share first."""
        while self._free > 0:
            who = next((user for user in self._waiting if self._held[user] < self._per_user), None)
            if who is None:
                return
            queue = self._waiting[who]
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(who)  # served: to the back of the line
            else:
                del self._waiting[who]
            self._take(who)
            future.set_result(None)
