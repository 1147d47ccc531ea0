"""``edit-processor dev``: the whole product on one machine with PostgreSQL and nothing else.

Creates a scratch database (platform bootstrap + migrations) with the development user of
supabase/seed.sql, starts the Storage-compatible server (with a stand-in for Auth's password
sign-in beside it) and the processor (HTTP app with the REST API and the try page, worker,
LISTEN, sweep), submits a sample edit through the REST API as that user, follows it with a
progress bar and writes the result. The tiny model is used unless ``MODEL_ID`` names a real model and CUDA is
there. ``--keep-running`` leaves everything up for manual testing and prints every way in,
ready to paste. Ctrl-C or SIGTERM (``docker stop``, systemd, a supervisor) stops it, and either
way the scratch database is dropped.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import secrets
import shlex
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import psycopg
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from processor.composition import build_mcp, build_rest_api, build_service, try_page
from processor.devtools import localdb
from processor.devtools.auth_server import (
    DEV_EMAIL,
    DEV_PASSWORD,
    DEV_USER_ID,
    AuthConfig,
    auth_mount,
    create_password_user,
)
from processor.devtools.serving import ServedApp, serve_in_thread
from processor.devtools.storage_server import StorageConfig, create_storage_app
from processor.devtools.tokens import mint_token
from processor.entrypoints.http_app import create_app
from processor.entrypoints.try_page import PATH as TRY_PATH
from processor.entrypoints.try_page import DevUser
from processor.settings import Settings, load_settings

KEEP_RUNNING_TOKEN_SECONDS = 24 * 3600
# Pinned: a bare `npx @modelcontextprotocol/inspector` runs whatever version npx cached first, and
# 0.16.0 and older take `--header` for server arguments ("Arguments cannot be passed to a URL-based MCP
# server"). 2.12.0 declares Node >= 22.19 and was run with this exact line on Node 20.20 too.
MCP_INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
# Completion webhooks to a receiver on this machine: what production refuses (docs/webhooks.md).
LOOPBACK_WEBHOOK_HOSTS = ("127.0.0.1", "localhost", "::1")
LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"
"""Pages on this machine, which ``dev`` lets call its API from a browser."""


class Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C, so every clean-up runs."""


