"""Parts of ``benchmarks/gpu_speed.py``: the model it builds (``model``), what it runs in which order
and what that should cost (``plan``), the checks before it builds (``preflight``) and how one variant
is measured (``measure``)."""
