"""Kubernetes manifests (deploy/kubernetes): valid offline, consistent with the code, and the scaler's SQL.

Core kinds are checked with kubernetes-validate's strict schemas for the Kubernetes versions stated in
docs/kubernetes.md; KEDA's kinds with our own JSON Schemas (deploy/kubernetes/schemas). Nothing is
fetched from the network.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from processor.composition import worker_config
from processor.core.service import ProcessorService
from processor.domain.errors import ConfigurationError
from processor.entrypoints.http_app import create_health_app
from processor.settings import Settings, load_settings
from processor.testing import InMemoryJobQueue, InMemoryObjectStorage
from tests.conftest import DEADLINE, admin_server, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = DEPLOY / "schemas"
# The versions docs/kubernetes.md promises: the oldest and the newest checked.
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")
KEDA_SCHEMA_FILES = {
    "ScaledObject": "scaledobject.keda.sh_v1alpha1.json",
    "TriggerAuthentication": "triggerauthentication.keda.sh_v1alpha1.json",
}
# Settings every deployment of `edit-processor worker` must be given (composition.build_service).
WORKER_REQUIRED = {"DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"}

Row = dict[str, Any]
Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, Doc]]:
    found = []
    for path in manifest_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            assert isinstance(doc, dict), f"{path.name} document {index} is not a mapping"
            found.append((f"{path.name}:{doc['kind']}:{doc['metadata']['name']}", doc))
    return found


def the(kind: str, name: str | None = None) -> Doc:
    [doc] = [
        d for _, d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return doc


def validate(doc: Doc, version: str) -> None:
    """Raise when ``doc`` is not a valid object of its kind (no kind goes unchecked)."""
    if doc["apiVersion"].startswith("keda.sh/"):
        schema = json.loads((SCHEMAS / KEDA_SCHEMA_FILES[doc["kind"]]).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def worker_deployment() -> Doc:
    return the("Deployment", "qwen-edit-worker")


def worker_container() -> Doc:
    [container] = worker_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def config_data() -> dict[str, str]:
    data: dict[str, str] = the("ConfigMap", "qwen-edit-worker")["data"]
    return data


def example_secret(name: str) -> dict[str, str]:
    data: dict[str, str] = the("Secret", name)["stringData"]
    return data


# --- Validity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), documents(), ids=[where for where, _ in documents()])
def test_every_manifest_is_valid(where: str, doc: Doc, version: str) -> None:
    validate(doc, version)


def test_every_kind_present_is_one_we_expect() -> None:
    kinds = sorted({d["kind"] for _, d in documents()})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "ScaledObject",
        "Secret",
        "TriggerAuthentication",
    ]
    assert {d["metadata"].get("namespace") for _, d in documents() if d["kind"] != "Namespace"} == {
        the("Namespace")["metadata"]["name"]
    }


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        # A typo'd field: strict schemas refuse what Kubernetes would silently drop.
        ("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSecond=150)),
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={})),
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")),
        ("ConfigMap", lambda d: d["data"].update(WORKER_CONCURRENCY=1)),  # not a string
        ("ScaledObject", lambda d: d["spec"].update(minReplicaCount=-1)),
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=4)),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].pop("query")),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(targetQueryValue=1)),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(querry="select 1")),
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
        ("TriggerAuthentication", lambda d: d.update(spec={})),
    ],
)
def test_a_broken_manifest_fails_validation(kind: str, breakage: Callable[[Doc], object]) -> None:
    broken = copy.deepcopy(the(kind))
    validate(broken, KUBERNETES_VERSIONS[-1])  # the original passes...
    breakage(broken)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(broken, KUBERNETES_VERSIONS[-1])  # ...the broken copy does not


def test_the_kustomization_applies_everything_but_the_example_secret_and_the_job() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == the("Namespace")["metadata"]["name"]
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifest_files()} - {"secret.example.yaml", "download-model-job.yaml"}
    [image] = kustomization["images"]
    assert worker_container()["image"] == f"{image['name']}:{image['newTag']}"


def test_the_example_secrets_hold_placeholders_only() -> None:
    for name in ("qwen-edit-worker", "qwen-edit-keda"):
        for key, value in example_secret(name).items():
            assert "<" in value and ">" in value, f"{name}.{key} looks like a real value"


# --- The worker Deployment and the code --------------------------------------------------------


def test_the_worker_runs_the_worker_command_on_one_gpu() -> None:
    container = worker_container()
    pod = worker_deployment()["spec"]["template"]["spec"]
    assert container["command"] == ["edit-processor", "worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in worker_deployment()["spec"]  # KEDA owns it
    assert pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # The image is the Dockerfile's: its user, and its model folder as the volume's mount point.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile
    [models] = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert f"MODEL_CACHE_DIR={models['mountPath']}" in dockerfile
    assert config_data()["MODEL_CACHE_DIR"] == models["mountPath"]


def test_the_grace_period_covers_the_shutdown_grace_and_a_margin() -> None:
    default = Settings.model_fields["shutdown_grace_seconds"].default
    configured = float(config_data().get("SHUTDOWN_GRACE_SECONDS", default))
    grace = worker_deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > default
    # The drain, then giving the job back and closing the connections and the model.
    assert grace >= configured + 15


def test_the_probes_ask_the_worker_health_server_what_it_serves() -> None:
    container = worker_container()
    service = ProcessorService(
        worker_config(Settings()),
        queue=InMemoryJobQueue(),
        storage=InMemoryObjectStorage(),
        editor_factory=lambda: pytest.fail("listing routes loads no model"),
    )
    paths = {getattr(route, "path", None) for route in create_health_app(service).routes}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] in paths
        assert ports[http["port"]] == int(config_data()["WORKER_HEALTH_PORT"])
    # Ready means the model is loaded; liveness only that the process answers, and it starts only
    # once the startup probe has seen the model loaded, so a long load is never killed.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # compose's start_period


def test_every_environment_name_is_a_setting() -> None:
    named: set[str] = set(config_data()) | set(example_secret("qwen-edit-worker"))
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                named |= {env["name"] for env in container.get("env", [])}
                for source in container.get("envFrom", []):
                    assert set(source) <= {"configMapRef", "secretRef"}
    unknown = {name for name in named if name.lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {unknown}"
    assert set(example_secret("qwen-edit-worker")) == WORKER_REQUIRED


def test_the_configuration_is_accepted_and_needs_exactly_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from processor.composition import build_service

    monkeypatch.chdir(tmp_path)  # no .env
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in config_data().items():
        monkeypatch.setenv(name, value)
    filled = {
        "SUPABASE_URL": "https://project.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_x",
        "DATABASE_URL": "postgresql://u@h/db",
    }
    for missing in sorted(WORKER_REQUIRED):
        with monkeypatch.context() as scoped:
            for name, value in filled.items():
                if name != missing:
                    scoped.setenv(name, value)
            with pytest.raises(ConfigurationError, match=missing):
                build_service(load_settings())
    for name, value in filled.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.worker_health_port == 8000 and settings.device == "cuda"
    build_service(settings)  # nothing else is missing


# --- The worker's health server, for real -------------------------------------------------------


def answers(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_the_worker_serves_its_probes_and_drains_on_sigterm(
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    process = spawn_worker("probed", worker_health_port=port, host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{base}/readyz") == 200, what="/readyz 200 (model loaded)")
    assert answers(f"{base}/healthz") == 200
    assert answers(f"{base}/webhooks/edit-requests") == 404  # the probes, nothing else
    process.send_signal(signal.SIGTERM)
    assert process.wait(DEADLINE) == 0


# A worker whose model cannot load exits (so the pod restarts) with its probes served:
# tests/test_service_lifecycle.py, test_worker_exits_non_zero_when_the_model_cannot_load.


# --- The scaler's query, as the scaler ------------------------------------------------------------


def scaler_query() -> str:
    [trigger] = the("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    query: str = trigger["metadata"]["query"]
    return query


@pytest.fixture
def scaler(database_url: str, db: psycopg.Connection[Row]) -> Iterator[psycopg.Connection[Row]]:
    """A connection that logs in as a member of ``keda_scaler`` (as docs/kubernetes.md sets it up)."""
    role = f"qep_keda_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_server().url, autocommit=True) as admin:
        admin.execute(f"create role {role} login in role keda_scaler")
        try:
            with psycopg.connect(
                make_conninfo(database_url, user=role), autocommit=True, row_factory=dict_row
            ) as conn:
                yield conn
        finally:
            admin.execute(f"drop role {role}")


def set_state(db: psycopg.Connection[Row], request_id: uuid.UUID, sql: str) -> None:
    db.execute(f"update edit_requests set {sql} where id = %s", (request_id,))


def test_the_scaler_counts_what_is_claimable_plus_what_runs(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], scaler: psycopg.Connection[Row]
) -> None:
    processing = "status = 'processing', claimed_by = 'w', started_at = now(), attempts = {a}, "
    states = {
        "queued": ("", "claimable"),
        "queued, back-off over": ("next_attempt_at = now() - interval '1 second'", "claimable"),
        "queued, in back-off": ("next_attempt_at = now() + interval '1 hour'", None),
        "awaiting_image": ("status = 'awaiting_image'", None),
        "processing": (processing.format(a=1) + "lease_expires_at = now() + interval '1 hour'", "running"),
        "lapsed lease": (
            processing.format(a=1) + "lease_expires_at = now() - interval '1 second'",
            "claimable",
        ),
        "lapsed, last attempt": (
            processing.format(a=3) + "max_attempts = 3, lease_expires_at = now() - interval '1 second'",
            None,
        ),
        "succeeded": ("status = 'succeeded', output_path = 'o.png', progress = 1, finished_at = now()", None),
        "failed": ("status = 'failed', error = 'x', error_code = 'model_error', finished_at = now()", None),
        "canceled": ("status = 'canceled', finished_at = now()", None),
    }
    assert scaler.execute(scaler_query()).fetchone() == {"?column?": 0}
    for update, _ in states.values():
        request_id = add_request()
        if update:
            set_state(db, request_id, update)
    counts = scaler.execute("select * from public.edit_request_autoscaler_counts()").fetchone()
    expected = {"claimable": 3, "running": 1}
    assert [kind for _, kind in states.values()].count("claimable") == expected["claimable"]
    assert counts == expected
    [value] = scaler.execute(scaler_query()).fetchone().values()  # type: ignore[union-attr]
    assert value == 4

    # "Claimable" is what the claim hands out: exactly that many claims succeed.
    claims = 0
    while db.execute("select * from claim_edit_request('counter', 60)").fetchall():
        claims += 1
    assert claims == expected["claimable"]
    counts = scaler.execute("select * from public.edit_request_autoscaler_counts()").fetchone()
    assert counts == {"claimable": 0, "running": 4}


def test_the_scaler_role_reads_nothing_else(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], scaler: psycopg.Connection[Row]
) -> None:
    add_request()
    role = db.execute(
        "select rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication "
        "from pg_roles where rolname = 'keda_scaler'"
    ).fetchone()
    assert role is not None and not any(role.values())  # NOLOGIN until the operator says otherwise
    for statement in (
        "select * from public.edit_requests",
        "select count(*) from public.edit_requests",
        "select * from public.edit_queue_settings",
        "select * from storage.objects",
        "select public.edit_request_queue_stats()",
        "select * from public.claim_edit_request('keda', 60)",
        "select public.requeue_expired_edit_requests()",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            scaler.execute(statement)
    # Of the functions that run with their owner's rights, it may call one (trigger functions,
    # whatever their grants, cannot be called: PostgreSQL runs them only as triggers).
    callable_definers = db.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where p.prosecdef and p.prorettype <> 'trigger'::regtype "
        "and n.nspname not in ('pg_catalog', 'information_schema') "
        "and has_function_privilege('keda_scaler', p.oid, 'execute') order by 1"
    ).fetchall()
    assert callable_definers == [{"proname": "edit_request_autoscaler_counts"}]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_the_counts(
    db: psycopg.Connection[Row], as_role: Callable[..., Any], role: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_role(db, role, uuid.uuid4()) as conn:
        conn.execute("select * from public.edit_request_autoscaler_counts()")
