"""Ports: the interfaces the core depends on, one module per area.

``editor`` (the model), ``queue`` (the ``edit_requests`` state machine the worker drives),
``storage`` (Supabase Storage), ``user_requests`` (rows as one user sees them), ``changes``
(pushes from the database), ``retention``, ``webhooks`` and ``loras`` (the published LoRA
allowlist). Adapters implement them (``adapters.postgres``, ``adapters.supabase_storage``,
``adapters.diffusers``, ``adapters.comfyui``, ``adapters.memory``), and tests swap adapters,
never internals.

Every port owns its lifecycle: ``open`` acquires what the adapter needs (pools, HTTP
clients), ``close`` releases it and may be called more than once. Whoever builds an
adapter (the composition root) opens it before use and closes it at the end.
"""
