"""The release workflow (.github/workflows/release.yml), checked without running it: a tag publishes the
sdist and wheel to PyPI by trusted publishing and the CUDA image to GHCR under the name Compose and the
Kubernetes manifests use, with the least permissions and actions pinned to commits."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The GitHub owner in the names the repository ships: a placeholder for whoever publishes.
OWNER = "example"
IMAGE = f"ghcr.io/{OWNER}/qwen-edit-processor"


def workflow() -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(f"{action}@")]


def test_only_a_version_tag_starts_it() -> None:
    assert workflow()["on"] == {"push": {"tags": ["v*.*.*"]}}


def test_the_tag_must_be_the_packages_version() -> None:
    job = workflow()["jobs"]["version"]
    script = " ".join(step.get("run", "") for step in job["steps"])
    assert "pyproject.toml" in script and "GITHUB_REF_NAME" in script and "exit 1" in script
    jobs = workflow()["jobs"]
    assert jobs["dist"]["needs"] == "version" and jobs["image"]["needs"] == "version"


def test_every_action_is_pinned_to_a_commit() -> None:
    uses = re.findall(r"^\s*-?\s*uses:\s*(\S+)(.*)$", WORKFLOW.read_text(), flags=re.M)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s*# v\d+(\.\d+)*", comment), (action, comment)


def test_permissions_are_the_least_each_job_needs() -> None:
    loaded = workflow()
    assert loaded["permissions"] == {}  # nothing by default; each job asks for its own
    jobs = loaded["jobs"]
    assert jobs["version"]["permissions"] == {"contents": "read"}
    assert jobs["dist"]["permissions"] == {"contents": "read"}
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    assert jobs["image"]["permissions"] == {"contents": "read", "packages": "write"}
    for job in jobs.values():
        for step in steps_using(job, "actions/checkout"):
            assert step["with"]["persist-credentials"] is False


def test_the_sdist_and_wheel_are_built_once_and_published_by_trusted_publishing() -> None:
    jobs = workflow()["jobs"]
    build = " ".join(step.get("run", "") for step in jobs["dist"]["steps"])
    assert "python -m build" in build and "twine check --strict" in build
    assert steps_using(jobs["dist"], "actions/upload-artifact")[0]["with"]["name"] == "dist"
    publish = jobs["pypi"]
    assert publish["needs"] == "dist"
    assert publish["environment"]["name"] == "pypi"
    assert steps_using(publish, "actions/download-artifact")[0]["with"] == {"name": "dist", "path": "dist/"}
    [step] = steps_using(publish, "pypa/gh-action-pypi-publish")
    # No token or password: PyPI trusts the workflow's OIDC identity (id-token: write).
    assert not {"password", "user", "repository-url"} & set(step.get("with") or {})
    assert "checkout" not in str(publish["steps"])  # the job that can publish runs nothing of the repository


def test_the_image_is_built_for_cuda_and_pushed_to_ghcr_under_the_version() -> None:
    loaded = workflow()
    assert loaded["env"]["IMAGE"] == "ghcr.io/${{ github.repository_owner }}/qwen-edit-processor"
    job = loaded["jobs"]["image"]
    [login] = steps_using(job, "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    [meta] = steps_using(job, "docker/metadata-action")
    assert meta["with"]["images"] == "${{ env.IMAGE }}"
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"]  # tag v0.1.0 -> image tag 0.1.0
    [push] = steps_using(job, "docker/build-push-action")
    assert push["with"]["context"] == "." and push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ steps.meta.outputs.tags }}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==" in dockerfile and "CUDA" in dockerfile  # the default build is the CUDA one


def test_compose_and_kubernetes_name_the_image_the_workflow_pushes() -> None:
    released = f"{IMAGE}:{VERSION}"  # what the workflow pushes for tag v{VERSION}, owner = OWNER
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert service["image"] == f"${{PROCESSOR_IMAGE:-{released}}}", name
    kubernetes = ROOT / "deploy" / "kubernetes"
    images = []
    for manifest in ("deployment.yaml", "download-model-job.yaml"):
        for doc in yaml.safe_load_all((kubernetes / manifest).read_text()):
            spec = doc["spec"]["template"]["spec"]
            images += [c["image"] for c in spec.get("initContainers", []) + spec["containers"]]
    assert images and set(images) == {released}
    [entry] = yaml.safe_load((kubernetes / "kustomization.yaml").read_text())["images"]
    assert entry == {"name": IMAGE, "newName": IMAGE, "newTag": VERSION}
