"""In-memory adapters for tests: ``JobQueue``, ``ObjectStorage``, ``Wakeups`` and the webhook
ports without a database.

They implement the ports' observable behaviour (checked by the same conformance tests as the
real adapters) and add what tests need: a clock to move by hand, helpers to enqueue, cancel
and read rows, and fault injection. Their one public home is ``processor.testing`` (listed in
docs/testing.md); this package exports nothing of its own, so each name is exported once.
"""
