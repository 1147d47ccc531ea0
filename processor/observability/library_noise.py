"""Start-up noise from libraries, silenced narrowly at its source.

Each entry names one logger and the start of one message; nothing else from that logger is
touched. ``processor/__init__.py`` installs the filters before torch or diffusers is imported.
"""

from __future__ import annotations

import logging

KNOWN_NOISE: dict[str, tuple[str, ...]] = {
    # torchao 0.18 registers Enum classes with torch 2.14's pytree, which then warns, once per Enum,
    # that Enums no longer need registering. Harmless; it is torchao's to change.
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported by torch.compile",),
    # diffusers 0.42's torchao quantizer looks for Tensor classes that torchao 0.16+ moved; it only
    # matters for loading checkpoints serialised with old torchao, which this project never does.
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
}


class DropMessages(logging.Filter):
    """Drops records whose (unformatted) message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


def silence_known_noise() -> None:
    """Install the filters (idempotent)."""
    for name, prefixes in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(prefixes))
