"""The OpenAPI document types every answer of every route, so a client generated from it is complete.

The answers are the pydantic models of processor/entrypoints (EditView, EditAccepted, BatchView,
ErrorResponse, Readiness, Accepted); no client is generated here: `/openapi.json` is the contract
(openapi-generator, openapi-typescript or datamodel-code-generator make one from it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Harness


@pytest.fixture
def spec(start_processor: Callable[..., Harness]) -> dict[str, Any]:
    harness = start_processor(rest=True)
    document: dict[str, Any] = httpx.get(f"{harness.served.url}/openapi.json").json()
    return document


def untyped(spec: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(method, path, status) of every answer without a body schema."""
    found = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if not any(code.startswith("2") for code in responses):
                found.add((method, path, "2xx"))
            for code, response in responses.items():
                content = response.get("content") or {}
                if code == "204":
                    continue
                if not content or any(not (media.get("schema") or {}) for media in content.values()):
                    found.add((method, path, code))
    return found


def test_every_answer_has_a_schema(spec: dict[str, Any]) -> None:
    # /webhooks and /metrics included: their errors have the one error shape too.
    assert untyped(spec) == set()


def test_the_answers_of_the_rest_api_are_its_models(spec: dict[str, Any]) -> None:
    def schema(path: str, method: str, code: str) -> dict[str, Any]:
        found: dict[str, Any] = spec["paths"][path][method]["responses"][code]["content"]["application/json"][
            "schema"
        ]
        return found

    ref = "#/components/schemas/"
    assert schema("/v1/edits/{request_id}", "get", "200") == {"$ref": f"{ref}EditView"}
    assert schema("/v1/edits", "get", "200")["items"] == {"$ref": f"{ref}EditView"}
    assert schema("/v1/batches", "post", "202") == {"$ref": f"{ref}BatchView"}
    assert {"$ref": f"{ref}EditAccepted"} in schema("/v1/edits", "post", "202")["anyOf"]
    for path, operations in spec["paths"].items():
        for method in operations:
            if path.startswith("/v1/"):
                for code in ("401", "404", "422", "429"):
                    assert schema(path, method, code) == {"$ref": f"{ref}ErrorResponse"}, (method, path, code)
    view = spec["components"]["schemas"]["EditView"]
    assert {"id", "status", "progress"} <= set(view["required"])
    assert all(("type" in p or "anyOf" in p or "$ref" in p) for p in view["properties"].values())
