"""LoRA adapters on the shared transformer: loaded once, activated per edit, never fused.

Sources are a local ``.safetensors`` file (or a folder with one) or a hub file written
``owner/repo/path/in/repo.safetensors``; both go through diffusers'
``QwenImageLoraLoaderMixin.load_lora_weights``, which converts the published layouts
(``…lora_down.weight`` / ``…lora_up.weight`` / ``…alpha`` as the Lightning files have it,
or diffusers' ``lora_A`` / ``lora_B``) and folds ``alpha / rank`` into the weights.

``AdapterCache`` keeps at most ``max_resident`` request LoRAs loaded (pinned adapters,
the Lightning ones, do not count); the least recently used one not needed by the current
edit is deleted with ``delete_adapters`` before another is loaded, so adapters never
accumulate. Each edit then calls ``set_adapters`` with exactly the adapters it needs and
their weights, or ``disable_lora`` when it needs none: the base weights are never changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor.domain.errors import ConfigurationError, InvalidInput
from processor.domain.reasons import ReasonCode
from processor.domain.rules import COST_LORA_LOAD, DEFAULT_LORA_CACHE_SIZE, DEFAULT_LORA_SCALE
from processor.domain.speed import LoraChoice

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoraSource:
    """Where a LoRA's weights are: a local file or folder, or a file in a hub repository."""

    location: str
    """Local path, or the hub repository id."""
    weight_name: str | None = None
    subfolder: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSource:
        """``/path/file.safetensors``, ``./folder``, or ``owner/repo/[sub/folders/]file.safetensors``."""
        text = text.strip()
        if not text:
            raise ConfigurationError("empty LoRA source")
        path = Path(text).expanduser()
        if path.is_file():
            return cls(str(path.parent), weight_name=path.name)
        if path.is_dir() or text.startswith(("/", ".", "~")):
            return cls(str(path))
        parts = text.split("/")
        if len(parts) < 3 or not parts[-1].endswith(".safetensors"):
            raise ConfigurationError(
                f"LoRA source {text!r} is neither a local file nor owner/repo/file.safetensors"
            )
        subfolder = "/".join(parts[2:-1]) or None
        return cls("/".join(parts[:2]), weight_name=parts[-1], subfolder=subfolder)

    def describe(self) -> str:
        return "/".join(part for part in (self.location, self.subfolder, self.weight_name) if part)

    def load_into(self, pipeline: Any, adapter_name: str) -> None:
        kwargs: dict[str, Any] = {"adapter_name": adapter_name}
        if self.weight_name:
            kwargs["weight_name"] = self.weight_name
        if self.subfolder:
            kwargs["subfolder"] = self.subfolder
        try:
            pipeline.load_lora_weights(self.location, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigurationError(f"cannot load the LoRA {self.describe()!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AllowedLora:
    """An operator-allowlisted LoRA (``LORAS``): its source and default scale."""

    name: str
    source: LoraSource
    scale: float = DEFAULT_LORA_SCALE


def adapter_name(name: str) -> str:
    """A PEFT-safe adapter name for an allowlist name (PEFT keys modules by it; no dots)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"user_{re.sub(r'[^a-z0-9_]', '_', name)}_{digest}"


class AdapterCache:
    """Request LoRAs resident on one pipeline's transformer, at most ``max_resident`` at a time.

    Not thread-safe: the editor calls it under its edit lock.
    """

    def __init__(
        self,
        pipeline: Any,
        allowlist: Mapping[str, AllowedLora],
        *,
        max_resident: int = DEFAULT_LORA_CACHE_SIZE,
        pinned: Iterable[str] = (),
    ) -> None:
        if max_resident < 1:
            raise ConfigurationError("LORA_CACHE_SIZE must be at least 1")
        self._pipe = pipeline
        self._allowlist = dict(allowlist)
        self._max = max_resident
        self._pinned = set(pinned)
        self._resident: OrderedDict[str, str] = OrderedDict()  # allowlist name -> adapter name
        self.loads = 0
        self.evictions = 0
        if len(self._allowlist) > max_resident:
            # Not refused (an operator may allow many rarely used ones), but said: requests naming
            # more of them in turn than the cache keeps load one on every edit. Each LoRA a request
            # names is charged a load (COST_LORA_LOAD default steps) whether or not it is resident.
            log.warning(
                "%d request LoRAs are allowlisted and %d are kept loaded (LORA_CACHE_SIZE): requests "
                "naming more of them in turn load one on every edit (each charged %g default steps for "
                "its load); raise LORA_CACHE_SIZE if the GPU's memory allows",
                len(self._allowlist),
                max_resident,
                COST_LORA_LOAD,
            )

    @property
    def allowlist(self) -> Mapping[str, AllowedLora]:
        return self._allowlist

    @property
    def max_resident(self) -> int:
        return self._max

    def resident(self) -> list[str]:
        """Allowlist names loaded now, least recently used first."""
        return list(self._resident)

    def check(self, choices: Sequence[LoraChoice]) -> None:
        """``InvalidInput('unknown_lora')`` for a name not on the allowlist; too many for the cache."""
        unknown = [choice.name for choice in choices if choice.name not in self._allowlist]
        if unknown:
            raise InvalidInput(f"unknown LoRA(s): {', '.join(unknown)}", reason=ReasonCode.UNKNOWN_LORA)
        if len(choices) > self._max:
            raise InvalidInput(
                f"{len(choices)} LoRAs; this deployment keeps at most {self._max} loaded",
                reason=ReasonCode.INVALID_PARAMETER,
            )

    def activate(self, choices: Sequence[LoraChoice]) -> list[tuple[str, float, dict[str, Any]]]:
        """Load what is missing (evicting the least recently used), and return
        ``(adapter name, scale, record)`` per choice. Does not call ``set_adapters``."""
        self.check(choices)
        wanted = {choice.name for choice in choices}
        active: list[tuple[str, float, dict[str, Any]]] = []
        for choice in choices:
            allowed = self._allowlist[choice.name]
            adapter = self._resident.get(choice.name)
            if adapter is None:
                self._make_room(keep=wanted)
                adapter = adapter_name(choice.name)
                forget_applied(self._pipe)
                allowed.source.load_into(self._pipe, adapter)
                self._resident[choice.name] = adapter
                self.loads += 1
                log.info("LoRA loaded", extra={"lora": choice.name, "resident": len(self._resident)})
            self._resident.move_to_end(choice.name)
            scale = allowed.scale if choice.scale is None else float(choice.scale)
            active.append((adapter, scale, {"name": choice.name, "scale": scale}))
        return active

    def _make_room(self, keep: set[str]) -> None:
        while len(self._resident) >= self._max:
            victim = next((name for name in self._resident if name not in keep), None)
            if victim is None:  # cannot happen: check() bounds a request by max_resident
                raise InvalidInput(
                    "too many LoRAs for the adapter cache", reason=ReasonCode.INVALID_PARAMETER
                )
            adapter = self._resident.pop(victim)
            forget_applied(self._pipe)
            self._pipe.delete_adapters([adapter])
            self.evictions += 1
            log.info("LoRA evicted", extra={"lora": victim})


_APPLIED = "_qep_applied_adapters"
"""Where the transformer (whose layers hold the adapters' state, shared by pipelines built from the same
components) remembers the adapters last applied (``apply_adapters``), until one is loaded or deleted."""


def apply_adapters(pipeline: Any, adapters: Sequence[tuple[str, float]]) -> None:
    """Activate exactly ``adapters`` at their weights, or disable every LoRA layer when empty. Nothing to do
    when they are the ones applied last and no adapter was loaded or deleted since (``forget_applied``):
    PEFT visits every LoRA layer of the transformer to set them, CPU time the GPU would wait for."""
    # The adapters loaded are part of the key: a load or unload elsewhere (a benchmark's) applies again too.
    wanted = (tuple(adapters), tuple(sorted(getattr(pipeline.transformer, "peft_config", None) or ())))
    memory = pipeline.transformer.__dict__
    if memory.get(_APPLIED) == wanted:
        return
    memory.pop(_APPLIED, None)  # half-applied, if this fails
    if not getattr(pipeline.transformer, "_hf_peft_config_loaded", False):
        if adapters:  # pragma: no cover - the cache loads before it activates
            raise ConfigurationError("no LoRA is loaded")
        return
    if not adapters:
        pipeline.disable_lora()
    else:
        pipeline.set_adapters(
            [name for name, _ in adapters], adapter_weights=[weight for _, weight in adapters]
        )
        pipeline.enable_lora()
    memory[_APPLIED] = wanted


def forget_applied(pipeline: Any) -> None:
    """An adapter was loaded or deleted: the next ``apply_adapters`` applies again."""
    pipeline.transformer.__dict__.pop(_APPLIED, None)


def lora_parameter_count(transformer: Any) -> int:
    """Elements in LoRA weights on the transformer (for leak checks)."""
    return sum(parameter.numel() for name, parameter in transformer.named_parameters() if ".lora_" in name)
