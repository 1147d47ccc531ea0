"""qwen-edit-processor: Qwen-Image-Edit-2509 image editing behind Supabase.

The public surface is small on purpose: the domain types and ports below, plus the
``edit-processor`` command. Adapters live in their own modules.
"""

from importlib.metadata import PackageNotFoundError, version

from processor.domain.errors import EditCancelled, InvalidInput, ModelError, ProcessorError, TransientError
from processor.domain.ports.editor import Editor, EditResult
from processor.domain.ports.queue import EditJob, JobQueue
from processor.domain.ports.storage import ObjectStorage
from processor.domain.request import EditParams
from processor.observability.library_noise import silence_known_noise

silence_known_noise()  # before any module of ours imports torch or diffusers

__all__ = [
    "EditCancelled",
    "EditJob",
    "EditParams",
    "EditResult",
    "Editor",
    "InvalidInput",
    "JobQueue",
    "ModelError",
    "ObjectStorage",
    "ProcessorError",
    "TransientError",
]

try:
    __version__ = version("qwen-edit-processor")  # one version string: pyproject.toml's, via the metadata
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
