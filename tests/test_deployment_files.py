"""Deployment files: the compose file is valid Compose and says what the README promises; the Dockerfile too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    """The file as written; valid as Compose reads it with nothing set (`${NAME:-default}`: the default)."""
    text = (ROOT / "docker-compose.yml").read_text()
    # The Compose specification's own validation; raises ValueError. Compose interpolates first.
    PyCompose.from_yaml(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_compose_file_is_valid_compose() -> None:
    assert set(compose()["services"]) == {
        "processor",
        "worker",
        "processor-comfyui",
        "worker-gpu0",
        "worker-gpu1",
    }


def test_the_processor_uses_every_gpu_or_one_worker_per_gpu() -> None:
    """Several GPUs on one host (docs/worker.md): one process with an engine on each GPU, or, in the
    worker-per-gpu profile, one process per GPU, each seeing its own."""
    services = compose()["services"]
    for name in ("processor", "worker"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["count"] == "all"
    seen = []
    for name in ("worker-gpu0", "worker-gpu1"):
        service = services[name]
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert service["profiles"] == ["worker-per-gpu"] and service["command"] == [
            "edit-processor",
            "worker",
        ]
        seen += device["device_ids"]
    assert seen == ["0", "1"]


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


def test_dockerfile_runs_as_non_root_with_the_cache_on_a_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", text, flags=re.M)
    assert 'VOLUME ["/models"]' in text
    assert "/readyz" in text
    assert 'CMD ["edit-processor", "serve"]' in text


def pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M))


def test_the_image_ships_the_torch_ci_tests() -> None:
    """No torch from a base image: the Dockerfile installs the constraints file's torch pair, and
    every pip install in it is held to constraints.txt."""
    text = (ROOT / "Dockerfile").read_text()
    constraints = pins((ROOT / "constraints.txt").read_text())
    [base] = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert "pytorch" not in base and "torch" not in base
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    torch_pins = {
        name: v for line in installs for name, v in re.findall(r"\b(torch|torchvision)==(\S+)", line)
    }
    assert torch_pins == {"torch": constraints["torch"], "torchvision": constraints["torchvision"]}
    assert "COPY constraints.txt" in text


def test_the_image_installs_extras_that_exist() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = (ROOT / "Dockerfile").read_text()
    [wanted] = re.findall(r"^ARG EXTRAS=([a-z,]+)$", text, flags=re.M)
    assert '".[${EXTRAS}]"' in text
    assert set(wanted.split(",")) <= set(extras)
    assert {"diffusers", "comfyui", "runpod", "mcp", "quantization"} <= set(wanted.split(","))
    assert "dev" not in wanted.split(",")  # no test tools in the image


def test_the_docker_context_leaves_out_secrets_and_environments() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", ".dev"} <= ignored


def test_constraints_pin_what_the_project_asks_for() -> None:
    """constraints.txt is the tested set: every requirement of every extra is pinned there."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = {name.lower().replace("_", "-") for name in pins((ROOT / "constraints.txt").read_text())}
    wanted = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    names = {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in wanted}
    names.discard("qwen-edit-processor")  # the extras that name other extras
    assert names <= constraints, sorted(names - constraints)


def test_env_example_names_only_real_settings() -> None:
    from processor.settings import Settings

    names = set(re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert names <= {name.upper() for name in Settings.model_fields}
