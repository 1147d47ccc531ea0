"""What a database is, read from its catalog: enough to tell two builds of one schema apart.

``snapshot(conn)`` describes every object outside PostgreSQL's own schemas (tables, columns,
constraints, indexes, views, sequences, functions, triggers, policies, grants, default privileges,
publications, types, extensions, comments) and the rows of every table, as
``{object: {aspect: text}}``. ``differences(a, b)`` says, object by object and aspect by aspect,
what differs between two snapshots, in words a reader can act on.

Objects that belong to an extension are described by the extension alone (its version), and
values that differ between any two builds (``now()``, random ids, the database's own name) are
left out of the rows.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

Catalog = dict[str, dict[str, str]]

# Schemas PostgreSQL owns; everything else (ours, and the platform's auth and storage) is compared.
_IN_SCOPE = """
    n.nspname not in ('pg_catalog', 'information_schema')
    and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
"""
_NOT_FROM_AN_EXTENSION = """
    not exists (select 1 from pg_depend e
                 where e.classid = {catalog}::regclass and e.objid = {oid} and e.deptype = 'e')
"""


def _privileges(acl: str, kind: str, owner: str) -> str:
    """Who holds what, from an ACL (its default when null), sorted: the order of grants is no difference."""
    return f"""
    coalesce((select string_agg(g.held, '; ' order by g.held)
                from (select format('%s: %s', case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
                                    string_agg(a.privilege_type || case when a.is_grantable then ' (grantable)' else '' end,
                                               ' ' order by a.privilege_type)) as held
                        from aclexplode(coalesce({acl}, acldefault('{kind}', {owner}))) as a
                       group by a.grantee) as g), '')
    """


QUERIES: dict[str, str] = {
    "schema": f"""
        select format('schema %I', n.nspname) as key,
               pg_get_userbyid(n.nspowner) as owner,
               {_privileges("n.nspacl", "n", "n.nspowner")} as privileges,
               obj_description(n.oid, 'pg_namespace') as comment
          from pg_namespace n
         where {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_namespace'", oid="n.oid")}
    """,
    "extension": """
        select format('extension %I', x.extname) as key, x.extversion as version,
               x.extnamespace::regnamespace::text as schema
          from pg_extension x
    """,
    "relation": f"""
        select format('%s %I.%I', case c.relkind when 'r' then 'table' when 'p' then 'table'
                                                when 'v' then 'view' when 'm' then 'materialized view'
                                                when 'S' then 'sequence' when 'f' then 'foreign table' end,
                      n.nspname, c.relname) as key,
               c.relkind::text as kind,
               pg_get_userbyid(c.relowner) as owner,
               case c.relpersistence when 'p' then 'permanent' when 'u' then 'unlogged'
                                     when 't' then 'temporary' end as persistence,
               c.relrowsecurity::text as "row level security",
               c.relforcerowsecurity::text as "row level security forced",
               case c.relreplident when 'd' then 'default' when 'f' then 'full' when 'n' then 'nothing'
                                   when 'i' then 'index' end as "replica identity",
               coalesce(array_to_string(c.reloptions, ', '), '') as options,
               {_privileges("c.relacl", "r", "c.relowner")} as privileges,
               obj_description(c.oid, 'pg_class') as comment,
               case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid, true) end as definition,
               (select format('%s start %s increment %s min %s max %s cache %s cycle %s',
                              s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                              s.seqcache, s.seqcycle)
                  from pg_sequence s where s.seqrelid = c.oid) as sequence
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
    """,
    "column": f"""
        select format('column %I.%I.%I', n.nspname, c.relname, a.attname) as key,
               (row_number() over (partition by c.oid order by a.attnum))::text as position,
               format_type(a.atttypid, a.atttypmod) as type,
               a.attnotnull::text as "not null",
               case when a.attgenerated = '' then pg_get_expr(d.adbin, d.adrelid) end as default,
               case when a.attgenerated <> '' then pg_get_expr(d.adbin, d.adrelid) end as generated,
               a.attidentity::text as identity,
               coalesce(co.collname, '') as collation,
               case when a.attacl is null then ''
                    else {_privileges("a.attacl", "c", "c.relowner")} end as privileges,
               col_description(c.oid, a.attnum) as comment
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
          left join pg_collation co on co.oid = a.attcollation and a.attcollation <> 100  -- 100: default
         where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f')
           and {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
    """,
    "constraint": f"""
        select format('constraint %s on %s', quote_ident(k.conname),
                      case when k.conrelid <> 0 then k.conrelid::regclass::text
                           else 'domain ' || k.contypid::regtype::text end) as key,
               k.contype::text as type,
               pg_get_constraintdef(k.oid, true) as definition,
               k.condeferrable::text as deferrable,
               k.condeferred::text as deferred,
               k.convalidated::text as validated,
               obj_description(k.oid, 'pg_constraint') as comment
          from pg_constraint k join pg_namespace n on n.oid = k.connamespace
         where {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_class'", oid="k.conrelid")}
    """,
    "index": f"""
        select format('index %I.%I', n.nspname, c.relname) as key,
               pg_get_indexdef(i.indexrelid) as definition,
               obj_description(c.oid, 'pg_class') as comment
          from pg_index i
          join pg_class c on c.oid = i.indexrelid
          join pg_namespace n on n.oid = c.relnamespace
         where {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_class'", oid="i.indrelid")}
    """,
    "function": f"""
        select format('%s %I.%I(%s)', case p.prokind when 'p' then 'procedure' else 'function' end,
                      n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) as key,
               case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid)
                    else format('%s returning %s', p.prokind, p.prorettype::regtype) end as definition,
               pg_get_userbyid(p.proowner) as owner,
               {_privileges("p.proacl", "f", "p.proowner")} as privileges,
               obj_description(p.oid, 'pg_proc') as comment
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")}
    """,
    "trigger": f"""
        select format('trigger %I on %s', t.tgname, t.tgrelid::regclass) as key,
               pg_get_triggerdef(t.oid, true) as definition,
               case t.tgenabled when 'O' then 'enabled' when 'D' then 'disabled'
                                when 'R' then 'enabled on replica only' when 'A' then 'enabled always' end
                 as state,
               obj_description(t.oid, 'pg_trigger') as comment
          from pg_trigger t
          join pg_class c on c.oid = t.tgrelid
          join pg_namespace n on n.oid = c.relnamespace
         where not t.tgisinternal and {_IN_SCOPE}
    """,
    "event trigger": """
        select format('event trigger %I', e.evtname) as key, e.evtevent as event,
               e.evtfoid::regprocedure::text as function, e.evtenabled::text as state,
               coalesce(array_to_string(e.evttags, ', '), '') as tags
          from pg_event_trigger e
    """,
    "policy": f"""
        select format('policy %I on %s', p.polname, p.polrelid::regclass) as key,
               case when p.polpermissive then 'permissive' else 'restrictive' end as kind,
               case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
                             when 'd' then 'delete' when '*' then 'all' end as command,
               (select string_agg(g.name, ', ' order by g.name)
                  from (select case when r = 0 then 'PUBLIC' else pg_get_userbyid(r) end as name
                          from unnest(p.polroles) as r) as g) as roles,
               pg_get_expr(p.polqual, p.polrelid) as using,
               pg_get_expr(p.polwithcheck, p.polrelid) as "with check",
               obj_description(p.oid, 'pg_policy') as comment
          from pg_policy p
          join pg_class c on c.oid = p.polrelid
          join pg_namespace n on n.oid = c.relnamespace
         where {_IN_SCOPE}
    """,
    "publication": """
        select format('publication %I', p.pubname) as key, pg_get_userbyid(p.pubowner) as owner,
               format('all tables %s, insert %s, update %s, delete %s, truncate %s, via root %s',
                      p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot)
                 as publishes
          from pg_publication p
    """,
    "publication member": """
        select format('table %I.%I in publication %I', t.schemaname, t.tablename, t.pubname) as key,
               coalesce(array_to_string(t.attnames, ', '), '') as columns,
               coalesce(t.rowfilter, '') as "row filter"
          from pg_publication_tables t
    """,
    "type": f"""
        select format('type %s', t.oid::regtype) as key,
               t.typtype::text as kind,
               pg_get_userbyid(t.typowner) as owner,
               case t.typtype
                 when 'e' then (select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder)
                                  from pg_enum e where e.enumtypid = t.oid)
                 when 'd' then format('%s%s default %s', format_type(t.typbasetype, t.typtypmod),
                                      case when t.typnotnull then ' not null' else '' end,
                                      coalesce(t.typdefault, 'none'))
                 when 'c' then (select string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)),
                                                  ', ' order by a.attnum)
                                  from pg_attribute a where a.attrelid = t.typrelid and a.attnum > 0
                                   and not a.attisdropped)
               end as definition,
               {_privileges("t.typacl", "T", "t.typowner")} as privileges,
               obj_description(t.oid, 'pg_type') as comment
          from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where (t.typtype in ('e', 'd', 'r', 'm')
                or (t.typtype = 'c' and (select c.relkind from pg_class c where c.oid = t.typrelid) = 'c'))
           and {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_type'", oid="t.oid")}
    """,
    "default privileges": f"""
        select format('default privileges of %s in %s on %s', pg_get_userbyid(d.defaclrole),
                      case when d.defaclnamespace = 0 then 'every schema'
                           else 'schema ' || d.defaclnamespace::regnamespace::text end,
                      case d.defaclobjtype when 'r' then 'tables' when 'S' then 'sequences'
                                           when 'f' then 'functions' when 'T' then 'types'
                                           when 'n' then 'schemas' end) as key,
               {_privileges("d.defaclacl", "r", "d.defaclrole")} as privileges
          from pg_default_acl d
    """,
}

# Row values that differ between any two builds, whatever the SQL: times, random ids, the database's
# own name (a column default that calls one of these is left out of the compared rows).
_VOLATILE_DEFAULT = r"now\(\)|CURRENT_(TIMESTAMP|DATE|TIME)|clock_timestamp|gen_random_uuid|random\("


def snapshot(dsn: str) -> Catalog:
    """Every object outside PostgreSQL's own schemas, and the rows of every table."""
    catalog: Catalog = {}
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        conn.execute("set search_path = ''")  # every name in the descriptions schema-qualified
        for query in QUERIES.values():
            for row in conn.execute(query).fetchall():
                key = row.pop("key")
                assert key not in catalog, f"two objects described as {key}"
                catalog[key] = {aspect: "" if value is None else str(value) for aspect, value in row.items()}
        for key, rows in _rows(conn).items():
            catalog[key] = {"rows": rows}
    return catalog


def _rows(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, str]:
    tables = conn.execute(
        f"""
        select format('%I.%I', n.nspname, c.relname) as name,
               coalesce(array_agg(a.attname::text) filter (
                 where pg_get_expr(d.adbin, d.adrelid) ~ '{_VOLATILE_DEFAULT}'), '{{}}') as volatile
          from pg_class c
          join pg_namespace n on n.oid = c.relnamespace
          join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relkind in ('r', 'p') and {_IN_SCOPE}
           and {_NOT_FROM_AN_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
         group by 1
        """
    ).fetchall()
    database = conn.info.dbname
    described: dict[str, str] = {}
    for table in tables:
        records = []
        for row in conn.execute(f"select to_jsonb(t) as record from {table['name']} as t").fetchall():
            kept = {
                column: value for column, value in row["record"].items() if column not in table["volatile"]
            }
            records.append(json.dumps(kept, sort_keys=True).replace(database, "<database>"))
        described[f"rows of {table['name']}"] = "\n".join(sorted(records))
    return described


def differences(before: Catalog, after: Catalog, *, names: tuple[str, str]) -> list[str]:
    """Each difference as one readable entry: the object, the aspect, and both values."""
    first, second = names
    found = [f"{key}: only in {first}" for key in sorted(before.keys() - after.keys())]
    found += [f"{key}: only in {second}" for key in sorted(after.keys() - before.keys())]
    for key in sorted(before.keys() & after.keys()):
        for aspect in sorted(before[key].keys() | after[key].keys()):
            old, new = before[key].get(aspect, ""), after[key].get(aspect, "")
            if old == new:
                continue
            if "\n" in old or "\n" in new:
                diff = difflib.unified_diff(
                    old.splitlines(), new.splitlines(), fromfile=first, tofile=second, lineterm="", n=2
                )
                found.append(f"{key}, {aspect}:\n    " + "\n    ".join(diff))
            else:
                found.append(f"{key}, {aspect}:\n    {first}: {old!r}\n    {second}: {new!r}")
    return found