@contextmanager
def _terminate_by_unwinding() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` while the block runs (main thread only, as signals are)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sample_image() -> bytes:
    """A small picture with shapes, so the edit has something to work on."""
    image = Image.new("RGB", (512, 384), (235, 228, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 200, 472, 360), fill=(90, 140, 70))
    draw.ellipse((300, 40, 420, 160), fill=(250, 200, 60))
    draw.polygon([(80, 200), (180, 90), (280, 200)], fill=(150, 80, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _model(settings: Settings, workdir: Path, console: Console) -> tuple[str, str]:
    """The model to load and the device: the configured one on CUDA, else the tiny one on CPU."""
    import torch

    if "MODEL_ID" in os.environ and torch.cuda.is_available():
        return settings.model_id, "cuda"
    from processor.adapters.diffusers.tiny_model import save_tiny_model

    folder = workdir / "tiny-model"
    if not (folder / "model_index.json").exists():
        save_tiny_model(folder)
    console.print(
        f"[dim]No CUDA model configured: using the tiny random model in {folder} (its output is noise).[/]"
    )
    return str(folder), "cpu"


@dataclass
class DevStack:
    """What ``dev_stack`` brings up: the scratch database, "Supabase" (Storage and the Auth stand-in at
    one address) and the processor with its REST API, MCP and try page."""

    dsn: str
    supabase: ServedApp
    app: ServedApp
    settings: Settings
    service_key: str
    jwt_secret: str
    anon_key: str
    model_id: str
    device: str
    user: uuid.UUID = DEV_USER_ID

    @property
    def page_url(self) -> str:
        return f"{self.app.url}{TRY_PATH}"

    def env(self) -> dict[str, str]:
        """The settings another process needs to work on this stack (``edit-processor serve``, ``mcp``)."""
        settings = self.settings
        return {
            "DATABASE_URL": self.dsn,
            "SUPABASE_URL": self.supabase.url,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_key,
            "SUPABASE_JWT_SECRET": self.jwt_secret,
            "SUPABASE_ANON_KEY": self.anon_key,
            "METRICS_TOKEN": settings.metrics_token.get_secret_value() if settings.metrics_token else "",
            "WEBHOOK_SECRET": settings.webhook_secret.get_secret_value() if settings.webhook_secret else "",
            "MODEL_ID": self.model_id,
            "DEVICE": self.device,
        }


@contextmanager
def dev_stack(
    admin_url: str,
    workdir: Path,
    console: Console,
    *,
    model: tuple[str, str] | None = None,
    **overrides: object,
) -> Iterator[DevStack]:
    """Bring everything up (and down again, the scratch database dropped): ``run_dev``'s stack, and
    the browser test's. ``model``: (model id, device), else ``_model``'s choice; ``overrides``: settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"qep_dev_{uuid.uuid4().hex[:8]}"
    service_key = f"sb_secret_dev_{secrets.token_hex(8)}"
    jwt_secret = secrets.token_hex(32)
    # A legacy-style anon key (a JWT with role anon), as `supabase start` prints one.
    anon_key = mint_token(jwt_secret, role="anon", expires_in=10 * 365 * 24 * 3600)
    with ExitStack() as stack:
        console.print(f"[bold]Scratch database[/] {name} (platform bootstrap + migrations)")
        dsn = localdb.build_migrated_database(admin_url, name)
        stack.callback(localdb.drop_database, admin_url, name)
        allow_loopback_webhooks(dsn)
        # The user supabase/seed.sql adds, with the same email and password.
        create_password_user(dsn, DEV_USER_ID, DEV_EMAIL, DEV_PASSWORD)
        auth = AuthConfig(dsn, jwt_secret, frozenset({anon_key, service_key}))
        supabase = serve_in_thread(
            create_storage_app(
                StorageConfig(dsn, workdir / "objects", service_key, jwt_secret), beside=[auth_mount(auth)]
            )
        )
        stack.callback(supabase.stop)
        console.print(
            f"[bold]Supabase stand-ins[/] {supabase.url}: Storage at /storage/v1, "
            "Auth's password sign-in at /auth/v1/token"
        )

        base = load_settings()
        model_id, device = model or _model(base, workdir, console)
        settings = load_settings(
            **{
                "database_url": dsn,
                "supabase_url": supabase.url,
                "supabase_service_role_key": service_key,
                "supabase_jwt_secret": jwt_secret,
                "supabase_anon_key": anon_key,
                "webhook_secret": secrets.token_hex(16),
                "metrics_token": secrets.token_hex(16),
                "model_id": model_id,
                "device": device,
                "warmup": device == "cuda",
                "log_level": "warning",
                "webhook_allow_http": True,
                "webhook_allow_private_addresses": True,
                "webhook_allowed_ports": "*",  # a local receiver listens wherever its framework put it
                **overrides,
            }
        )
        service = build_service(settings)
        api = build_rest_api(settings, service)
        page = try_page(settings)
        app = serve_in_thread(
            create_app(
                service,
                webhook_secret=settings.webhook_secret,
                metrics_token=settings.metrics_token,
                api=api,
                mcp=build_mcp(api),
                # Its own page is same-origin; any page on this machine (a dev server on localhost:5173)
                # may call it too, and so may CORS_ORIGINS.
                cors_origins=base.cors_origin_list(),
                cors_origin_regex=LOOPBACK_ORIGINS,
                # dev fills its user in on the page (never a production page: `serve` has no DevUser).
                page=dataclasses.replace(page, dev_user=DevUser(DEV_EMAIL, DEV_PASSWORD)) if page else None,
            )
        )
        stack.callback(app.stop)
        console.print(f"[bold]Processor[/] {app.url} (REST /v1/edits, /readyz, /metrics, /docs)")
        if page is not None:
            console.print(
                f"[bold]Try it in a browser[/] {app.url}{TRY_PATH} (signed in as {DEV_EMAIL} / {DEV_PASSWORD})"
            )
        console.print(
            "[bold]Webhooks[/] completion webhooks may go to http:// receivers on this machine "
            f"({', '.join(LOOPBACK_WEBHOOK_HOSTS)}): dev only, production refuses them"
        )
        yield DevStack(dsn, supabase, app, settings, service_key, jwt_secret, anon_key, model_id, device)


def run_dev(
    *, out: Path, prompt: str, steps: int, admin_url: str, workdir: Path, keep_running: bool, console: Console
) -> None:
    """Bring everything up, run one edit through the REST API, write ``out``."""
    with _terminate_by_unwinding(), dev_stack(admin_url, workdir, console) as stack:
        token = mint_token(stack.jwt_secret, sub=stack.user)
        _submit_and_follow(stack.app.url, token, prompt, steps, out, console)

        if keep_running:
            sample = workdir / "sample.png"
            sample.write_bytes(sample_image())
            token = mint_token(stack.jwt_secret, sub=stack.user, expires_in=KEEP_RUNNING_TOKEN_SECONDS)
            console.print(
                "\n[bold]Running.[/] Every way in, ready to paste (Ctrl-C or SIGTERM stops and cleans up):"
            )
            for line in ways_in(stack.app.url, token, stack.env(), sample, stack.user):
                # soft_wrap: a wrapped token cannot be pasted; markup off: the lines hold brackets.
                console.print(line, soft_wrap=True, markup=False, highlight=False)
            try:
                threading.Event().wait()
            except (KeyboardInterrupt, Terminated):
                console.print("stopping")


def allow_loopback_webhooks(dsn: str) -> None:
    """Let completion webhooks reach a receiver on this machine: http://, loopback addresses and any
    port, in the database's policy (the processor's settings say the same). Only ever on dev's scratch
    database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update public.edit_webhook_settings "
            "set allow_http = true, allow_private_addresses = true, allow_any_port = true"
        )
        for host in LOOPBACK_WEBHOOK_HOSTS:
            conn.execute(
                "insert into public.edit_webhook_allowed_hosts (host, note) values (%s, 'edit-processor dev')",
                (host,),
            )


def ways_in(url: str, token: str, env: dict[str, str], sample: Path, user: uuid.UUID) -> list[str]:
    """Shell lines that use each way in against the running processor (one line each: copy-paste safe)."""
    q = shlex.quote
    auth = '-H "Authorization: Bearer $TOKEN"'
    webhook_body = '{"type":"INSERT","table":"edit_requests","schema":"public","record":{"id":"<id>"}}'
    sign_in = json.dumps({"email": DEV_EMAIL, "password": DEV_PASSWORD})
    return [
        f"export TOKEN={q(token)}",
        "export " + " ".join(f"{name}={q(value)}" for name, value in env.items()),
        f"# In a browser: {url}{TRY_PATH} (sign in as {DEV_EMAIL} / {DEV_PASSWORD}, filled in)",
        "# Sign in as that user, as against Supabase Auth (its access_token is a $TOKEN too):",
        f'curl -s "$SUPABASE_URL/auth/v1/token?grant_type=password" -H "apikey: $SUPABASE_ANON_KEY" '
        f"-H 'content-type: application/json' -d {q(sign_in)}",
        "# REST, JSON or multipart (add ?wait=true to get the image back):",
        f"curl -s {auth} -F prompt='make it blue' -F image=@{q(str(sample))} {url}/v1/edits",
        f"curl -s {auth} {url}/v1/edits/<id>",
        f"curl -sN {auth} {url}/v1/edits/<id>/events",
        "# A browser's EventSource cannot send the header: it opens the events_url of a stream token",
        f"curl -s -X POST {auth} {url}/v1/edits/<id>/stream-token",
        "# MCP (streamable HTTP), with the official inspector, pinned (it asks for Node 22.19+; runs on Node 20.20 too):",
        f"npx -y {MCP_INSPECTOR} --cli {url}/mcp --transport http {auth.replace('-H', '--header')} --method tools/list",
        "# MCP over stdio for a desktop client: edit-processor mcp (with MCP_ACCESS_TOKEN=$TOKEN and the exports above)",
        "# Completion webhooks to a receiver here (http://127.0.0.1:<port>/...: allowed in dev only), as the user:",
        f"psql \"$DATABASE_URL\" -c \"insert into edit_webhook_endpoints (user_id, url) values ('{user}', 'http://127.0.0.1:9000/hook') returning id, secret\"",
        "# then name it: add -F webhook_endpoint_id=<endpoint id> to the first curl line",
        "# Database webhook (what pg_net sends):",
        f'curl -s -X POST -H "X-Webhook-Secret: $WEBHOOK_SECRET" -H "Content-Type: application/json" -d {q(webhook_body)} {url}/webhooks/edit-requests',
        "# RunPod handler, locally (SDK test mode):",
        "edit-processor runpod --test_input "
        + q(json.dumps({"input": {"prompt": "make it blue", "num_inference_steps": 4}})),
        "# One-off edit without the database:",
        f"edit-processor edit --image {q(str(sample))} --prompt 'make it blue' --steps 4 --out edited-cli.png",
        f'# Health and metrics: curl -s {url}/readyz; curl -s -H "Authorization: Bearer $METRICS_TOKEN" {url}/metrics',
    ]


def _submit_and_follow(url: str, token: str, prompt: str, steps: int, out: Path, console: Console) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while client.get("/readyz").status_code != 200:
            threading.Event().wait(0.2)
        created = client.post(
            "/v1/edits",
            json={
                "prompt": prompt,
                "image": base64.b64encode(sample_image()).decode(),
                "num_inference_steps": steps,
            },
        )
        created.raise_for_status()
        request_id = created.json()["id"]
        console.print(f"[bold]Submitted[/] {request_id}: {prompt!r}, {steps} steps")
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
        )
        final: dict[str, object] = {}
        with (
            Progress(*columns, console=console) as progress,
            client.stream("GET", f"/v1/edits/{request_id}/events", timeout=None) as events,
        ):
            task = progress.add_task("queued", total=1.0)
            for line in events.iter_lines():
                if line.startswith("data: "):
                    final = json.loads(line[6:])
                    progress.update(
                        task, completed=float(str(final["progress"])), description=str(final["status"])
                    )
        if final.get("status") != "succeeded":
            raise RuntimeError(f"the edit ended {final.get('status')}: {final.get('error')}")
        view = client.get(f"/v1/edits/{request_id}").json()
        out.write_bytes(httpx.get(view["output_url"]).content)
        console.print(
            f"[bold green]Done[/] in {view['result']['timings']['total']:.2f} s of model time → {out}"
        )


def admin_url_default(workdir: Path, console: Console) -> str:
    """``TEST_ADMIN_DATABASE_URL``, else the local server, else an embedded PostgreSQL in ``workdir``
    (left running, so the next run starts in well under a second)."""
    server = localdb.ensure_admin_url(workdir / "postgres")
    console.print(f"[bold]PostgreSQL[/] {server.source}")
    return server.url
