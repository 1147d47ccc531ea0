"""In-memory adapters for tests: ``JobQueue``, ``ObjectStorage``, ``Wakeups`` and the webhook
ports without a database.

They implement the ports' observable behaviour (checked by the same conformance tests as the
real adapters) and add what tests need: a clock to move by hand, helpers to enqueue, cancel
and read rows, and fault injection. Users' tests import them from ``processor.testing``.
"""

from __future__ import annotations

from processor.adapters.memory.clock import Clock, ManualClock, wall_clock
from processor.adapters.memory.faults import Faults
from processor.adapters.memory.queue import (
    BatchProgress,
    InMemoryJobQueue,
    QueueCall,
    QueueRow,
    backoff_seconds,
)
from processor.adapters.memory.storage import InMemoryObjectStorage, StoredObject
from processor.adapters.memory.wakeups import InMemoryWakeups
from processor.adapters.memory.webhooks import (
    DeliveryRow,
    InMemoryWebhookOutbox,
    InMemoryWebhookReceiver,
    Sent,
)

__all__ = [
    "BatchProgress",
    "Clock",
    "DeliveryRow",
    "Faults",
    "InMemoryJobQueue",
    "InMemoryObjectStorage",
    "InMemoryWakeups",
    "InMemoryWebhookOutbox",
    "InMemoryWebhookReceiver",
    "ManualClock",
    "QueueCall",
    "QueueRow",
    "Sent",
    "StoredObject",
    "backoff_seconds",
    "wall_clock",
]
