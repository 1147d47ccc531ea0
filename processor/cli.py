"""The ``edit-processor`` command: one Typer app, one sub-command per way of running."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from processor.domain.errors import ConfigurationError, InvalidInput, ModelError, ProcessorError
from processor.domain.reasons import ReasonCode
from processor.domain.request import PARAM_FIELDS, EditParams, FieldKind
from processor.domain.rules import DeviceChoice, OutputFormat
from processor.observability.logs import configure_logging
from processor.settings import Settings, load_settings

if TYPE_CHECKING:
    import uvicorn

    from processor.core.service import ProcessorService

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Qwen-Image-Edit-2509 processor for Supabase."
)


def _print_version(wanted: bool) -> None:
    if wanted:
        import processor

        typer.echo(f"edit-processor {processor.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Qwen-Image-Edit-2509 processor for Supabase."""


@contextmanager
def exit_on_configuration_error() -> Iterator[None]:
    """A missing or malformed setting ends the command with its message and exit code 2."""
    try:
        yield
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _settings_or_exit() -> Settings:
    with exit_on_configuration_error():
        settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


@app.command()
def serve() -> None:
    """Run the HTTP app (webhook, REST API, health, metrics) and the worker in one process."""
    import uvicorn

    from processor.composition import (
        build_mcp,
        build_rest_api,
        build_service,
        check_input_limit,
        check_output_types,
        try_page,
    )
    from processor.entrypoints.http_app import create_app

    settings = _settings_or_exit()
    with exit_on_configuration_error():
        settings.require("webhook_secret")
        check_input_limit(settings)
        check_output_types(settings)
        assert settings.webhook_secret is not None
        service = build_service(settings)
        api = build_rest_api(settings, service)
    uvicorn.run(
        create_app(
            service,
            webhook_secret=settings.webhook_secret,
            metrics_token=settings.metrics_token,
            api=api,
            mcp=build_mcp(api),
            cors_origins=settings.cors_origin_list(),
            page=try_page(settings),
        ),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 15,
    )


@app.command()
def worker() -> None:
    """Run the worker alone (LISTEN and sweep): for hosts that cannot receive webhooks, and Kubernetes.

    No HTTP, unless WORKER_HEALTH_PORT is set: then only /healthz and /readyz, for probes.
    Exits with code 1 when the model cannot be loaded (so the platform restarts it)."""
    from processor.composition import build_service, check_input_limit, check_output_types
    from processor.core.service import SetupFailed

    settings = _settings_or_exit()
    with exit_on_configuration_error():
        check_input_limit(settings)
        check_output_types(settings)
        service = build_service(settings)

    async def main() -> None:
        stop = _stop_on_signals()
        if settings.worker_health_port is None:
            await service.run_until(stop)
            return
        probes = _probe_server(service, settings.host, settings.worker_health_port)
        serving = asyncio.create_task(probes.serve(), name="health-server")
        try:
            # /readyz says "stopping" (503) while the jobs drain, and /healthz answers until the end.
            await service.run_until(stop)
        finally:
            probes.should_exit = True
            await serving

    try:
        asyncio.run(main())
    except SetupFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets, on the running loop: the long-running commands stop on it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _probe_server(service: ProcessorService, host: str, port: int) -> uvicorn.Server:
    """The worker's health server (``WORKER_HEALTH_PORT``), run inside the worker's own loop."""
    import uvicorn

    from processor.entrypoints.http_app import create_health_app

    class ProbeServer(uvicorn.Server):
        # SIGTERM stays the worker's (it drains the jobs): uvicorn's own handlers would stop only
        # the server, and re-raise the signal once it stopped.
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        create_health_app(service), host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    return ProbeServer(config)


@app.command()
def webhooks() -> None:
    """Deliver completion webhooks only (no model, no worker): beside scale-to-zero workers (RunPod).

    ``serve`` and ``worker`` already deliver them; run this where no such process is always up."""
    from processor.composition import build_webhooks
    from processor.core.webhooks import run_dispatcher

    settings = _settings_or_exit()
    with exit_on_configuration_error():
        dispatcher = build_webhooks(settings.model_copy(update={"webhook_delivery": True}))
    assert dispatcher is not None

    async def main() -> None:
        stop = _stop_on_signals()
        await run_dispatcher(dispatcher, stop)

    asyncio.run(main())


@app.command()
def retention(
    once: Annotated[
        bool,
        typer.Option("--once", help="One run, then exit (for cron); else every RETENTION_INTERVAL_SECONDS."),
    ] = False,
) -> None:
    """Delete what retention says is due (docs/retention.md), through the Storage API.

    ``--once`` prints the run's counts as JSON and exits 1 when Storage or the database failed
    (nothing is lost: the next run retries). The processor already runs this on its own."""
    from processor.composition import run_retention

    settings = _settings_or_exit()

    async def forever() -> None:
        stop = _stop_on_signals()
        await run_retention(settings, stop)

    with exit_on_configuration_error():
        if not once:
            asyncio.run(forever())
            return
        report = asyncio.run(run_retention(settings))
    typer.echo(json.dumps(report.summary(), indent=2))
    if report.errors:
        raise typer.Exit(code=1)


