"""Read untrusted request bodies with a bound: refuse by ``Content-Length`` first, then count while reading."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status
from pydantic import BaseModel


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_413_CONTENT_TOO_LARGE, detail=f"the body is over {limit:,} bytes"
    )


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The body, or HTTP 413 as soon as it is known to exceed ``limit`` (nothing past it is read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="malformed Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def capped_request(request: Request, limit: int) -> Request:
    """The same request with its body read under ``limit`` (HTTP 413 past it), for parsers that read
    the body themselves (JSON, Starlette's multipart parser)."""
    body = await read_capped_body(request, limit)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body read by hand, with the model's nested ``$defs`` inlined
    (OpenAPI resolves ``#/$defs/...`` against the whole document, where they do not exist)."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
