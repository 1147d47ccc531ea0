"""What a request is charged: one formula, in SQL (``edit_request_cost``, what the insert trigger
charges) and in Python (``processor.domain.cost``), equal for every combination of parameters, charged
per request of a batch, shown to users, and documented with worked examples that stay true."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from processor.domain import cost, rules
from processor.domain.cost import cost_of, request_cost
from processor.domain.request import EditParams
from processor.domain.speed import LoraChoice
from tests.conftest import Harness, acting_as, png_bytes

Row = dict[str, Any]
Db = psycopg.Connection[Row]
ROOT = Path(__file__).resolve().parents[1]

STEPS = (2, 7, 40, 100)
CFG = (0.0, 0.5, 1.0, 1.5, 4.0, 20.0)
SPEEDS = (None, "quality", "fast", "fastest")
SIZES = ((None, None), (32, 32), (512, 768), (1024, 1024), (2048, 2048))
INPUTS = (0, 1, 2, 3)
PROMPTS = (1, 40, 2000)
NEGATIVES = (1, 2000)
LORAS = (0, 1, 3)


def test_sql_and_python_charge_the_same_double_for_every_combination(db: Db) -> None:
    combos = list(itertools.product(STEPS, CFG, SPEEDS, SIZES, INPUTS, PROMPTS, NEGATIVES, LORAS))
    columns = list(zip(*combos, strict=True))
    widths = [size[0] for size in columns[3]]
    heights = [size[1] for size in columns[3]]
    rows = db.execute(
        "select public.edit_request_cost(s, c, sp, w, h, i, p, n, l) as cost "
        "from unnest(%s::int[], %s::real[], %s::text[], %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], "
        "%s::int[]) with ordinality as t(s, c, sp, w, h, i, p, n, l, k) order by k",
        (list(columns[0]), list(columns[1]), list(columns[2]), widths, heights, *map(list, columns[4:])),
    ).fetchall()
    assert len(rows) == len(combos) > 20_000
    different = []
    for (steps, cfg, speed, (width, height), inputs, prompt, negative, loras), row in zip(
        combos, rows, strict=True
    ):
        python = request_cost(
            steps=steps,
            true_cfg_scale=cfg,
            speed=speed,
            width=width,
            height=height,
            inputs=inputs,
            prompt_chars=prompt,
            negative_chars=negative,
            loras=loras,
        )
        if row["cost"] != python:
            different.append(
                (steps, cfg, speed, width, height, inputs, prompt, negative, loras, row["cost"], python)
            )
    assert different == [], different[:5]


def test_the_formulas_constants_are_the_rules() -> None:
    """The SQL writes the constants out; these are the values it writes (the parity test holds the rest)."""
    assert rules.COST_INPUT_TOKENS == 4292
    assert rules.COST_ATTENTION_TOKENS == 18432
    assert cost.DEFAULT_STEP_WORK == 24410.390625
    assert rules.COST_LORA_FORWARD_SHARE == 1 / 16 and rules.COST_LORA_LOAD == 4
    assert dict(rules.LIGHTNING_STEPS) == {"fast": 8, "fastest": 4}
    sql = (ROOT / "supabase/schemas/25_fair_sharing_and_limits.sql").read_text()
    for literal in ("4292", "18432", "24410.390625", "/ 256", "1048576", "/ 16", "4 * p_loras"):
        assert literal in sql, literal


def insert(db: Db, user: uuid.UUID, **columns: object) -> Row:
    values = {"prompt": "make it blue", "input_paths": [f"{user}/{uuid.uuid4()}.png"], **columns}
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) "
            "returning cost",
            tuple(values.values()),
        ).fetchone()
    assert row is not None
    return row


def test_the_insert_charges_the_formula_and_a_null_speed_as_the_deployments_default(
    db: Db, make_user: Callable[[], uuid.UUID]
) -> None:
    db.execute("insert into edit_loras (name) values ('ink'), ('pixel')")
    user = make_user()
    three = [f"{user}/{k}.png" for k in range(3)]
    cases: list[tuple[dict[str, Any], EditParams, int]] = [
        ({}, EditParams(prompt="make it blue"), 1),
        (
            {"input_paths": three, "width": 32, "height": 32},
            EditParams(prompt="make it blue", width=32, height=32),
            3,
        ),
        (
            {"input_paths": [], "width": 1024, "height": 1024, "true_cfg_scale": 1.0},
            EditParams(prompt="make it blue", width=1024, height=1024, true_cfg_scale=1.0),
            0,
        ),
        ({"speed": "fastest"}, EditParams(prompt="make it blue", speed="fastest"), 1),
        # Texts count in UTF-8 bytes of their NFC form (the most tokens they can be), not characters:
        # U+FB2C is 3 bytes, 6 in NFC; e + a combining acute is 3 bytes, é (2) in NFC.
        (
            {"prompt": "\ufb2c" * 300, "negative_prompt": "e\u0301" * 500},
            EditParams(prompt="\ufb2c" * 300, negative_prompt="e\u0301" * 500),
            1,
        ),
        (
            {"loras": Jsonb([{"name": "ink"}, {"name": "pixel", "scale": 0.5}]), "num_inference_steps": 20},
            EditParams(
                prompt="make it blue",
                num_inference_steps=20,
                loras=(LoraChoice("ink"), LoraChoice("pixel", 0.5)),
            ),
            1,
        ),
    ]
    for default_speed in (None, "quality", "fast"):
        db.execute("update edit_queue_settings set default_speed = %s", (default_speed,))
        for columns, params, inputs in cases:
            row = insert(db, user, **columns)
            assert row["cost"] == cost_of(params, inputs, default_speed=default_speed), (
                columns,
                default_speed,
            )
    usage = db.execute("select hour_cost from edit_user_usage where user_id = %s", (user,)).fetchone()
    total = db.execute("select sum(cost) as total from edit_requests where user_id = %s", (user,)).fetchone()
    assert usage is not None and total is not None and usage["hour_cost"] == pytest.approx(total["total"])


def test_a_text_is_charged_its_bytes_in_nfc_form_the_most_tokens_it_can_be() -> None:
    # 300 characters that the tokenizer may make 1,500 tokens of (measured: 5 a character) are not
    # charged as 300: as 1,800, the UTF-8 bytes of their NFC form.
    rare = cost_of(EditParams(prompt="\ufb2c" * 300, true_cfg_scale=1.0), 1)
    ascii_ = cost_of(EditParams(prompt="x" * 1800, true_cfg_scale=1.0), 1)
    assert rare == ascii_ > cost_of(EditParams(prompt="x" * 300, true_cfg_scale=1.0), 1)


def test_a_speed_left_to_the_deployment_is_never_charged_less_than_it_runs() -> None:
    for steps, cfg in itertools.product(STEPS, CFG):
        params = EditParams(prompt="x", num_inference_steps=steps, true_cfg_scale=cfg)
        unknown = cost_of(params, 1)
        assert all(unknown >= cost_of(params, 1, default_speed=speed) for speed in rules.SPEED_PRESETS)


def test_service_role_rows_show_their_cost_without_being_charged(
    db: Db, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    with acting_as(db, "service_role") as conn:
        row = conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths, speed) values (%s, 'make it blue', %s, 'fast') "
            "returning cost",
            (user, [f"{user}/a.png"]),
        ).fetchone()
    assert row is not None and row["cost"] == cost_of(EditParams(prompt="make it blue", speed="fast"), 1)
    assert db.execute("select hour_cost from edit_user_usage where user_id = %s", (user,)).fetchone() in (
        None,
        {"hour_cost": 0},
    )


def test_each_request_of_a_batch_is_charged_with_its_references(
    db: Db, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    paths = [f"{user}/{k}.png" for k in range(4)]
    refs = [f"{user}/ref{k}.png" for k in range(2)]
    with acting_as(db, "authenticated", user) as conn:
        conn.execute(
            "insert into edit_batches (prompt, input_paths, reference_paths, width, height, speed) "
            "values ('make it blue', %s, %s, 64, 64, 'quality')",
            (paths, refs),
        )
    charged = db.execute("select cost from edit_requests where user_id = %s", (user,)).fetchall()
    one = cost_of(EditParams(prompt="make it blue", width=64, height=64, speed="quality"), 3)
    assert [row["cost"] for row in charged] == [one] * 4
    assert one > cost_of(EditParams(prompt="make it blue", speed="quality"), 1)  # three 1 MP inputs each


# --- The worked examples of docs/fair-sharing.md --------------------------------------------------------

PROMPT = "replace the sky with a warm orange sunset"  # 41 characters
EXAMPLES: list[tuple[str, EditParams, int]] = [
    ("A default edit", EditParams(prompt=PROMPT, speed="quality"), 1),
    ("Three inputs, 32 x 32 out", EditParams(prompt=PROMPT, speed="quality", width=32, height=32), 3),
    ("Three inputs, default size", EditParams(prompt=PROMPT, speed="quality"), 3),
    ("A creation, 1024 x 1024", EditParams(prompt=PROMPT, speed="quality", width=1024, height=1024), 0),
    (
        "A creation, 2048 x 2048, 50 steps",
        EditParams(prompt=PROMPT, speed="quality", width=2048, height=2048, num_inference_steps=50),
        0,
    ),
    ("A default edit without CFG", EditParams(prompt=PROMPT, speed="quality", true_cfg_scale=1.0), 1),
    ("`fast`", EditParams(prompt=PROMPT, speed="fast"), 1),
    ("`fastest`", EditParams(prompt=PROMPT, speed="fastest"), 1),
    (
        "A default edit with one LoRA",
        EditParams(prompt=PROMPT, speed="quality", loras=(LoraChoice("ink"),)),
        1,
    ),
    (
        "`fast` with two LoRAs",
        EditParams(prompt=PROMPT, speed="fast", loras=(LoraChoice("ink"), LoraChoice("pixel"))),
        1,
    ),
    ("No speed, 2 steps, unknown default", EditParams(prompt=PROMPT, num_inference_steps=2), 1),
]


def test_the_worked_examples_in_the_docs_are_what_the_formula_charges() -> None:
    doc = (ROOT / "docs/fair-sharing.md").read_text()
    for name, params, inputs in EXAMPLES:
        row = re.search(rf"^\| {re.escape(name)} \|.*\| \*\*([0-9.,]+)\*\* \|$", doc, re.M)
        assert row is not None, f"docs/fair-sharing.md has no example row for {name!r}"
        assert row.group(1) == f"{cost_of(params, inputs):,.2f}", name


# --- Visible before and after submitting ---------------------------------------------------------------


def test_users_price_a_request_before_and_see_its_charge_after(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, listen=False, sweep_interval_seconds=3600)
    user = make_user()
    with acting_as(harness.db, "authenticated", user) as conn:
        priced = conn.execute(
            "select public.edit_request_cost(p_steps => 2, p_true_cfg_scale => 4, p_speed => null, p_width => null, "
            "p_height => null, p_inputs => 1, p_prompt_chars => 12, p_negative_chars => 1, p_loras => 0) as cost"
        ).fetchone()
    headers = {"Authorization": f"Bearer {harness.storage.token(user)}"}
    import base64

    body = {
        "prompt": "make it blue",
        "image": base64.b64encode(png_bytes()).decode(),
        "num_inference_steps": 2,
    }
    accepted = httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert priced is not None and accepted.json()["cost"] == priced["cost"]
    assert priced["cost"] == cost_of(EditParams(prompt="make it blue", num_inference_steps=2), 1)
    shown = httpx.get(accepted.json()["status_url"], headers=headers).json()
    assert shown["cost"] == priced["cost"]