def _fail(error: ProcessorError) -> typer.Exit:
    """Print ``error: <reason>: <message>`` and give the exit code: 2 for bad input or config, 1 otherwise."""
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1 if isinstance(error, ModelError) else 2)


_DEVICES: dict[str, DeviceChoice] = {"auto": "auto", "cuda": "cuda", "cpu": "cpu"}


def _lora_option(text: str) -> dict[str, object]:
    """``NAME`` or ``NAME=SCALE`` (``--lora``)."""
    name, _, scale = text.partition("=")
    if not scale:
        return {"name": name}
    try:
        return {"name": name, "scale": float(scale)}
    except ValueError:
        raise InvalidInput(
            f"--lora {text!r}: the scale is not a number", reason=ReasonCode.INVALID_PARAMETER
        ) from None


def edit(
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write the result: .png, .webp, .jpg or .jpeg, which sets --output-format "
            "(without a suffix: --output-format, else OUTPUT_FORMAT)."
        ),
    ],
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Input image; repeat for 2 or 3 images. Leave out to create from --base.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Hub id or local folder (default: MODEL_ID, Qwen/Qwen-Image-Edit-2509)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cuda or cpu (default: DEVICE, else auto).")
    ] = None,
    **fields: object,
) -> None:
    """Run one edit (or, without --image, create an image), write it and print its metadata as JSON.

    Bad input exits with code 2."""
    from processor.composition import build_editor, image_limits, output_encoding
    from processor.core.direct_edit import read_images, run_edit
    from processor.domain.params import params_from_mapping
    from processor.domain.sizing import ModelSizing, output_size

    try:
        overrides: dict[str, object] = {}
        if model is not None:
            overrides["model_id"] = model
        if device is not None:
            overrides["device"] = _choice(device, "--device", _DEVICES)
        settings = load_settings(**overrides)
        # The one mapping every way in shares (options are text, as a form's fields); everything it
        # and the rules refuse is refused before any image is decoded or the (slow) model loaded.
        # An option left out is absent.
        params = _format_of(out, params_from_mapping(_request_fields(fields), form=True))
        images = read_images(params, [path.read_bytes() for path in image or []], image_limits(settings))
        output_size(
            [decoded.size for decoded in images],
            ModelSizing.for_model(settings.model_id),
            params.width,
            params.height,
        )
        # One short edit: a warm-up would double its cost.
        editor = build_editor(settings.model_copy(update={"warmup": False}))
        try:
            # The direct-edit flow RunPod runs too.
            edited = run_edit(editor, images, params, output_encoding(settings))
        finally:
            editor.close()
    except ProcessorError as exc:
        raise _fail(exc) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(edited.output.data)
    metadata = {
        **edited.result.metadata(),
        **edited.output.metadata(),
        "output": str(out),
        "bytes": len(edited.output.data),
    }
    typer.echo(json.dumps(metadata, indent=2))


_SUFFIXES: Mapping[str, OutputFormat] = {".png": "png", ".webp": "webp", ".jpg": "jpeg", ".jpeg": "jpeg"}


def _format_of(out: Path, params: EditParams) -> EditParams:
    """The request with the format ``--out``'s suffix names; a suffix that names none, or another
    than ``--output-format``, is refused (never PNG bytes in ``out.gif``)."""
    if not out.suffix:
        return params
    implied = _SUFFIXES.get(out.suffix.lower())
    if implied is None:
        raise InvalidInput(
            f"--out {out.name}: {out.suffix} is not an output format; name the file {', '.join(_SUFFIXES)}",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    if params.output_format not in (None, implied):
        raise InvalidInput(
            f"--output-format {params.output_format} but --out {out.name} names {implied}; "
            "make them agree, or leave --output-format out",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    return dataclasses.replace(params, output_format=implied)


def _request_fields(options: Mapping[str, object]) -> dict[str, object]:
    """The request's fields among the command's options: those given (``--lora`` as ``{name, scale}``)."""
    fields: dict[str, object] = {}
    for item in PARAM_FIELDS:
        value = options.get(item.name)
        if value is None or value == []:
            continue
        if item.spec.kind == "loras":
            assert isinstance(value, list)
            value = [_lora_option(text) for text in value]
        fields[item.name] = value
    return fields


def _declared_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(..., **fields)`` one option per request field, from its declaration
    (``domain/request.py``): ``--negative-prompt``, ``--steps``... Left out, an option is absent and
    the declared default applies, as through every way in."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = []
    for item in PARAM_FIELDS:
        spec = item.spec
        kind: Any = _OPTION_TYPES[spec.kind]
        default = "" if item.required or item.default in (None, ()) else f" Default: {item.default!r}."
        help_text = spec.description + default
        if spec.kind == "loras":
            help_text += " An allowlisted LoRA (LORAS) as NAME or NAME=SCALE; repeat for more."
        metavar = "|".join(spec.choices) if spec.kind == "choice" else _METAVARS.get(spec.kind)
        option = typer.Option(spec.cli or f"--{item.name.replace('_', '-')}", help=help_text, metavar=metavar)
        added.append(
            inspect.Parameter(
                item.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind if item.required else kind | None, option],
                default=inspect.Parameter.empty if item.required else None,
            )
        )
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept), *added]
    )
    return command


