"""The samples in docs/ run as written, so they cannot go stale.

- docs/usage.md's shell samples (curl against the REST API) run against a processor with the REST API,
  `$URL` and `$USER_JWT` set and a `photo.png` in the working directory.
- Every SQL sample in the docs listed in SQL_SAMPLES runs on the migrated database, as the role its text
  names, with its placeholders filled; a SQL sample not listed there fails the test until it is.
- Every JavaScript sample parses (`node --check`); docs/usage.md's supabase-js program also type-checks
  against supabase-js and clients/typescript/database.types.ts (tsc, where `npm ci --prefix
  clients/typescript` ran). Every Python sample compiles; docs/usage.md's supabase-py program passes
  `mypy --strict` against supabase-py.
- The facts the docs state about requests are the rules' (docs/contract.md), and the samples ask only for
  what a default set-up runs (a speed preset needs its LoRA configured).

Not run: samples that need Docker or a GPU (Compose, the Supabase CLI in docs/local-supabase.md,
`benchmarks/gpu_speed.py`), listed in NOT_RUN with why.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from processor.domain import rules
from tests.conftest import Harness, png_bytes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLIENT = ROOT / "clients" / "typescript"
Row = dict[str, Any]


@dataclass(frozen=True)
class Sample:
    doc: str
    index: int  # among the doc's samples in the same language
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.doc}[{self.language} {self.index}]"


def samples(language: str, *docs: str) -> list[Sample]:
    aliases = {"sh": ("sh", "bash", "shell"), "js": ("js", "javascript", "mjs")}.get(language, (language,))
    found = []
    for path in sorted(DOCS.glob("*.md")) if not docs else [DOCS / doc for doc in docs]:
        blocks = re.findall(r"^```(\w*)\n(.*?)^```$", path.read_text(), flags=re.M | re.S)
        mine = [code for tag, code in blocks if tag in aliases]
        found += [Sample(path.name, i, language, code) for i, code in enumerate(mine)]
    return found


# Shell samples that need what CI has not (Docker, the Supabase CLI, a GPU): by doc, why.
NOT_RUN = {
    "deployment.md": "Docker Compose on a GPU host",
    "development.md": "installs the project into .venv (the command these tests run under)",
    "local-supabase.md": "the Supabase CLI, which needs Docker (tests/test_supabase_project.py checks its files)",
    "speed.md": "benchmarks/gpu_speed.py on a GPU machine",
}


def test_every_shell_sample_is_run_or_says_why_not() -> None:
    docs = {s.doc for s in samples("sh")}
    assert docs - set(NOT_RUN) == {"usage.md"}


# --- docs/usage.md: curl against the REST API ----------------------------------------------------------
@pytest.mark.parametrize("sample", samples("sh", "usage.md"), ids=lambda s: s.name)
def test_the_rest_samples_run_as_written(
    sample: Sample,
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    tmp_path: Path,
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    harness = start_processor(rest=True)
    (tmp_path / "photo.png").write_bytes(png_bytes())
    env = {"PATH": "/usr/bin:/bin", "URL": harness.served.url, "USER_JWT": harness.storage.token(make_user())}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", sample.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer.get("status") == "succeeded", answer
    assert answer["image"]  # ?wait=true answers with the edited image


# --- SQL -------------------------------------------------------------------------------------------------
# Each SQL sample: the role that runs it (as its text says) and its placeholders. `user` and `batch` are
# made for the run: a user, and a batch of theirs.
SQL_SAMPLES: dict[tuple[str, int], tuple[str, dict[str, str]]] = {
    ("batches.md", 0): ("authenticated", {"$1": "'{batch}'"}),  # the app, as the batch's owner
    ("contract.md", 0): ("postgres", {}),  # dashboards
    ("fair-sharing.md", 0): ("postgres", {"'<uuid>'": "'{user}'"}),  # operators
    ("webhooks.md", 0): ("postgres", {}),  # operators
    ("webhooks.md", 1): ("service_role", {}),  # "service_role only"
}


def sql_samples() -> list[Sample]:
    return samples("sql")


def test_every_sql_sample_is_run() -> None:
    assert {(s.doc, s.index) for s in sql_samples()} == set(SQL_SAMPLES)


@pytest.fixture
def user_with_a_batch(db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], as_role: Any) -> Row:
    user = make_user()
    with as_role(db, "authenticated", user) as conn:
        batch = conn.execute(
            "insert into edit_batches (prompt, input_paths) values ('make it blue', %s) returning id",
            ([f"{user}/a.png", f"{user}/b.png"],),
        ).fetchone()
    assert batch is not None
    return {"user": user, "batch": batch["id"]}


@pytest.mark.parametrize("sample", sql_samples(), ids=lambda s: s.name)
def test_the_sql_samples_run_as_written(
    sample: Sample, db: psycopg.Connection[Row], user_with_a_batch: Row, as_role: Any
) -> None:
    role, placeholders = SQL_SAMPLES[(sample.doc, sample.index)]
    code = sample.code
    for placeholder, value in placeholders.items():
        assert placeholder in code, f"{sample.name} no longer has {placeholder}"
        code = code.replace(placeholder, value.format(**user_with_a_batch))
    statements = [s for s in split_sql(code) if s.strip()]
    with as_role(db, role, user_with_a_batch["user"] if role == "authenticated" else None) as conn:
        for statement in statements:
            conn.execute(statement)  # an error fails the test; the transaction is rolled back after
        conn.execute("select 1")
    assert statements


def split_sql(code: str) -> Iterator[str]:
    """Statements of a sample (no sample has a semicolon inside a string or a function body)."""
    without_comments = "\n".join(line.split("--")[0] for line in code.splitlines())
    yield from without_comments.split(";")


# --- JavaScript and Python ---------------------------------------------------------------------------------
@pytest.mark.service  # node, in a process
@pytest.mark.parametrize("sample", samples("js"), ids=lambda s: s.name)
def test_every_javascript_sample_parses(sample: Sample, tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    path = tmp_path / "sample.mjs"  # a module: import and top-level await allowed, as in an app
    path.write_text(sample.code)
    done = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.service  # tsc or prettier, in a process of its own
def test_the_supabase_js_program_type_checks_against_supabase_js_and_our_types(tmp_path: Path) -> None:
    tsc = CLIENT / "node_modules" / ".bin" / "tsc"
    if not tsc.exists() or shutil.which("node") is None:
        pytest.skip("tsc is not installed: npm ci --prefix clients/typescript")
    # The complete program (the page's other JavaScript is a browser fragment: parsed, not compiled).
    [program] = [sample for sample in samples("js", "usage.md") if sample.code.startswith("// edit.mjs")]
    (tmp_path / "edit.mjs").write_text(program.code)
    shutil.copy(CLIENT / "database.types.ts", tmp_path)  # what the program's JSDoc names
    (tmp_path / "node_modules").symlink_to(CLIENT / "node_modules")
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "allowJs": True,
                    "checkJs": True,
                    "noEmit": True,
                    "strict": True,
                    "target": "ES2022",
                    "module": "ESNext",
                    "moduleResolution": "Bundler",
                    "skipLibCheck": True,
                    "types": ["node"],
                },
                "files": ["edit.mjs"],
            }
        )
    )
    done = subprocess.run([str(tsc), "-p", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("sample", samples("python"), ids=lambda s: s.name)
def test_every_python_sample_compiles(sample: Sample) -> None:
    compile(sample.code, sample.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.service  # mypy, in a process
def test_the_supabase_py_program_type_checks_against_supabase_py(tmp_path: Path) -> None:
    [program] = samples("python", "usage.md")
    path = tmp_path / "edit.py"
    path.write_text(program.code)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- What the docs state ----------------------------------------------------------------------------------
def test_the_contract_states_the_rules_bounds() -> None:
    contract = (DOCS / "contract.md").read_text()
    stated = [
        f"`num_inference_steps` ({rules.DEFAULT_STEPS}, {rules.MIN_STEPS}–{rules.MAX_STEPS})",
        f"`prompt` (1–{rules.MAX_PROMPT_BYTES:,} bytes of UTF-8 in NFC form)",
        f"`input_paths` (1–{rules.MAX_IMAGES} object paths",
        f"multiples of {rules.SIZE_MULTIPLE}, {rules.MIN_OUTPUT_SIDE}–{rules.MAX_OUTPUT_SIDE}, "
        f"at most {rules.MAX_OUTPUT_PIXELS // 2**20} MP",
        f"`true_cfg_scale` ({rules.DEFAULT_TRUE_CFG_SCALE})",
        f"`guidance_scale` ({rules.DEFAULT_GUIDANCE_SCALE})",
        f"`max_attempts` ({rules.DEFAULT_MAX_ATTEMPTS})",
        f"step 1–{rules.MAX_STEPS}",
    ]
    flat = " ".join(contract.split())
    missing = [fact for fact in stated if fact not in flat]
    assert missing == [], f"docs/contract.md no longer says: {missing}"


@pytest.mark.model  # speed_options reads the diffusers adapter's presets: torch
def test_the_samples_ask_only_for_speeds_a_default_set_up_runs() -> None:
    # batches.md's sample asked for speed 'fast', which needs LIGHTNING_8STEP_LORA: on a default
    # set-up every request of the batch failed with speed_unavailable.
    from processor.composition import speed_options
    from processor.settings import Settings

    available = {"quality", *speed_options(Settings(_env_file=None))["lightning"]}
    asked = {
        (sample.name, speed)
        for language in ("js", "python", "sh")
        for sample in samples(language)
        if sample.doc != "speed.md"  # the page that says how to configure them
        for speed in re.findall(r"""["']?speed["']?\s*[:=]\s*["'](\w+)["']""", sample.code)
    }
    assert {(name, speed) for name, speed in asked if speed not in available} == set()
