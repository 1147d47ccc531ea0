"""Nothing dead and nothing open by default among the database's functions.

PostgREST offers every function a role may execute as ``POST /rest/v1/rpc/<name>``, and PostgreSQL
lets PUBLIC execute every new function unless told otherwise (Supabase adds anon, authenticated and
service_role through default privileges). So each function states who may run it, and the set a
caller without a session (``anon``) or a signed-in user (``authenticated``) may run is pinned
below, each entry with its reason. A function that nothing calls (no trigger, constraint, default,
policy, view, cron job, other function, nor a caller outside the database) is dead: a superseded
version left behind, still executable, that readers take for the real one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]

# Called from outside the database, and by whom. Every other function must be reached from these
# or from the database's own uses of functions.
ENTRY_POINTS = {
    "claim_edit_request": "the processor (queue adapter)",
    "claim_edit_request_ahead": "the processor (queue adapter: claiming ahead, docs/worker.md)",
    "heartbeat_edit_request": "the processor",
    "complete_edit_request": "the processor",
    "fail_edit_request": "the processor",
    "release_edit_request": "the processor (graceful shutdown)",
    "preview_edit_request": "the processor (live previews)",
    "requeue_expired_edit_requests": "the processor's sweep and pg_cron",
    "ensure_edit_request_sweep": "the processor at start-up, the set-up after enabling pg_cron",
    "edit_request_sweep_status": "operators (docs/supabase-fidelity.md)",
    "edit_request_queue_stats": "the processor's /metrics",
    "set_edit_request_watches": "the processor's waits and event streams",
    "edit_request_retry_after": "the REST API's Retry-After of a quota refusal",
    "edit_request_admission_check": "REST and MCP, before they decode or upload an image",
    "claim_edit_webhook_deliveries": "the processor's webhook sender",
    "complete_edit_webhook_delivery": "the processor's webhook sender",
    "fail_edit_webhook_delivery": "the processor's webhook sender",
    "replay_edit_webhook_delivery": "operators (docs/webhooks.md)",
    "edit_retention_candidates": "the processor's retention loop",
    "edit_retention_mark": "the processor's retention loop",
    "edit_retention_release": "the processor's retention loop",
    "retry_edit_request": "operators (docs/contract.md)",
    "cancel_edit_request": "apps and the processor's REST and MCP ways in",
    "cancel_edit_batch": "apps and the processor's REST and MCP ways in",
    "rotate_edit_webhook_secret": "apps (docs/webhooks.md)",
    "edit_request_autoscaler_counts": "KEDA's PostgreSQL scaler (docs/kubernetes.md)",
}

# What anon may execute: nothing (docs/contract.md: "anon gets nothing").
ANON: dict[str, str] = {}

# What a signed-in user may execute, and why. A CHECK constraint, a generated column or a policy
# calls its functions with the privileges of whoever writes the row, so those are here too.
AUTHENTICATED = {
    "cancel_edit_request": "users cancel their own requests (docs/contract.md)",
    "cancel_edit_batch": "users cancel their own batches (docs/batches.md)",
    "rotate_edit_webhook_secret": "users rotate their endpoints' secrets (docs/webhooks.md)",
    "edit_request_paths_valid": "CHECK edit_requests_input_paths_valid, on users' inserts",
    "edit_request_reason_codes": "CHECK edit_requests_error_code_known, on users' inserts",
    "edit_request_loras_valid": "CHECK edit_requests_loras_valid, on users' inserts",
    "edit_request_reason_message": "the generated column edit_requests.error_message, on users' inserts",
    "edit_request_paths_owned": "the policy 'users create their own edit requests'",
    "edit_request_cost": "a pure rule apps may price a request with before inserting it (docs/fair-sharing.md)",
    "edit_request_run_cost": "edit_request_cost calls it (inlined, but only for a caller who may execute it)",
    "edit_request_retry_after": "Retry-After of a refused insert, from the caller's own limits and usage",
    "edit_request_admission_check": "whether an insert would pass the caller's own limits, asked first",
    "edit_input_space_refusal": "the policies 'edit inputs: users upload to / overwrite in their folder'",
    "edit_user_limits_of": "edit_request_retry_after runs as the caller; apps read their own limits",
    "edit_user_usage_now": "edit_request_retry_after runs as the caller and rolls their usage to this hour",
    "edit_webhook_max_attempts": "a pure rule apps may read (mirrors rules.WEBHOOK_MAX_ATTEMPTS)",
    "edit_webhook_max_endpoints": "a pure rule apps may read (mirrors rules.WEBHOOK_MAX_ENDPOINTS_PER_USER)",
    "edit_webhook_url_host": "a pure rule apps may check a URL's shape with (mirrors rules.WEBHOOK_URL_PATTERN)",
}

FUNCTIONS = """
select p.oid, p.proname as name, p.prosrc as source,
       format('%I(%s)', p.proname, pg_get_function_identity_arguments(p.oid)) as signature,
       exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public,
       has_function_privilege('anon', p.oid, 'EXECUTE') as anon,
       has_function_privilege('authenticated', p.oid, 'EXECUTE') as authenticated,
       has_function_privilege('service_role', p.oid, 'EXECUTE') as service_role
  from pg_proc p
 where p.pronamespace = 'public'::regnamespace
   and not exists (select 1 from pg_depend e
                    where e.classid = 'pg_proc'::regclass and e.objid = p.oid and e.deptype = 'e')
