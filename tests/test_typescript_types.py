"""clients/typescript/database.types.ts is what the migrations make, in the shape `supabase gen types` writes.

Regenerate after a schema change:

    python -m processor.devtools.typescript_types --out clients/typescript/database.types.ts
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from processor.devtools.typescript_types import generate

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "typescript"
COMMITTED = CLIENT / "database.types.ts"
REGENERATE = "python -m processor.devtools.typescript_types --out clients/typescript/database.types.ts"


def block(text: str, path: list[str]) -> str:
    """The lines of the object at ``path`` (``["public", "Tables", "edit_requests", "Insert"]``)."""
    lines = text.splitlines()
    start, depth = 0, -1
    for name in path:
        depth += 1
        pattern = re.compile(rf"^{'  ' * (depth + 1)}{re.escape(name)}: ")
        start = next(i for i in range(start, len(lines)) if pattern.match(lines[i]))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "  " * (depth + 1) + "}")
    return "\n".join(lines[start : end + 1])


def test_the_committed_types_are_what_the_migrations_make(database_url: str) -> None:
    made = generate(database_url)
    committed = COMMITTED.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            made.splitlines(keepends=True),
            "committed",
            "from the migrations",
        )
    )
    assert made == committed, f"database.types.ts is stale; regenerate it: {REGENERATE}\n{diff}"


def test_a_schema_change_shows_in_the_types(
    database_url: str, db: psycopg.Connection[dict[str, Any]]
) -> None:
    db.execute("alter table public.edit_requests add column colour text not null default 'blue'")
    made = generate(database_url)
    assert "          colour: string\n" in block(made, ["public", "Tables", "edit_requests", "Row"]) + "\n"
    assert "colour?: string" in block(made, ["public", "Tables", "edit_requests", "Insert"])
    assert made != COMMITTED.read_text()


def test_the_types_say_what_apps_may_write_and_read() -> None:
    text = COMMITTED.read_text()
    insert = block(text, ["public", "Tables", "edit_requests", "Insert"])
    # What an app must give (no default) and what the database fills in.
    assert re.search(r"^\s+prompt: string$", insert, re.M)
    assert re.search(r"^\s+input_paths: string\[\]$", insert, re.M)
    assert re.search(r"^\s+id\?: string$", insert, re.M)
    row = block(text, ["public", "Tables", "edit_requests", "Row"])
    assert re.search(r"^\s+progress: number$", row, re.M) and re.search(
        r"^\s+output_path: string \| null$", row, re.M
    )
    assert "cancel_edit_request: { Args: { p_id: string }; Returns: boolean }" in text
    assert re.search(r"^      edit_batch_progress: \{$", block(text, ["public", "Views"]), re.M)
    for helper in ("Tables", "TablesInsert", "TablesUpdate", "Enums", "CompositeTypes"):
        assert f"export type {helper}<" in text
    # Extensions live in their own schema on Supabase: none of pgcrypto's functions is an app's.
    assert "gen_salt" not in text and "crypt:" not in text


def node_tool(name: str) -> Path:
    tool = CLIENT / "node_modules" / ".bin" / name
    if not tool.exists() or shutil.which("node") is None:
        pytest.skip(f"{name} is not installed: npm ci --prefix clients/typescript")
    return tool


@pytest.mark.service  # tsc or prettier, in a process of its own
def test_the_types_compile_with_supabase_js_and_refuse_what_the_database_refuses() -> None:
    # typed-client.ts inserts, selects and calls functions through createClient<Database>; its
    # @ts-expect-error lines (a missing prompt, an unknown column, a wrong argument) must fail to compile.
    done = subprocess.run(
        [str(node_tool("tsc")), "-p", str(CLIENT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.service  # tsc or prettier, in a process of its own
def test_the_types_are_laid_out_as_the_supabase_cli_lays_them_out() -> None:
    # postgres-meta formats its output with prettier (semi: false); package.json pins the version its
    # lockfile holds, so the committed file and `supabase gen types` output differ only where the
    # database does.
    done = subprocess.run(
        [str(node_tool("prettier")), "--check", "--no-semi", str(COMMITTED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
