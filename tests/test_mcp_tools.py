"""The MCP tools through the MCP SDK's own client: over streamable HTTP in the app, and in-process (stdio's path)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from processor.adapters.postgres.changes import PostgresRowChanges
from processor.adapters.postgres.requests import EditRequests
from processor.core.user_actions import UserActions
from processor.domain.images import ImageLimits
from processor.entrypoints.auth import TokenVerifier
from processor.entrypoints.mcp_tools import create_mcp_server
from tests.conftest import Harness, StorageServer, png_bytes


def call_over_http(harness: Harness, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    async def main() -> Any:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http,
            Client(streamable_http_client(f"{harness.served.url}/mcp", http_client=http)) as client,
        ):
            return await client.call_tool(tool, arguments)

    return asyncio.run(main())


def text_of(result: Any) -> str:
    return "".join(item.text for item in result.content if item.type == "text")


def test_edit_image_returns_the_png_and_metadata(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    user = make_user()
    token = harness.storage.token(user)
    image = base64.b64encode(png_bytes()).decode()

    result = call_over_http(
        harness,
        token,
        "edit_image",
        {"prompt": "make it blue", "image_base64": image, "num_inference_steps": 2, "seed": 4},
    )

    assert not result.is_error, text_of(result)
    [picture] = [item for item in result.content if item.type == "image"]
    assert picture.mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(picture.data))).format == "PNG"
    metadata = json.loads(text_of(result))
    assert metadata["status"] == "succeeded" and metadata["result"]["seed"] == 4

    status = call_over_http(harness, token, "get_edit_status", {"edit_id": metadata["id"]})
    assert not status.is_error
    assert status.structured_content["status"] == "succeeded"
    assert status.structured_content["output_url"].startswith(harness.storage.url)

    recent = call_over_http(harness, token, "list_recent_edits", {"limit": 5})
    assert [row["id"] for row in recent.structured_content["result"]] == [metadata["id"]]


def test_tools_refuse_a_bad_token_and_other_users_edits(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    alice, bob = make_user(), make_user()
    path = harness.upload(alice, "a.png", png_bytes())
    request_id = harness.insert(alice, [path])

    forged = call_over_http(harness, "not-a-token", "list_recent_edits", {})
    assert forged.is_error and "unauthorized" in text_of(forged)
    foreign = call_over_http(
        harness, harness.storage.token(bob), "get_edit_status", {"edit_id": str(request_id)}
    )
    assert foreign.is_error and "not_found" in text_of(foreign)
    # An object path in someone else's folder is refused by RLS.
    stolen = call_over_http(
        harness, harness.storage.token(bob), "edit_image", {"prompt": "x", "object_path": path}
    )
    assert stolen.is_error
    assert harness.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 1}


def test_stdio_server_acts_as_the_configured_user(
    start_processor: Callable[..., Harness],
    database_url: str,
    storage_server: StorageServer,
    make_user: Callable[[], uuid.UUID],
) -> None:
    harness = start_processor()  # the worker that will run the edit
    user = make_user()
    path = harness.upload(user, "in.png", png_bytes())
    server = create_mcp_server(
        UserActions(
            EditRequests(database_url),
            storage_server.adapter(),
            ImageLimits(),
            PostgresRowChanges(database_url),
        ),
        TokenVerifier(jwt_secret=storage_server.jwt_secret),
        stdio_token=storage_server.token(user),
        open_resources=True,
    )

    async def main() -> Any:
        async with Client(server) as client:
            return await client.call_tool(
                "edit_image", {"prompt": "x", "object_path": path, "num_inference_steps": 2}
            )

    result = asyncio.run(main())
    assert not result.is_error, text_of(result)
    assert json.loads(text_of(result))["status"] == "succeeded"
