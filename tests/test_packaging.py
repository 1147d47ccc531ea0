"""Packaging: one version string, optional integrations that stay optional, SQL that ships in the wheel."""

from __future__ import annotations

from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import processor


def test_one_version_string_from_the_package_metadata() -> None:
    from processor.app import create_app
    from processor.settings import Settings

    # create_app reads only the settings when it builds the app.
    service: Any = SimpleNamespace(settings=Settings(_env_file=None))
    assert processor.__version__ == version("qwen-edit-processor")
    assert create_app(service).version == processor.__version__