# Numbers are read as text and converted by the one mapping (as a form's fields are), so a value that
# is not one is refused with the field's reason code, as through every other way in.
_OPTION_TYPES: Mapping[FieldKind, type] = {
    "text": str,
    "choice": str,
    "integer": str,
    "number": str,
    "loras": list[str],
    "uuid": str,
}
_METAVARS: Mapping[FieldKind, str] = {"integer": "INTEGER", "number": "NUMBER"}
app.command()(_declared_options(edit))


def _choice(value: str, option: str, choices: Mapping[str, T]) -> T:
    if value.lower() not in choices:
        raise ConfigurationError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return choices[value.lower()]


@app.command("make-tiny-model")
def make_tiny_model(
    directory: Annotated[Path, typer.Argument(help="Folder to write the model into (created if needed).")],
) -> None:
    """Build a tiny random Qwen-Image-Edit-2509 pipeline (offline, seconds) for tests and local runs."""
    from processor.adapters.diffusers.tiny_model import save_tiny_model

    typer.echo(str(save_tiny_model(directory)))


@app.command("storage-server")
def storage_server(
    database_url: Annotated[
        str, typer.Option(envvar="DATABASE_URL", help="The database holding storage.objects.")
    ],
    service_key: Annotated[
        str, typer.Option(envvar="SUPABASE_SERVICE_ROLE_KEY", help="The key that acts as service_role.")
    ],
    jwt_secret: Annotated[
        str, typer.Option(envvar="SUPABASE_JWT_SECRET", help="HS256 secret that signs user tokens.")
    ],
    root: Annotated[Path, typer.Option(help="Folder for the objects' bytes.")] = Path(".dev/objects"),
    host: Annotated[str, typer.Option(help="Interface to listen on (keep it on loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; Storage is then at http://HOST:PORT/storage/v1.")] = 54321,
) -> None:
    """Run the Supabase-Storage-compatible test server (tests and local runs only, never production)."""
    import uvicorn

    from processor.devtools.storage_server import StorageConfig, create_storage_app

    config = StorageConfig(database_url, root, service_key, jwt_secret)
    uvicorn.run(create_storage_app(config), host=host, port=port, log_config=None, access_log=False)


@app.command()
def mcp() -> None:
    """Serve the MCP tools over stdio, as the user whose access token is in MCP_ACCESS_TOKEN."""
    from processor.composition import build_stdio_mcp, check_input_limit

    settings = _settings_or_exit()
    with exit_on_configuration_error():
        check_input_limit(settings)
        server = build_stdio_mcp(settings)
    server.run("stdio")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def runpod() -> None:
    """Serve RunPod serverless jobs (the SDK reads its own flags, e.g. --test_input, from argv)."""
    import runpod as runpod_sdk

    from processor.composition import build_editor, build_runpod_handler

    settings = _settings_or_exit()
    with exit_on_configuration_error():
        editor = build_editor(settings)  # once per worker, before any job
    runpod_sdk.serverless.start({"handler": build_runpod_handler(settings, editor)})


@app.command()
def dev(
    out: Annotated[Path, typer.Option(help="Where to write the edited sample.")] = Path("edited.png"),
    prompt: Annotated[str, typer.Option(help="The edit to make.")] = "make the sky a warm sunset",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 8,
    admin_database_url: Annotated[
        str | None,
        typer.Option(help="A PostgreSQL URL allowed to create databases (default: local postgres)."),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Folder for objects and the tiny model.")] = Path(".dev"),
    keep_running: Annotated[bool, typer.Option(help="Stay up after the sample edit.")] = False,
) -> None:
    """Run everything locally (scratch database, Storage stand-in, processor) and edit a sample image."""
    from rich.console import Console

    from processor.devtools.dev import admin_url_default, run_dev

    console = Console(stderr=True)
    # The one logging set-up every command has (redacted lines, no foreign handlers); warnings only:
    # the console shows the progress, and library INFO lines (health polls) are noise here.
    configure_logging("warning", "console")
    try:
        run_dev(
            out=out,
            prompt=prompt,
            steps=steps,
            admin_url=admin_database_url or admin_url_default(workdir, console),
            workdir=workdir,
            keep_running=keep_running,
            console=console,
        )
    except Exception as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc


def main() -> None:
    app()
