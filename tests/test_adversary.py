"""A standing adversary: Hypothesis sends generated requests through every way in and holds them to
one verdict (issue 22).

Each example is one edit request's fields, sent as an app's row insert (as PostgREST makes it:
``json_populate_record`` as the user), as ``POST /v1/edits`` (JSON), as MCP's ``edit_image`` (JSON-RPC
sent as text) and as a RunPod job, and must get the same verdict from each: accepted by all, or
refused by all with the same reason code. None may answer a 5xx or an error outside the API's shape.
Bodies of the wrong types (any JSON where a field is declared) go through the ways that read JSON
themselves (REST, MCP, RunPod; the row insert is PostgREST's conversion, not ours), and arbitrary
arguments through every MCP tool and the RunPod handler.

Quick and not flaky under load: a bounded number of examples (``ADVERSARY_EXAMPLES``, 25 by
default), no deadline, ``derandomize`` (the same examples on every run, in CI too) and no example
database. Nothing runs the model: the editor gets a cancel that is already set (``CancelledEditor``
of the parity test), so an accepted request stops right after the engine's own checks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.composition import build_runpod_handler
from processor.domain import rules
from processor.domain.errors import InvalidInput
from processor.domain.params import check_request, params_from_mapping
from processor.domain.reasons import QUOTA_SQLSTATE, ReasonCode, reason_for_constraint
from processor.domain.request import PARAM_FIELDS, DeclaredField
from processor.settings import load_settings
from tests.conftest import Harness, acting_as, png_bytes
from tests.test_hostile_json import PARSE_ERROR, call_tool
from tests.test_rule_parity import CancelledEditor

ADVERSARY = settings(
    max_examples=int(os.environ.get("ADVERSARY_EXAMPLES", "25")),
    deadline=None,
    derandomize=os.environ.get("ADVERSARY_RANDOM") is None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
IMAGE = base64.b64encode(png_bytes()).decode()
FIELDS = [item for item in PARAM_FIELDS if item.name not in ("speed", "loras")]
"""Fields whose rules hold in every deployment (a speed preset or a LoRA depends on what this one has)."""
KNOWN_CODES = {str(code) for code in ReasonCode}


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    code: str | None = None
    """The reason of a refusal; None where the way in names none (a type PostgreSQL cannot convert)."""

    def __str__(self) -> str:
        return "accepted" if self.accepted else f"refused:{self.code or '?'}"


ACCEPTED = Verdict(True)


def faults(body: dict[str, Any]) -> set[str]:
    """The reason of each field of ``body`` that is wrong on its own (width and height together), by
    the domain's rules: the codes a refusal may give when more than one field is wrong (each way in
    checks in its own order: SQL's CHECKs by constraint name, the domain by declaration)."""
    groups = [("width", "height"), *((name,) for name in body if name not in ("width", "height"))]
    codes = set() if "prompt" in body else {str(ReasonCode.INVALID_PROMPT)}  # required
    for group in groups:
        values = {name: body[name] for name in group if name in body}
        if not values:
            continue
        try:
            check_request(params_from_mapping({"prompt": "make it blue", **values}), 1)
        except InvalidInput as exc:
            codes.add(str(exc.reason))
    return codes


def agree(verdicts: dict[str, Verdict], body: dict[str, Any], also: set[str] | None = None) -> bool:
    """One verdict: all accepted, or all refused with one code (a way that names no code agrees with
    any); where several things are wrong (the fields, and ``also``), each code one of theirs."""
    if len({v.accepted for v in verdicts.values()}) > 1:
        return False
    codes = {v.code for v in verdicts.values() if v.code is not None}
    wrong = faults(body) | (also or set())
    return len(codes) <= 1 if len(wrong) <= 1 else codes <= wrong


# --- Values ------------------------------------------------------------------------------------------

TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
"""Unicode text a row can hold (no NUL, no lone surrogates: those are test_hostile_json's)."""
EDGE_TEXTS = [
    "",
    " ",
    "\t\n",
    "x" * rules.MAX_PROMPT_BYTES,
    "x" * (rules.MAX_PROMPT_BYTES + 1),
    "é" * (rules.MAX_PROMPT_BYTES // 2),
    "é" * (rules.MAX_PROMPT_BYTES // 2 + 1),
    "\ufb2c" * (rules.MAX_PROMPT_BYTES // 6 + 1),
    "e\u0301" * (rules.MAX_PROMPT_BYTES // 2),
    "\U00020000" * (rules.MAX_PROMPT_BYTES // 4 + 1),
    "#ffffff",
    "#FFFFFF",
    "#fffff",
    "#gggggg",
    "red",
]


def integers(item: DeclaredField) -> st.SearchStrategy[Any]:
    low = int(item.spec.minimum) if item.spec.minimum is not None else 0
    high = int(item.spec.maximum) if item.spec.maximum is not None else 2**31
    edges = [low - 1, low, high, high + 1, 0, -1, 2**31, 2**63]
    near = st.integers(low - 3, min(high + 3, low + 200))
    if item.spec.multiple_of:
        near = near | st.integers(low // 16, min(high, 2048) // 16).map(lambda n: n * 16)
    return st.sampled_from(edges) | near | st.integers(-(2**70), 2**70)


def numbers(item: DeclaredField) -> st.SearchStrategy[Any]:
    high = float(item.spec.maximum or 1)
    edges = [0.0, -0.0, high, high + 1e-6, -1e-6, 1.0, 1e-300, 1e-40, 5e-324, 1e300]
    return st.sampled_from(edges) | st.floats(-1.0, high + 5.0, allow_nan=False)


def typed(item: DeclaredField) -> st.SearchStrategy[Any]:
    """Values of the field's declared kind, both sides of its bounds."""
    spec = item.spec
    strategy: st.SearchStrategy[Any]
    if spec.kind == "text":
        strategy = st.sampled_from(EDGE_TEXTS) | st.text(TEXT, max_size=40)
    elif spec.kind == "integer":
        strategy = integers(item)
    elif spec.kind == "number":
        strategy = numbers(item)
    elif spec.kind == "choice":
        strategy = st.sampled_from([*spec.choices, "", "PNG", "jpg", "plasma"])
    else:
        raise AssertionError(item.name)
    return strategy | st.none() if spec.nullable else strategy


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(TEXT, max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

WELL_TYPED = st.fixed_dictionaries(
    {"prompt": typed(FIELDS[0]) | st.just("make it blue")},
    optional={item.name: typed(item) for item in FIELDS[1:]},
)
ILL_TYPED = st.fixed_dictionaries(
    {"prompt": st.just("make it blue") | JSON_VALUES},
    optional={item.name: typed(item) | JSON_VALUES for item in FIELDS[1:]},
)


# --- The ways in -------------------------------------------------------------------------------------


def via_row(db: psycopg.Connection[dict[str, Any]], user: uuid.UUID, body: dict[str, Any]) -> Verdict:
    """As PostgREST inserts an app's JSON: ``json_populate_record`` as the user."""
    values = {**body, "input_paths": [f"{user}/in.png"]}
    names = ", ".join(values)
    try:
        with acting_as(db, "authenticated", user) as conn:
            conn.execute(
                f"insert into edit_requests ({names}) "
                f"select {names} from json_populate_record(null::public.edit_requests, %s::json)",
                (json.dumps(values),),
            )
    except psycopg.errors.CheckViolation as exc:
        return Verdict(False, str(reason_for_constraint(exc.diag.constraint_name)))
    except (psycopg.errors.DataError, psycopg.errors.NotNullViolation):
        return Verdict(False)  # PostgREST's own 400: a value the column cannot hold
    except psycopg.Error as exc:
        if exc.sqlstate != QUOTA_SQLSTATE:
            raise
        return Verdict(False, str(ReasonCode.QUOTA_EXCEEDED))
    return ACCEPTED


def via_rest(api: Harness, token: str, body: dict[str, Any]) -> Verdict:
    response = httpx.post(
        f"{api.served.url}/v1/edits",
        content=json.dumps({**body, "images": [IMAGE]}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code < 500, response.text
    if response.status_code == 202:
        return ACCEPTED
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] in KNOWN_CODES, response.text
    assert response.status_code in (400, 422), response.text
    return Verdict(False, error["code"])


def via_mcp(api: Harness, token: str, body: dict[str, Any]) -> Verdict:
    arguments = {**body, "image_base64": IMAGE, "timeout_seconds": 0}
    answer = call_tool(api, token, "edit_image", json.dumps(arguments))
    if answer in ("accepted", ReasonCode.CANCELED):  # the harness's worker stops it at once
        return ACCEPTED
    assert answer in KNOWN_CODES, answer
    return Verdict(False, answer)


def via_runpod(handler: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> Verdict:
    output = asyncio.run(handler({"id": "adversary", "input": {**body, "images": [IMAGE]}}))
    code = output.get("error_code")
    if code == ReasonCode.CANCELED:
        return ACCEPTED
    assert code in KNOWN_CODES, output
    return Verdict(False, str(code))


@pytest.fixture
def cancelled_editor(tiny_editor: Any) -> CancelledEditor:
    return CancelledEditor(tiny_editor)


@pytest.fixture
def api(start_processor: Callable[..., Harness], cancelled_editor: CancelledEditor) -> Iterator[Harness]:
    yield start_processor(rest=True, editor=cancelled_editor)


@pytest.fixture
def runpod(cancelled_editor: CancelledEditor) -> Callable[[dict[str, Any]], Any]:
    return build_runpod_handler(load_settings(), cancelled_editor, report=lambda job, update: None)


# --- Properties --------------------------------------------------------------------------------------


def test_every_way_in_gives_one_verdict_for_any_request(
    api: Harness,
    make_user: Callable[[], uuid.UUID],
    runpod: Callable[[dict[str, Any]], Any],
) -> None:
    @ADVERSARY
    @given(body=WELL_TYPED)
    def check(body: dict[str, Any]) -> None:
        # A user per way: one way's accepted request does not count against the next one's limits.
        row_user, rest_user, mcp_user = make_user(), make_user(), make_user()
        verdicts = {
            "row": via_row(api.db, row_user, body),
            "rest": via_rest(api, api.storage.token(rest_user), body),
            "mcp": via_mcp(api, api.storage.token(mcp_user), body),
            "runpod": via_runpod(runpod, body),
        }
        assert agree(verdicts, body), (body, {way: str(v) for way, v in verdicts.items()})
        seen[str(next(iter(verdicts.values()))).split(":")[0]] += 1

    seen: Counter[str] = Counter()
    check()
    assert seen["accepted"] and seen["refused"], seen  # both sides of the rules were exercised


def test_the_ways_that_read_json_agree_on_values_of_any_type(
    api: Harness,
    make_user: Callable[[], uuid.UUID],
    runpod: Callable[[dict[str, Any]], Any],
) -> None:
    @ADVERSARY
    @given(body=ILL_TYPED)
    def check(body: dict[str, Any]) -> None:
        rest_user, mcp_user = make_user(), make_user()
        verdicts = {
            "rest": via_rest(api, api.storage.token(rest_user), body),
            "mcp": via_mcp(api, api.storage.token(mcp_user), body),
            "runpod": via_runpod(runpod, body),
        }
        assert agree(verdicts, body), (body, {way: str(v) for way, v in verdicts.items()})
        seen[str(next(iter(verdicts.values()))).split(":")[0]] += 1

    seen: Counter[str] = Counter()
    check()
    assert seen["accepted"] and seen["refused"], seen  # both sides of the rules were exercised


def batch_via_row(
    db: psycopg.Connection[dict[str, Any]], user: uuid.UUID, body: dict[str, Any], shape: tuple[int, int]
) -> Verdict:
    images, references = shape
    values = {
        **body,
        "input_paths": [f"{user}/in{i}.png" for i in range(images)],
        "reference_paths": [f"{user}/ref{i}.png" for i in range(references)],
    }
    names = ", ".join(values)
    try:
        with acting_as(db, "authenticated", user) as conn:
            conn.execute(
                f"insert into edit_batches ({names}) "
                f"select {names} from json_populate_record(null::public.edit_batches, %s::json)",
                (json.dumps(values),),
            )
    except psycopg.errors.CheckViolation as exc:
        return Verdict(False, str(reason_for_constraint(exc.diag.constraint_name)))
    except (psycopg.errors.DataError, psycopg.errors.NotNullViolation):
        return Verdict(False)
    except psycopg.Error as exc:
        if exc.sqlstate != QUOTA_SQLSTATE:
            raise
        return Verdict(False, str(ReasonCode.QUOTA_EXCEEDED))
    return ACCEPTED


def batch_via_rest(api: Harness, token: str, body: dict[str, Any], shape: tuple[int, int]) -> Verdict:
    images, references = shape
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        content=json.dumps({**body, "images": [IMAGE] * images, "reference_images": [IMAGE] * references}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code < 500, response.text
    if response.status_code == 202:
        return ACCEPTED
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] in KNOWN_CODES, response.text
    return Verdict(False, error["code"])


def batch_via_mcp(api: Harness, token: str, body: dict[str, Any], shape: tuple[int, int]) -> Verdict:
    images, references = shape
    arguments = {**body, "images_base64": [IMAGE] * images, "reference_images_base64": [IMAGE] * references}
    answer = call_tool(api, token, "submit_batch", json.dumps(arguments))
    if answer == "accepted":
        return ACCEPTED
    assert answer in KNOWN_CODES, answer
    return Verdict(False, answer)


BATCH_SHAPES = st.sampled_from([(1, 0), (2, 0), (1, 2), (2, rules.MAX_IMAGES), (0, 0)])
"""Images and references: within the rules, too many references, and none at all."""


def test_every_way_in_gives_one_verdict_for_any_batch(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    @settings(ADVERSARY, max_examples=max(5, ADVERSARY.max_examples // 2))
    @given(body=WELL_TYPED, shape=BATCH_SHAPES)
    def check(body: dict[str, Any], shape: tuple[int, int]) -> None:
        row_user, rest_user, mcp_user = make_user(), make_user(), make_user()
        verdicts = {
            "row": batch_via_row(api.db, row_user, body, shape),
            "rest": batch_via_rest(api, api.storage.token(rest_user), body, shape),
            "mcp": batch_via_mcp(api, api.storage.token(mcp_user), body, shape),
        }
        wrong = set()
        if shape[0] == 0:
            wrong.add(str(ReasonCode.INVALID_INPUT))
        if shape[1] >= rules.MAX_IMAGES:
            wrong.add(str(ReasonCode.TOO_MANY_IMAGES))
        assert agree(verdicts, body, wrong), (body, shape, {way: str(v) for way, v in verdicts.items()})
        seen[str(next(iter(verdicts.values()))).split(":")[0]] += 1

    seen: Counter[str] = Counter()
    check()
    assert seen["accepted"] and seen["refused"], seen


TOOLS = {
    "edit_image": {"prompt": JSON_VALUES, "image_base64": JSON_VALUES, "object_path": JSON_VALUES},
    "get_edit_status": {"edit_id": JSON_VALUES | st.uuids().map(str)},
    "list_recent_edits": {"limit": JSON_VALUES},
    "cancel_edit": {"edit_id": JSON_VALUES | st.uuids().map(str)},
    "wait_for_edit": {"edit_id": JSON_VALUES | st.uuids().map(str), "timeout_seconds": st.just(0)},
    "submit_batch": {"prompt": JSON_VALUES, "images_base64": JSON_VALUES, "object_paths": JSON_VALUES},
    "get_batch": {"batch_id": JSON_VALUES | st.uuids().map(str)},
    "cancel_batch": {"batch_id": JSON_VALUES | st.uuids().map(str)},
}


def test_every_mcp_tool_and_the_runpod_handler_answer_any_arguments_with_a_reason(
    api: Harness,
    make_user: Callable[[], uuid.UUID],
    runpod: Callable[[dict[str, Any]], Any],
) -> None:
    token = api.storage.token(make_user())

    @ADVERSARY
    @given(
        tool=st.sampled_from(sorted(TOOLS)),
        data=st.data(),
        job=JSON_VALUES
        | st.fixed_dictionaries({}, optional={"edit_request_id": JSON_VALUES, "prompt": JSON_VALUES}),
    )
    def check(tool: str, data: st.DataObject, job: Any) -> None:
        arguments = data.draw(st.fixed_dictionaries({}, optional=TOOLS[tool]))
        answer = call_tool(api, token, tool, json.dumps(arguments))
        # A result, a tool error led by a reason code, or a JSON-RPC refusal of arguments of the wrong
        # shape (the SDK's own validation, -32602) or of unreadable JSON: never an internal error.
        assert answer in ("accepted", PARSE_ERROR, "-32602") or answer in KNOWN_CODES, (
            tool,
            arguments,
            answer,
        )
        output = asyncio.run(runpod({"id": "adversary", "input": job}))
        assert output.get("error_code") in KNOWN_CODES or "image" in output, output

    check()
