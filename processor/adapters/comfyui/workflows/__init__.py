"""ComfyUI workflows (API format) that ship with the package."""