"""

# Functions a trigger, a constraint, a column default or generated column, a policy, a view or an
# index expression depends on (PostgreSQL records those dependencies; function bodies it does not).
USED_BY_THE_SCHEMA = """
select distinct d.refobjid as oid
  from pg_depend d
 where d.refclassid = 'pg_proc'::regclass and d.classid <> 'pg_proc'::regclass and d.deptype = 'n'
"""


def functions(db: psycopg.Connection[Row]) -> list[Row]:
    return db.execute(FUNCTIONS).fetchall()


def test_no_function_is_executable_by_public(db: psycopg.Connection[Row]) -> None:
    """Each function names who may run it; PUBLIC (every role, present and future) is never one."""
    open_to_all = sorted(row["signature"] for row in functions(db) if row["public"])
    assert open_to_all == [], (
        "executable by PUBLIC (revoke execute ... from public, then grant to the roles that need it): "
        + ", ".join(open_to_all)
    )


def test_anon_executes_only_what_the_contract_gives_it(db: psycopg.Connection[Row]) -> None:
    granted = {row["name"] for row in functions(db) if row["anon"]}
    assert granted == set(ANON), (
        f"anon may execute, unlisted: {sorted(granted - set(ANON))}; listed but refused: {sorted(set(ANON) - granted)}"
    )


def test_signed_in_users_execute_only_the_listed_functions(db: psycopg.Connection[Row]) -> None:
    granted = {row["name"] for row in functions(db) if row["authenticated"]}
    assert granted == set(AUTHENTICATED), (
        f"authenticated may execute, unlisted: {sorted(granted - set(AUTHENTICATED))}; "
        f"listed but refused: {sorted(set(AUTHENTICATED) - granted)}"
    )


def test_every_function_is_used(db: psycopg.Connection[Row]) -> None:
    """Reached from an entry point or the schema's own uses, through the bodies of what is reached."""
    rows = functions(db)
    by_name = {row["name"]: row for row in rows}
    assert len(by_name) == len(rows), "overloaded names: this test matches bodies by name"
    schema_uses = {row["oid"] for row in db.execute(USED_BY_THE_SCHEMA).fetchall()}
    reached = {row["name"] for row in rows if row["oid"] in schema_uses} | (
        ENTRY_POINTS.keys() & by_name.keys()
    )
    if db.execute("select to_regclass('cron.job') is not null as cron").fetchone() == {"cron": True}:
        commands = " ".join(row["command"] for row in db.execute("select command from cron.job").fetchall())
        reached |= {name for name in by_name if re.search(rf"\b{name}\b", commands)}
    frontier = set(reached)
    while frontier:
        # Comments are stripped: a body that mentions a function in a comment does not call it.
        code = " ".join(re.sub(r"--[^\n]*", "", by_name[name]["source"]) for name in frontier)
        frontier = {name for name in by_name.keys() - reached if re.search(rf"\b{name}\b", code)}
        reached |= frontier
    unused = sorted(by_name[name]["signature"] for name in by_name.keys() - reached)
    assert unused == [], f"functions nothing uses (drop them in a migration and the schema files): {unused}"


def test_every_entry_point_exists_and_its_caller_names_it(db: psycopg.Connection[Row]) -> None:
    """The list above cannot keep a function alive after its callers are gone."""
    existing = {row["name"] for row in functions(db)}
    assert ENTRY_POINTS.keys() <= existing, (
        f"entry points that do not exist: {sorted(ENTRY_POINTS.keys() - existing)}"
    )
    callers = "\n".join(
        path.read_text() for pattern in ("processor/**/*.py", "docs/*.md") for path in ROOT.glob(pattern)
    )
    unnamed = sorted(name for name in ENTRY_POINTS if not re.search(rf"\b{name}\b", callers))
    assert unnamed == [], f"entry points neither the processor nor the docs name: {unnamed}"


def test_the_service_role_executes_every_function(db: psycopg.Connection[Row]) -> None:
    """The processor's and operators' role; the schema files grant it each function explicitly."""
    refused = sorted(row["signature"] for row in functions(db) if not row["service_role"])
    assert refused == [], f"service_role may not execute: {refused}"
