"""Whatever arrives over HTTP, the service answers with a client error, never a 500.

Hypothesis throws arbitrary JSON and near-miss shapes at the webhook and the REST API;
schemathesis walks every operation of the app's own OpenAPI schema. All run against
the real app, database and Storage stand-in.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import WEBHOOK_SECRET, Harness, png_bytes

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


@pytest.fixture
def user_headers(api: Harness, make_user: Callable[[], uuid.UUID]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.storage.token(make_user())}", "X-Webhook-Secret": WEBHOOK_SECRET}


def assert_client_error_shape(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.request.url.path.startswith("/v1/"):
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str)


webhook_shapes = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["INSERT", "UPDATE", "DELETE"]) | json_values,
        "table": st.just("edit_requests") | json_values,
        "schema": st.just("public") | json_values,
        "record": st.fixed_dictionaries({}, optional={"id": st.uuids().map(str) | json_values}) | json_values,
        "old_record": json_values,
    },
)


def test_webhook_answers_any_body_without_a_server_error(api: Harness) -> None:
    @FUZZ
    @given(body=webhook_shapes | json_values)
    def check(body: Any) -> None:
        response = httpx.post(
            f"{api.served.url}/webhooks/edit-requests",
            content=json.dumps(body),
            headers={"X-Webhook-Secret": WEBHOOK_SECRET, "Content-Type": "application/json"},
        )
        assert response.status_code in (202, 422), response.text

    check()
    # The fuzzing woke the worker with random ids: it still processes a real request.
    assert api.served.url and httpx.get(f"{api.served.url}/readyz").status_code == 200


def test_webhook_without_the_secret_refuses_any_body(api: Harness) -> None:
    # Header values as HTTP allows them (visible ASCII): others never reach the app at all.
    header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)

    @FUZZ
    @given(body=webhook_shapes | json_values, secret=st.none() | header_text)
    def check(body: Any, secret: str | None) -> None:
        headers = {} if secret is None else {"X-Webhook-Secret": secret}
        if secret == WEBHOOK_SECRET:
            return
        response = httpx.post(f"{api.served.url}/webhooks/edit-requests", json=body, headers=headers)
        assert response.status_code == 401, response.text

    check()


edit_bodies = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=30) | json_values,
        "image": st.sampled_from([base64.b64encode(png_bytes()).decode(), "", "not base64!", "data:,"])
        | json_values,
        "images": st.lists(st.just(base64.b64encode(png_bytes()).decode()) | st.text(max_size=8), max_size=5)
        | json_values,
        "negative_prompt": st.text(max_size=10) | json_values,
        "num_inference_steps": st.integers(-5, 120) | json_values,
        "true_cfg_scale": st.floats(allow_nan=False, allow_infinity=False) | json_values,
        "guidance_scale": st.floats(allow_nan=False, allow_infinity=False) | json_values,
        "seed": st.integers() | json_values,
    },
)


def test_rest_create_answers_any_body_without_a_server_error(
    api: Harness, user_headers: dict[str, str]
) -> None:
    created: list[str] = []

    @FUZZ
    @given(body=edit_bodies | json_values)
    def check(body: Any) -> None:
        response = httpx.post(
            f"{api.served.url}/v1/edits",
            content=json.dumps(body),
            headers={**user_headers, "Content-Type": "application/json"},
        )
        assert_client_error_shape(response)
        assert response.status_code in (202, 422), response.text
        if response.status_code == 202:
            created.append(response.json()["id"])

    check()
    # Every accepted request is a real row, and every refused one left none behind.
    count = api.db.execute("select count(*) as n from edit_requests").fetchone()
    assert count == {"n": len(created)}


def test_rest_multipart_answers_any_form_without_a_server_error(
    api: Harness, user_headers: dict[str, str]
) -> None:
    @FUZZ
    @given(
        fields=st.dictionaries(
            st.sampled_from(["prompt", "seed", "num_inference_steps", "x"]), st.text(max_size=20)
        ),
        files=st.lists(st.sampled_from([png_bytes(), b"", b"GIF89a", b"\x89PNG\r\n\x1a\n"]), max_size=4),
    )
    def check(fields: dict[str, str], files: list[bytes]) -> None:
        response = httpx.post(
            f"{api.served.url}/v1/edits",
            data=fields,
            files=[("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)] or None,
            headers=user_headers,
        )
        assert_client_error_shape(response)

    check()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_every_operation_of_the_openapi_schema_holds(
    api: Harness, user_headers: dict[str, str], mode: schemathesis.GenerationMode
) -> None:
    # Strategies per operation rather than schemathesis' pytest plugin, which does not
    # support pytest 9 yet; the checks are schemathesis' own.
    schema = schemathesis.openapi.from_url(f"{api.served.url}/openapi.json")
    # The user's token is sent with every case (user_headers): schemathesis must neither make up nor drop
    # the documented bearer header (a dropped one, sent anyway, reads as invalid data accepted).
    schema.config.generation.update(with_security_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations()]
    exercised = set()
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy(mode))
        def check(case: schemathesis.Case) -> None:
            if isinstance(case.query, dict) and case.query.get("wait") not in (None, False, "false"):
                case.query["timeout"] = 5  # waiting is tested elsewhere; fuzzing need not wait long
            response = case.call(base_url=api.served.url, headers=user_headers, timeout=30)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"
            case.validate_response(
                response,
                checks=[response_schema_conformance, status_code_conformance, negative_data_rejection],
            )

        try:
            check()
        except Unsatisfiable:
            # Nothing to break in an operation without parameters or body (``/healthz``).
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path
            continue
        exercised.add(operation.path)
    assert {"/v1/edits", "/v1/edits/{request_id}", "/webhooks/edit-requests"} <= exercised
