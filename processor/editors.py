"""Choose the editor: the in-process diffusers engine or a ComfyUI server (``EDIT_ENGINE``).

Imports stay lazy, so the ComfyUI engine never loads diffusers, and the diffusers engine
never needs a websocket client.
"""

from __future__ import annotations

from processor.errors import ConfigurationError
from processor.ports import Editor
from processor.settings import Settings

# Top-level modules of the `diffusers` extra (see pyproject.toml) that the engine imports or needs.
DIFFUSERS_EXTRA = {"torch", "torchvision", "diffusers", "transformers", "tokenizers", "accelerate"}


def build_editor(settings: Settings) -> Editor:
    """The editor ``settings`` name, loaded and ready; ``ConfigurationError`` when it cannot be."""
    if settings.edit_engine == "comfyui":
        try:
            from processor.comfyui import editor_from_settings
        except ModuleNotFoundError as error:
            raise missing_extra(error, "comfyui", {"websockets"}) from error

        auth = settings.comfyui_auth_header.get_secret_value() if settings.comfyui_auth_header else None
        return editor_from_settings(
            settings.comfyui_url, settings.comfyui_workflow, auth, settings.comfyui_timeout_seconds
        )
    try:
        from processor.engine import DiffusersEditor
    except ModuleNotFoundError as error:
        raise missing_extra(error, "diffusers", DIFFUSERS_EXTRA) from error

    return DiffusersEditor.from_settings(settings)


def missing_extra(error: ModuleNotFoundError, extra: str, packages: set[str]) -> Exception:
    """An engine whose optional packages are not installed: say which extra brings them.

    Any other missing module is a real fault, and is passed on unchanged.
    """
    if (error.name or "").partition(".")[0] not in packages:
        return error
    return ConfigurationError(
        f"EDIT_ENGINE={extra} needs the {extra!r} extra ({error.name} is not installed): "
        f"pip install 'qwen-edit-processor[{extra}]'"
    )
