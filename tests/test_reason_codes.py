"""One enumeration of reason codes, and one set of limits: the docs, Python and SQL agree with ``rules``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from processor.devtools import localdb
from processor.domain import reasons, rules
from processor.domain.errors import ProcessorError
from processor.domain.reasons import REASONS, ReasonCode

ROOT = Path(__file__).resolve().parent.parent
Db = psycopg.Connection[dict[str, object]]


def table_rows(path: Path) -> list[list[str]]:
    """The cells of each row of the Markdown table in ``path`` (header and rule left out)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith(("| Code |", "| Name |")):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows


def test_every_code_has_a_description_and_a_retry_verdict() -> None:
    assert set(REASONS) == set(ReasonCode)
    assert all(reason.description.endswith(".") for reason in REASONS.values())


def test_the_docs_table_is_the_enumeration() -> None:
    rows = table_rows(ROOT / "docs" / "reason-codes.md")
    documented = [(code.strip("`"), retried, meaning) for code, retried, meaning in rows]
    expected = [
        (code.value, "-" if code.retryable is None else ("yes" if code.retryable else "no"), code.description)
        for code in ReasonCode
    ]
    assert documented == expected


def test_the_database_allows_exactly_the_enumeration(db: Db) -> None:
    row = db.execute("select public.edit_request_reason_codes() as codes").fetchone()
    assert row is not None and row["codes"] == [code.value for code in ReasonCode]


def test_every_code_the_sql_writes_is_in_the_enumeration() -> None:
    written: set[str] = set()
    for path in localdb.migration_files():
        for line in path.read_text().splitlines():
            code, _, _ = line.partition("--")
            if "error_code" in code and "=" in code:
                written.update(re.findall(r"'([a-z_]+)'", code))
    written.discard("edit_requests_error_code_known")  # a constraint name, not a code
    # `set status = 'failed', error_code = ...` on one line: statuses that are not also codes.
    written -= set(rules.STATUSES) - {code.value for code in ReasonCode}
    assert {"lease_expired", "canceled", "error", "invalid_prompt", "invalid_parameter"} <= written
    assert written <= {code.value for code in ReasonCode}


def test_every_code_python_names_is_in_the_enumeration() -> None:
    # Every reason in processor/ is a ``ReasonCode`` member (mypy checks each exists); a string spelled
    # by hand would escape that, so none is left. ``ProcessorError`` also refuses an unknown code.
    named = set()
    for path in (ROOT / "processor").rglob("*.py"):
        named.update(re.findall(r'reason="([a-z_]+)"', path.read_text()))
    assert not named, f"reason codes spelled as strings: {sorted(named)}"
    with pytest.raises(ValueError):
        ProcessorError("x", reason="no_such_code")


