"""Several engines as one ``Editor``: one per GPU of the host, each edit on a free one.

The composition root builds one engine per visible device (``DEVICE``, docs/configuration.md) and,
with more than one, hands this pool to the worker: its ``engines`` tell the worker how many GPU turns
it has (``WORKER_CONCURRENCY`` unset), and each edit takes a free engine, the lowest-numbered first.
Preparation is CPU work that does not depend on the device (the engines run one model), so any engine
prepares, and another may run the result.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from processor.domain.errors import EditCancelled
from processor.domain.ports.editor import (
    Editor,
    EditResult,
    PreviewSink,
    ProgressCallback,
    takes_prepared,
    takes_previews,
)
from processor.domain.request import EditParams

_CANCEL_POLL_SECONDS = 0.01
"""How often an edit waiting for a busy pool looks at its cancel event (a job prepared ahead waits here
for an engine to free, and may be cancelled meanwhile)."""


class EditorPool:
    """``Editor`` over ``editors`` (one per device); closes them all."""

    def __init__(self, editors: Sequence[Editor]) -> None:
        if not editors:
            raise ValueError("an editor pool needs at least one editor")
        self.editors = list(editors)
        self._free = list(range(len(self.editors)))
        self._changed = threading.Condition()
        self.assigned: list[int] = []
        """The engine (its index) each edit ran on, in order: for diagnostics and tests."""

    @property
    def engines(self) -> int:
        """Edits it runs at once: one per engine."""
        return len(self.editors)

    def describe(self) -> Mapping[str, Any]:
        """The first engine's description, with every engine's device."""
        first = dict(self.editors[0].describe())
        first["devices"] = [editor.describe().get("device") for editor in self.editors]
        return first

    def close(self) -> None:
        for editor in self.editors:
            editor.close()

    def prepare(self, images: Sequence[Image.Image], params: EditParams) -> object | None:
        first = self.editors[0]
        if not takes_prepared(first):
            return None
        prepared: object | None = first.prepare(images, params)  # type: ignore[attr-defined]
        return prepared

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
        prepared: object | None = None,
    ) -> EditResult:
        index = self._take(cancel)
        try:
            editor = self.editors[index]
            options: dict[str, Any] = {}
            if previews is not None and takes_previews(editor):
                options["previews"] = previews
            if prepared is not None and takes_prepared(editor):
                options["prepared"] = prepared
            return editor.edit(images, params, on_progress=on_progress, cancel=cancel, **options)
        finally:
            with self._changed:
                self._free.append(index)
                self._free.sort()
                self._changed.notify()

    def _take(self, cancel: threading.Event | None) -> int:
        with self._changed:
            while not self._free:
                if cancel is not None and cancel.is_set():
                    raise EditCancelled("cancelled while it waited for an engine")
                self._changed.wait(_CANCEL_POLL_SECONDS)
            index = self._free.pop(0)
            self.assigned.append(index)
            return index
