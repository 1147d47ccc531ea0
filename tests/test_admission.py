"""Limits checked before the work (issue 22 item 4).

REST and MCP decoded every image on the shared validation processes and uploaded each one before the
insert checked the caller's limits: a user with ``max_in_flight = 0`` sending batches of 25 MP PNGs
made another user's submission wait 27 s, and each refused upload stayed in Storage. Now the user's
limits are asked first (``edit_request_admission_check``, one query as the user), a user has at most
``SUBMISSIONS_PER_USER`` submissions in flight (counted from before the body is read), and users take
turns at the validation processes, one image each.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from processor.core.decoding import DecodePool
from processor.domain.images import ImageLimits
from processor.domain.reasons import ReasonCode
from processor.domain.rules import SUBMISSIONS_PER_USER, TOO_MANY_SUBMISSIONS_RETRY_SECONDS
from tests.conftest import Harness, acting_as, png_bytes, wait_for
from tests.test_hostile_json import call_tool

CORRUPT = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
"""Refused as truncated_image by validation: an answer that says the image was decoded first."""
IMAGE = base64.b64encode(png_bytes()).decode()


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def limit(db: psycopg.Connection[dict[str, Any]], user: uuid.UUID, **limits: float) -> None:
    if not limits:
        return
    names = ", ".join(limits)
    marks = ", ".join(["%s"] * len(limits))
    db.execute(
        f"insert into edit_user_limits (user_id, {names}) values (%s, {marks})", (user, *limits.values())
    )


def bearer(api: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.storage.token(user)}"}


LIMITS = {
    "max-in-flight-0": {"max_in_flight": 0},
    "max-requests-0": {"max_requests_per_hour": 0},
    "cost-budget-1": {"max_cost_per_hour": 1},
}


@pytest.mark.parametrize("limits", list(LIMITS))
def test_a_user_over_a_limit_is_refused_before_an_image_is_decoded_or_stored(
    api: Harness, make_user: Callable[[], uuid.UUID], limits: str
) -> None:
    user = make_user()
    limit(api.db, user, **LIMITS[limits])
    url = api.served.url
    answers = {
        "edit": httpx.post(
            f"{url}/v1/edits", json={"prompt": "blue", "images": [CORRUPT] * 3}, headers=bearer(api, user)
        ),
        "batch": httpx.post(
            f"{url}/v1/batches",
            json={"prompt": "blue", "images": [CORRUPT] * 5, "reference_images": [CORRUPT]},
            headers=bearer(api, user),
        ),
        "multipart": httpx.post(
            f"{url}/v1/edits",
            data={"prompt": "blue"},
            files=[("image", ("a.png", base64.b64decode(CORRUPT), "image/png"))],
            headers=bearer(api, user),
        ),
    }
    for way, response in answers.items():
        # Before: 422 truncated_image, the image decoded before the limit was looked at.
        assert response.status_code == 429, (way, response.text)
        assert response.json()["error"]["code"] == ReasonCode.QUOTA_EXCEEDED, (way, response.text)
        assert int(response.headers["retry-after"]) >= 1
    token = api.storage.token(user)
    for tool, arguments in {
        "edit_image": f'{{"prompt": "blue", "image_base64": "{CORRUPT}", "timeout_seconds": 0}}',
        "submit_batch": f'{{"prompt": "blue", "images_base64": ["{CORRUPT}", "{CORRUPT}"]}}',
    }.items():
        assert call_tool(api, token, tool, arguments) == ReasonCode.QUOTA_EXCEEDED, tool
    stored = api.db.execute(
        "select count(*) as n from storage.objects where name like %s", (f"{user}/%",)
    ).fetchone()
    assert stored == {"n": 0}


def test_a_deleted_user_is_refused_before_an_image_is_decoded(api: Harness) -> None:
    gone = uuid.uuid4()
    response = httpx.post(
        f"{api.served.url}/v1/edits", json={"prompt": "blue", "image": CORRUPT}, headers=bearer(api, gone)
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == ReasonCode.UNAUTHORIZED


# --- The check says what the insert says -------------------------------------------------------------

STATES = [
    ({}, 0, {}),
    ({"max_in_flight": 0}, 0, {}),
    ({"max_in_flight": 2}, 1, {}),
    ({"max_in_flight": 2}, 2, {}),
    ({"max_in_flight": 3}, 1, {"batch": 2}),
    ({"max_in_flight": 3}, 2, {"batch": 2}),
    ({"max_requests_per_hour": 2}, 1, {}),
    ({"max_requests_per_hour": 2}, 2, {}),
    ({"max_cost_per_hour": 100}, 0, {"num_inference_steps": 40}),
    ({"max_cost_per_hour": 100}, 2, {"num_inference_steps": 40}),
    ({"max_cost_per_hour": 100}, 0, {"num_inference_steps": 100, "width": 2048, "height": 2048}),
    ({"max_cost_per_hour": 60}, 0, {"speed": "fast", "batch": 3}),
    ({"max_cost_per_hour": 60}, 0, {"batch": 3, "num_inference_steps": 8, "true_cfg_scale": 1.0}),
]


def _insert(conn: psycopg.Connection[dict[str, Any]], user: uuid.UUID, values: dict[str, Any]) -> None:
    values = dict(values)
    count = values.pop("batch", 1)
    paths = [f"{user}/{uuid.uuid4()}.png" for _ in range(count)]
    columns = {"prompt": "make it blue", **values}
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    if count == 1:
        conn.execute(
            f"insert into edit_requests (input_paths, {names}) values (%s, {marks})",
            (paths, *columns.values()),
        )
    else:
        conn.execute(
            f"insert into edit_batches (input_paths, {names}) values (%s, {marks})",
            (paths, *columns.values()),
        )


@pytest.mark.parametrize("state", STATES, ids=lambda s: str(s))
def test_the_check_before_the_work_says_what_the_insert_says(
    db: psycopg.Connection[dict[str, Any]], make_user: Callable[[], uuid.UUID], state: tuple[Any, ...]
) -> None:
    limits, earlier, request = state
    user = make_user()
    limit(db, user, **limits)
    for _ in range(earlier):
        with acting_as(db, "authenticated", user) as conn:
            _insert(conn, user, {"num_inference_steps": 2})
    values = {"num_inference_steps": 40, **request}
    count = values.get("batch", 1)
    with acting_as(db, "authenticated", user) as conn:
        check = conn.execute(
            "select refused from edit_request_admission_check(%s::integer, %s::integer, %s::real, %s::text, "
            "%s::integer, %s::integer, 1, %s::integer, 1, 0)",
            (
                count,
                values["num_inference_steps"],
                values.get("true_cfg_scale", 4.0),
                values.get("speed"),
                values.get("width"),
                values.get("height"),
                len("make it blue"),
            ),
        ).fetchone()
    assert check is not None
    try:
        with acting_as(db, "authenticated", user) as conn:
            _insert(conn, user, values)
        inserted = None
    except psycopg.Error as exc:
        assert exc.sqlstate == "PT429", exc
        inserted = str(exc.diag.message_primary).rsplit(": ", 1)[1].split(" ")[0]
    assert check["refused"] == inserted


# --- Submissions in flight and turns at the validation processes --------------------------------------


class Slow:
    """A JSON body sent in two parts, the second when ``release`` is set: a submission held open."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def body(self) -> Iterator[bytes]:
        yield b'{"prompt": "make it blue", '
        self.release.wait(60)
        yield f'"images": ["{IMAGE}"]}}'.encode()


