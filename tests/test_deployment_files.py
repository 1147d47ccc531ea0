"""Deployment files: the compose file is valid Compose and says what the README promises; the Dockerfile too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    text = (ROOT / "docker-compose.yml").read_text()
    PyCompose.from_yaml(text)  # the Compose specification's own validation; raises ValueError
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_compose_file_is_valid_compose() -> None:
    assert set(compose()["services"]) == {"processor", "worker", "processor-comfyui"}


def test_the_comfyui_profile_is_opt_in_needs_no_gpu_and_joins_comfyuis_network() -> None:
    loaded = compose()
    service = loaded["services"]["processor-comfyui"]
    assert service["profiles"] == ["comfyui"]  # not started by a plain `docker compose up`
    assert service["environment"]["EDIT_ENGINE"] == "comfyui"
    assert "deploy" not in service and "volumes" not in service  # no GPU, no model here
    assert "comfyui" in service["networks"]
    network = loaded["networks"]["comfyui"]
    assert network["external"] is True and "COMFYUI_NETWORK" in network["name"]
    assert "comfyui" not in loaded["services"]["processor"].get("profiles", [])


def test_processor_service_reserves_a_gpu_checks_readiness_and_restarts() -> None:
    service = compose()["services"]["processor"]
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    assert service["env_file"] == ".env"
    assert "models:/models" in service["volumes"]


def test_invalid_compose_is_refused_by_the_check() -> None:
    try:
        PyCompose.from_yaml("services:\n  x:\n    restart: sometimes\n")
    except ValueError:
        return
    raise AssertionError("the compose check accepted an invalid file")


def test_dockerfile_runs_as_non_root_on_cuda_with_the_cache_on_a_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S*pytorch\S*cuda", text, flags=re.M)
    assert re.search(r"^USER (?!root)\S+", text, flags=re.M)
    assert 'VOLUME ["/models"]' in text
    assert "/readyz" in text
    assert 'CMD ["edit-processor", "serve"]' in text


def test_env_example_names_only_real_settings() -> None:
    from processor.settings import Settings

    names = set(re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert names <= {name.upper() for name in Settings.model_fields}
