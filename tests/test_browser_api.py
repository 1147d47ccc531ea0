"""What a browser app needs of the REST API: CORS for the operator's origins, an event stream an
``EventSource`` can open (a stream token, never the access token in a URL), an OpenAPI document
whose "Authorize" works with docs pages served offline, a paged list, and live previews everywhere."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from processor.domain.rules import WAITS_PER_USER
from processor.domain.users import User
from processor.entrypoints import rest as rest_module
from processor.entrypoints.http_app import redact_stream_tokens_in_access_logs
from processor.entrypoints.stream_tokens import StreamTokens
from tests.conftest import GatedEditor, Harness, png_bytes, wait_for
from tests.test_mcp_tools import call_over_http

APP = "https://app.example.com"


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def submit(harness: Harness, user: uuid.UUID, steps: int = 2) -> str:
    body = {
        "prompt": "make it blue",
        "image": base64.b64encode(png_bytes()).decode(),
        "num_inference_steps": steps,
    }
    response = httpx.post(
        f"{harness.served.url}/v1/edits", json=body, headers=auth(harness, user), timeout=60
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def events(url: str, headers: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    with httpx.stream("GET", url, headers=headers or {}, timeout=60) as stream:
        assert stream.status_code == 200, stream.read()
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                yield name, json.loads(line[6:])


async def put_object(harness: Harness, bucket: str, path: str, data: bytes) -> None:
    storage = harness.storage.adapter()
    await storage.open()
    try:
        await storage.upload(bucket, path, data, content_type="image/png")
    finally:
        await storage.close()


# --- CORS -------------------------------------------------------------------------------------------


def test_the_operators_origins_may_call_the_api_from_a_page(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, cors_origins=f"{APP}, https://other.example.com/")
    user = make_user()
    preflight = httpx.options(
        f"{harness.served.url}/v1/edits",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "access-control-allow-credentials" not in preflight.headers  # a bearer header, no cookies

    listed = httpx.get(f"{harness.served.url}/v1/edits", headers={**auth(harness, user), "Origin": APP})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == APP
    exposed = {h.strip().lower() for h in listed.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "location", "idempotent-replayed", "link"} <= exposed
    # Errors too carry the headers: a page can read a 401's body.
    refused = httpx.get(f"{harness.served.url}/v1/edits", headers={"Origin": APP})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP

    stranger = httpx.get(
        f"{harness.served.url}/v1/edits", headers={**auth(harness, user), "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_no_origin_is_allowed_unless_configured(start_processor: Callable[..., Harness]) -> None:
    harness = start_processor(rest=True)
    preflight = httpx.options(
        f"{harness.served.url}/v1/edits", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405 and preflight.json()["error"]["code"] == "method_not_allowed"


def test_a_malformed_origin_setting_is_refused() -> None:
    from processor.domain.errors import ConfigurationError
    from processor.settings import load_settings

    with pytest.raises(ConfigurationError, match="CORS_ORIGINS"):
        load_settings(cors_origins="https://app.example.com/path")
    assert load_settings(cors_origins="http://[::1]:5173, *").cors_origin_list() == ("http://[::1]:5173", "*")


# --- Stream tokens ----------------------------------------------------------------------------------


@pytest.fixture
def gated(start_processor: Callable[..., Harness], tiny_editor: Any) -> Iterator[tuple[Harness, GatedEditor]]:
    editor = GatedEditor(tiny_editor)
    try:
        yield start_processor(rest=True, editor=editor), editor
    finally:
        editor.release.set()


def test_a_browser_opens_the_stream_with_a_stream_token_and_sees_previews_and_the_output(
    gated: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, editor = gated
    user = make_user()
    request_id = submit(harness, user, steps=4)
    minted = httpx.post(
        f"{harness.served.url}/v1/edits/{request_id}/stream-token", headers=auth(harness, user)
    )
    assert minted.status_code == 200, minted.text
    token = minted.json()
    assert token["events_url"].endswith(f"/v1/edits/{request_id}/events?token={token['token']}")

    wait_for(editor.reached.is_set, what="the edit to start")
    preview_path = f"{user}/{request_id}.preview.png"
    asyncio.run(put_object(harness, "edit-outputs", preview_path, png_bytes()))
    harness.db.execute(
        "update edit_requests set preview_path = %s, preview_step = 1 where id = %s",
        (preview_path, request_id),
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    previewed = False
    for name, data in events(token["events_url"]):  # no header: what EventSource sends
        seen.append((name, data))
        # Once: each event is the row at one moment. When the worker's progress heartbeat lands
        # while we check, the stream sends the row again, still with this preview, and we read that
        # event after our clear below, when GET rightly shows no preview any more.
        if data.get("preview_step") == 1 and not previewed:
            previewed = True
            assert httpx.get(data["preview_url"]).status_code == 200
            # The same preview through GET and MCP.
            view = httpx.get(
                f"{harness.served.url}/v1/edits/{request_id}", headers=auth(harness, user)
            ).json()
            assert view["preview_step"] == 1 and httpx.get(view["preview_url"]).status_code == 200
            status = call_over_http(
                harness, harness.storage.token(user), "get_edit_status", {"edit_id": request_id}
            )
            assert status.structured_content["preview_step"] == 1 and status.structured_content["preview_url"]
            harness.db.execute(
                "update edit_requests set preview_path = null, preview_step = null where id = %s",
                (request_id,),
            )
            editor.release.set()
    assert previewed, seen
    name, done = seen[-1]
    assert name == "done" and done["status"] == "succeeded", seen
    assert httpx.get(done["output_url"]).content.startswith(b"\x89PNG")


def test_a_stream_token_opens_that_stream_only_and_not_for_long(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    alice, bob = make_user(), make_user()
    mine, other = submit(harness, alice), submit(harness, alice)
    url = harness.served.url
    assert httpx.post(f"{url}/v1/edits/{mine}/stream-token", headers=auth(harness, bob)).status_code == 404
    token = httpx.post(f"{url}/v1/edits/{mine}/stream-token", headers=auth(harness, alice)).json()["token"]

    def refused(response: httpx.Response) -> bool:
        return response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"

    assert refused(httpx.get(f"{url}/v1/edits/{other}/events", params={"token": token}))  # another request
    assert refused(httpx.get(f"{url}/v1/edits/{mine}", headers={"Authorization": f"Bearer {token}"}))
    assert refused(httpx.get(f"{url}/v1/edits/{mine}/events", params={"token": harness.storage.token(alice)}))
    key = harness.settings.supabase_service_role_key
    assert key is not None
    stale = StreamTokens.derived_from(key.get_secret_value(), clock=lambda: time.time() - 120)
    old = stale.mint(User(alice, {}), uuid.UUID(mine)).token
    assert refused(httpx.get(f"{url}/v1/edits/{mine}/events", params={"token": old}))
    # Never past the access token it was minted with.
    short = StreamTokens.derived_from(key.get_secret_value()).mint(
        User(alice, {"exp": time.time() + 5}), uuid.UUID(mine)
    )
    assert short.expires_at.timestamp() <= time.time() + 5


def test_no_access_log_line_shows_a_stream_token(caplog: pytest.LogCaptureFixture) -> None:
    redact_stream_tokens_in_access_logs()
    redact_stream_tokens_in_access_logs()  # once is enough, twice is harmless
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5",
            "GET",
            "/v1/edits/x/events?a=1&token=eyJ.secret.sig",
            "1.1",
            200,
        )
    (line,) = [record.getMessage() for record in caplog.records]
    assert "eyJ" not in line and "token=[redacted]" in line and "a=1" in line


# --- OpenAPI and its pages ----------------------------------------------------------------------------


def test_the_openapi_document_has_the_bearer_scheme_and_the_docs_work_offline(
    start_processor: Callable[..., Harness],
) -> None:
    harness = start_processor(rest=True)
    spec = httpx.get(f"{harness.served.url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["streamToken"]["in"] == "query" and schemes["streamToken"]["name"] == "token"
    assert spec["paths"]["/v1/edits"]["post"]["security"] == [{"bearerAuth": []}]
    assert {"streamToken": []} in spec["paths"]["/v1/edits/{request_id}/events"]["get"]["security"]
    assert "Idempotency-Key" in [p["name"] for p in spec["paths"]["/v1/edits"]["post"]["parameters"]]
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(f"{harness.served.url}{page}").text
        assert "cdn." not in html and "googleapis" not in html, page
        src = next(part.split('"')[0] for part in html.split('src="')[1:] if asset in part.split('"')[0])
        script = httpx.get(f"{harness.served.url}{src}")
        assert script.status_code == 200 and len(script.content) > 100_000, page


# --- The list ------------------------------------------------------------------------------------------


def test_the_list_pages_newest_first_and_filters_by_status(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    user = make_user()
    made = [submit(harness, user) for _ in range(5)]
    for request_id in made:
        harness.wait_status(uuid.UUID(request_id), "succeeded")
    url = f"{harness.served.url}/v1/edits"
    first = httpx.get(url, params={"limit": 2}, headers=auth(harness, user))
    assert first.status_code == 200
    seen = [item["id"] for item in first.json()]
    following = first.headers["link"]
    while following:
        link = following.split(";")[0].strip("<>")
        page = httpx.get(link, headers=auth(harness, user))
        seen += [item["id"] for item in page.json()]
        following = page.headers.get("link", "")
    assert seen == list(reversed(made))
    assert all(httpx.get(item["output_url"]).status_code == 200 for item in first.json())
    assert (
        httpx.get(url, params={"status": ["queued", "processing"]}, headers=auth(harness, user)).json() == []
    )
    assert len(httpx.get(url, params={"status": "succeeded"}, headers=auth(harness, user)).json()) == 5
    bad = httpx.get(url, params={"status": "done"}, headers=auth(harness, user))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"
    stranger = httpx.get(url, params={"before": made[0]}, headers=auth(harness, make_user()))
    assert stranger.status_code == 404


def test_a_quiet_stream_sends_keepalives_and_gives_its_place_back(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A queued request may sit for minutes; proxies close a connection that stays silent that long.
    monkeypatch.setattr(rest_module, "SSE_KEEPALIVE_SECONDS", 0.2)
    harness = start_processor(rest=True)
    user = make_user()
    request_id = harness.insert(user, [f"{user}/never-uploaded.png"])  # awaiting_image forever
    url = f"{harness.served.url}/v1/edits/{request_id}/events"

    def keepalive_seen() -> bool:
        with httpx.stream("GET", url, headers=auth(harness, user), timeout=30) as stream:
            if stream.status_code == 429:  # the last stream's place is not given back yet
                return False
            lines = stream.iter_lines()
            assert next(lines) == "event: progress"
            assert next(line for line in lines if line.startswith(":")) == ": keep-alive"
            return True

    # One more than a user may hold at once: each closed stream gives its place back.
    for _ in range(WAITS_PER_USER + 1):
        wait_for(keepalive_seen, what="a stream with a keep-alive")