def test_an_unknown_error_code_is_refused_by_the_schema(
    db: Db, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    assert db.execute("select id from claim_edit_request('w', 60, %s)", (request_id,)).fetchone()
    with pytest.raises(psycopg.errors.CheckViolation, match="edit_requests_error_code_known"):
        db.execute("select fail_edit_request(%s, 'w', 'boom', false, 'no_such_code')", (request_id,))
    for code in ("model_error", "lease_expired"):
        db.execute("update edit_requests set error_code = %s where id = %s", (code, request_id))


def test_the_limits_table_is_the_rules_module() -> None:
    for name, value, _meaning in table_rows(ROOT / "docs" / "limits.md"):
        actual = getattr(rules, name.strip("`"))
        if isinstance(actual, frozenset):
            actual = tuple(sorted(actual))
        assert value.strip("`").replace("\\|", "|") == repr(actual), name


def test_statuses_channels_and_buckets_in_sql_are_the_rules(db: Db) -> None:
    status_check = db.execute(
        "select pg_get_constraintdef(oid) as def from pg_constraint where conname = 'edit_requests_status_known'"
    ).fetchone()
    assert status_check is not None
    assert tuple(re.findall(r"'([a-z_]+)'::text", str(status_check["def"]))) == rules.STATUSES
    channels = set()
    for path in localdb.migration_files():
        channels.update(re.findall(r"pg_notify\('([a-z_]+)'", path.read_text()))
    assert channels == {rules.QUEUED_CHANNEL, rules.CANCEL_CHANNEL, rules.CHANGES_CHANNEL}
    buckets = {
        str(row["id"]): row["file_size_limit"]
        for row in db.execute("select id, file_size_limit from storage.buckets").fetchall()
    }
    assert buckets[rules.INPUT_BUCKET] == rules.MAX_IMAGE_BYTES
    assert rules.OUTPUT_BUCKET in buckets
    defaults = {
        str(row["column_name"]): str(row["column_default"])
        for row in db.execute(
            "select column_name, column_default from information_schema.columns "
            "where table_name = 'edit_requests' and column_default is not null"
        ).fetchall()
    }
    assert defaults["input_bucket"] == f"'{rules.INPUT_BUCKET}'::text"
    assert defaults["output_bucket"] == f"'{rules.OUTPUT_BUCKET}'::text"
    assert defaults["num_inference_steps"] == str(rules.DEFAULT_STEPS)
    assert defaults["max_attempts"] == str(rules.DEFAULT_MAX_ATTEMPTS)
    assert defaults["base"] == f"'{rules.DEFAULT_BASE}'::text"
    assert defaults["base_color"] == f"'{rules.DEFAULT_BASE_COLOR}'::text"


def test_every_constraint_rules_maps_exists(db: Db) -> None:
    names = {
        str(row["conname"])
        for row in db.execute(
            "select conname from pg_constraint "
            "where conrelid in ('public.edit_requests'::regclass, 'public.edit_batches'::regclass)"
        ).fetchall()
    }
    # The allowlist check is a trigger that raises with a constraint name (a CHECK cannot read a table).
    raised_by_triggers = {"edit_requests_loras_allowed"}
    assert set(reasons.CONSTRAINT_REASONS) <= names | raised_by_triggers
    sql = "".join(path.read_text() for path in localdb.migration_files())
    assert all(f"constraint = '{name}'" in sql for name in raised_by_triggers)


def test_the_schema_spells_the_rules_constants(db: Db) -> None:
    # The parity test proves the boundaries behave alike; this names the constants in the SQL text.
    definitions = {
        str(row["conname"]): str(row["def"])
        for row in db.execute(
            "select conname, pg_get_constraintdef(oid) as def from pg_constraint "
            "where conrelid = 'public.edit_requests'::regclass"
        ).fetchall()
    }
    assert rules.HEX_COLOUR_PATTERN in definitions["edit_requests_base_color_hex"]
    assert (
        f"octet_length(NORMALIZE(prompt, NFC)) <= {rules.MAX_PROMPT_BYTES}"
        in definitions["edit_requests_prompt_length"]
    )
    assert (
        f"octet_length(NORMALIZE(negative_prompt, NFC)) <= {rules.MAX_PROMPT_BYTES}"
        in definitions["edit_requests_negative_prompt_length"]
    )
    assert f">= {rules.MIN_STEPS}" in definitions["edit_requests_steps_within_rules"]
    assert f"<= {rules.MAX_STEPS}" in definitions["edit_requests_steps_within_rules"]
    assert f"<= {rules.MAX_IMAGES}" in definitions["edit_requests_input_count"]
    size = definitions["edit_requests_size_valid"]
    for number in (
        rules.MIN_OUTPUT_SIDE,
        rules.MAX_OUTPUT_SIDE,
        rules.SIZE_MULTIPLE,
        rules.MAX_OUTPUT_PIXELS,
    ):
        assert str(number) in size
    assert all(f"'{base}'" in definitions["edit_requests_base_known"] for base in rules.BASES)