def test_a_user_has_at_most_their_share_of_submissions_in_flight(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    hostile, other = make_user(), make_user()
    url = f"{api.served.url}/v1/edits"
    slow = Slow()

    def probe() -> httpx.Response:
        # Refused for its blank prompt once read; refused before it is read past the share.
        return httpx.post(url, json={"prompt": " "}, headers=bearer(api, hostile), timeout=30)

    with ThreadPoolExecutor(SUBMISSIONS_PER_USER) as pool:
        held = [
            pool.submit(httpx.post, url, content=slow.body(), headers=bearer(api, hostile), timeout=60)
            for _ in range(SUBMISSIONS_PER_USER)
        ]
        try:
            refused = wait_for(
                lambda: (r := probe()).status_code == 429 and r, what="the user's share to be full"
            )
            assert refused.json()["error"]["code"] == ReasonCode.TOO_MANY_SUBMISSIONS
            assert refused.headers["retry-after"] == str(TOO_MANY_SUBMISSIONS_RETRY_SECONDS)
            # Another user is not held back by it.
            answer = httpx.post(
                url, json={"prompt": "blue", "image": IMAGE}, headers=bearer(api, other), timeout=30
            )
            assert answer.status_code == 202, answer.text
        finally:
            slow.release.set()
        assert [future.result().status_code for future in held] == [202] * SUBMISSIONS_PER_USER
    # Answered, they no longer count.
    assert probe().status_code == 422


HOSTILE_IMAGE = png_bytes(color=(1, 2, 3))


class GatedPool:
    """Two 'processes' (the default ``VALIDATION_THREADS``) in which the hostile user's images stay
    until released; everyone else's decode at once."""

    def __init__(self, inner: DecodePool) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.inside = 0
        self.slots: asyncio.Semaphore | None = None

    async def check(self, data: bytes, limits: ImageLimits) -> tuple[int, int]:
        self.slots = self.slots or asyncio.Semaphore(2)
        async with self.slots:
            if data == HOSTILE_IMAGE:
                self.inside += 1
                await asyncio.to_thread(self.release.wait, 60)
            return await self.inner.check(data, limits)

    def close(self) -> None:
        self.inner.close()


def test_one_users_submissions_take_no_more_than_their_turn_at_validation(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    assert api.api is not None
    actions = api.api.actions
    gated = GatedPool(actions._validation)
    actions._validation = gated  # type: ignore[assignment]
    hostile, other = make_user(), make_user()
    url = f"{api.served.url}/v1/edits"
    body = {"prompt": "make it blue", "image": base64.b64encode(HOSTILE_IMAGE).decode()}
    with ThreadPoolExecutor(2) as pool:
        held = [
            pool.submit(httpx.post, url, json=body, headers=bearer(api, hostile), timeout=90)
            for _ in range(2)
        ]
        try:
            # Both of the hostile user's submissions are at validation: in a process, or waiting
            # for the user's turn.
            wait_for(
                lambda: gated.inside + getattr(actions, "validations_waiting", 0) == 2,
                what="the hostile submissions to reach validation",
            )
            # The other user's image finds a process: before, both were the hostile user's.
            answer = httpx.post(
                url, json={"prompt": "blue", "image": IMAGE}, headers=bearer(api, other), timeout=20
            )
            assert answer.status_code == 202, answer.text
            assert gated.inside == 1
        finally:
            gated.release.set()
        assert [future.result().status_code for future in held] == [202, 202]


def test_a_row_that_breaks_a_rule_is_refused_for_the_rule_not_the_limits(
    db: psycopg.Connection[dict[str, Any]], make_user: Callable[[], uuid.UUID]
) -> None:
    # Found by tests/test_adversary.py: the limits were checked before the CHECK constraints, so a
    # 4096 x 4096 output (invalid_size, charged as 16 MP) was a PT429 telling the app to wait.
    user = make_user()
    limit(db, user, max_in_flight=0)
    for columns, constraint in (
        ({"width": 4096, "height": 4096}, "edit_requests_size_valid"),
        ({"num_inference_steps": 1}, "edit_requests_steps_within_rules"),
    ):
        with (
            pytest.raises(psycopg.errors.CheckViolation) as refused,
            acting_as(db, "authenticated", user) as conn,
        ):
            _insert(conn, user, columns)
        assert refused.value.diag.constraint_name == constraint
    # A valid row over the limit is still refused for the limit, with its message, detail and hint.
    with pytest.raises(psycopg.Error) as over, acting_as(db, "authenticated", user) as conn:
        _insert(conn, user, {"num_inference_steps": 2})
    assert over.value.sqlstate == "PT429"
    assert over.value.diag.message_primary == "edit request limit exceeded: max_in_flight (0)"
    assert over.value.diag.message_detail and over.value.diag.message_hint
