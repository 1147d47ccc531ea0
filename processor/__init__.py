"""qwen-edit-processor: Qwen-Image-Edit-2509 image editing behind Supabase.

The public surface is small on purpose: the domain types and ports below, plus the
``edit-processor`` command. Adapters live in their own modules.
"""

from processor.domain.errors import EditCancelled, InvalidInput, ModelError, ProcessorError, TransientError
from processor.domain.ports import EditJob, Editor, EditParams, EditResult, JobQueue, ObjectStorage

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

__version__ = "0.1.0"
