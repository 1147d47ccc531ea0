"""Constraints make bad requests and impossible states unrepresentable."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import OWNER

Row = dict[str, Any]


@pytest.mark.parametrize(
    "columns",
    [
        {"prompt": ""},
        {"prompt": "x" * 2001},
        {"input_paths": []},
        {"input_paths": ["a/1.png", "a/2.png", "a/3.png", "a/4.png"]},
        {"input_paths": ["../etc/passwd"]},
        {"input_paths": [f"{OWNER}/../x.png"]},
        {"input_paths": ["/abs.png"]},
        {"input_paths": ["a//b.png"]},
        {"input_paths": [""]},
        {"num_inference_steps": 0},
        {"num_inference_steps": 101},
        {"true_cfg_scale": -1},
        {"true_cfg_scale": 21},
        {"guidance_scale": 99},
        {"seed": -1},
        {"priority": 1000},
    ],
)
def test_bad_requests_are_refused_at_insert(
    add_request: Callable[..., uuid.UUID], columns: dict[str, Any]
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        add_request(stored=False, **columns)


def test_defaults_follow_the_model_card(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    row = db.execute("select * from edit_requests where id = %s", (add_request(),)).fetchone()
    assert row is not None
    assert (
        row["num_inference_steps"],
        row["true_cfg_scale"],
        row["guidance_scale"],
        row["negative_prompt"],
    ) == (40, 4.0, 1.0, " ")
    assert (row["input_bucket"], row["output_bucket"], row["max_attempts"], row["seed"]) == (
        "edit-inputs",
        "edit-outputs",
        3,
        None,
    )


@pytest.mark.parametrize(
    "update",
    [
        "status = 'processing'",  # no owner, no lease
        "status = 'succeeded'",  # no output
        "status = 'failed'",  # no reason
        "status = 'canceled'",  # no finish time
        "output_path = 'x.png'",  # output without success
        "progress = 1.5",
        "status = 'done'",
        "attempts = 4",  # over max_attempts
    ],
)
def test_impossible_states_are_refused(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], update: str
) -> None:
    request_id = add_request()
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(f"update edit_requests set {update} where id = %s", (request_id,))


def test_updated_at_moves_on_every_update(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    before = db.execute("select updated_at from edit_requests where id = %s", (request_id,)).fetchone()
    db.execute("select * from claim_edit_request('w')")
    after = db.execute("select updated_at from edit_requests where id = %s", (request_id,)).fetchone()
    assert before is not None and after is not None and after["updated_at"] > before["updated_at"]
