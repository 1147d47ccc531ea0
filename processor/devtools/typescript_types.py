"""TypeScript types of the database for apps, as ``supabase gen types typescript --schema public`` writes them.

``Database['public']['Tables'|'Views'][name]['Row'|'Insert'|'Update'|'Relationships']``,
``['Functions'][name]['Args'|'Returns']``, ``Enums``, ``CompositeTypes``, then the ``Tables``,
``TablesInsert``, ``TablesUpdate``, ``Enums``, ``CompositeTypes`` helpers and ``Constants``: the shape
supabase-js's ``createClient<Database>`` reads. Read from the catalog of a migrated database with
the rules of the CLI's generator (supabase/postgres-meta, src/server/templates/typescript.ts), and
laid out as its formatter (prettier, ``semi: false``) lays them out, so the committed file and the
CLI's output can be compared line by line. ``clients/typescript/database.types.ts`` is this output;
``tests/test_typescript_types.py`` regenerates it from the migrations and compares.

    python -m processor.devtools.typescript_types --out clients/typescript/database.types.ts
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from processor.devtools import localdb

WIDTH = 80  # prettier's printWidth
INDENT = "  "
Row = dict[str, Any]

# --- Types: the CLI's mapping from PostgreSQL type names ----------------------------------------------
_NUMBERS = {"int2", "int4", "int8", "float4", "float8", "numeric"}
_STRINGS = {
    "bytea", "bpchar", "varchar", "date", "text", "citext", "time", "timetz", "timestamp", "timestamptz",
    "uuid", "vector", "interval",
}  # fmt: skip


@dataclass(frozen=True)
class Ref:
    """A TypeScript type written on one line (``string``, ``Json``, ``Database["public"]...``)."""

    text: str


@dataclass
class Obj:
    """An object type literal; ``expanded`` ones stay one member per line, as prettier keeps literals
    the template wrote over several lines."""

    members: list[tuple[str, TsType]] = field(default_factory=list)
    expanded: bool = True
    suffix: str = ""  # "[]" for an array of it


@dataclass(frozen=True)
class Union:
    options: tuple[TsType, ...]


TsType = Ref | Obj | Union


def _identifier(name: str) -> str:
    # prettier's quoteProps "as-needed": quotes stay where the key is not an identifier.
    return name if re.fullmatch(r"[A-Za-z_$][\w$]*", name) else json.dumps(name)


@dataclass
class Catalog:
    """What the generator needs from one schema's catalog."""

    schema: str
    types: dict[int, Row]  # oid -> name, schema, enums, attributes, relation
    relations: list[Row]  # tables and views of the schema
    columns: dict[int, list[Row]]  # relation oid -> columns, by name
    functions: list[Row]
    relationships: list[Row]

    def ts_type(self, name: str) -> str:
        """The CLI's ``pgTypeToTsType``."""
        if name == "bool":
            return "boolean"
        if name in _NUMBERS:
            return "number"
        if name in _STRINGS:
            return "string"
        if name in ("json", "jsonb"):
            return "Json"
        if name == "void":
            return "undefined"
        if name == "record":
            return "Record<string, unknown>"
        if name.startswith("_"):
            return f"{self.ts_type(name[1:])}[]"
        for kind, section in (("enums", "Enums"), ("attributes", "CompositeTypes")):
            found = sorted(
                (t for t in self.types.values() if t["name"] == name and t[kind]),
                key=lambda t: t["schema"] != self.schema,
            )
            if found:
                if found[0]["schema"] == self.schema:
                    return f'Database["{self.schema}"]["{section}"]["{name}"]'
                return " | ".join(json.dumps(v) for v in found[0]["enums"]) if kind == "enums" else "unknown"
        for relation in self.relations:
            if relation["name"] == name:
                section = "Tables" if relation["kind"] == "table" else "Views"
                return f'Database["{self.schema}"]["{section}"]["{name}"]["Row"]'
        return "unknown"

    def column_type(self, column: Row, *, nullable: bool) -> str:
        ts = self.ts_type(column["format"])
        return ts if not nullable or ts in ("unknown", "any") else f"{ts} | null"


def read_catalog(conn: psycopg.Connection[Row], schema: str = "public") -> Catalog:
    """The schema's relations, columns, functions and foreign keys, and every type they may name."""
    types = {
        r["oid"]: r
        for r in conn.execute(
            """select t.oid::int8 as oid, t.typname as name, n.nspname as schema,
                      coalesce((select array_agg(e.enumlabel order by e.enumsortorder)
                                  from pg_enum e where e.enumtypid = t.oid), '{}') as enums,
                      coalesce((select array_agg(a.attname order by a.attnum) from pg_attribute a
                                  join pg_class c on c.oid = a.attrelid
                                 where c.oid = t.typrelid and c.relkind = 'c' and a.attnum > 0
                                   and not a.attisdropped), '{}') as attributes,
                      coalesce((select array_agg(a.atttypid::int8 order by a.attnum) from pg_attribute a
                                  join pg_class c on c.oid = a.attrelid
                                 where c.oid = t.typrelid and c.relkind = 'c' and a.attnum > 0
                                   and not a.attisdropped), '{}') as attribute_types,
                      nullif(t.typrelid, 0)::int8 as relation
                 from pg_type t join pg_namespace n on n.oid = t.typnamespace"""
        )
    }
    relations = conn.execute(
        """select c.oid::int8 as oid, c.relname as name,
                  case when c.relkind in ('r', 'p', 'f') then 'table' else 'view' end as kind,
                  c.relkind = 'v' and (pg_relation_is_updatable(c.oid, false) & 20) = 20 as updatable
             from pg_class c
            where c.relnamespace = %s::regnamespace and c.relkind in ('r', 'p', 'f', 'v', 'm')
              and not c.relispartition
            order by c.relname""",
        (schema,),
    ).fetchall()
    columns: dict[int, list[Row]] = {}
    for column in conn.execute(
        """select a.attrelid::int8 as relation, a.attname as name,
                  coalesce(bt.typname, t.typname) as format,
                  not (a.attnotnull or (t.typtype = 'd' and t.typnotnull)) as nullable,
                  a.atthasdef as has_default, a.attidentity as identity,
                  c.relkind in ('r', 'p') or pg_column_is_updatable(c.oid, a.attnum, false) as updatable
             from pg_attribute a
             join pg_class c on c.oid = a.attrelid
             join pg_type t on t.oid = a.atttypid
             left join pg_type bt on t.typtype = 'd' and bt.oid = t.typbasetype
            where c.relnamespace = %s::regnamespace and a.attnum > 0 and not a.attisdropped
            order by a.attname""",
        (schema,),
    ):
        columns.setdefault(column["relation"], []).append(column)
    functions = conn.execute(
        """select p.oid::int8 as oid, p.proname as name, p.proretset as returns_set,
                  case when p.proretset then nullif(p.prorows, 0) end as rows,
                  p.prorettype::int8 as return_type, nullif(rt.typrelid, 0)::int8 as return_relation,
                  coalesce(p.proargmodes::text[], array_fill('i'::text, array[p.pronargs::int])) as modes,
                  coalesce(p.proargnames, array_fill(''::text, array[cardinality(coalesce(
                    p.proallargtypes, p.proargtypes::oid[]))])) as names,
                  coalesce(p.proallargtypes, p.proargtypes::oid[])::int8[] as arg_types,
                  p.pronargdefaults as defaults,
                  pg_get_function_arguments(p.oid) as signature
             from pg_proc p join pg_type rt on rt.oid = p.prorettype
            where p.pronamespace = %s::regnamespace and p.prokind = 'f'
              and rt.typname not in ('trigger', 'event_trigger')
            order by p.proname, pg_get_function_arguments(p.oid)""",
        (schema,),
    ).fetchall()
    return Catalog(schema, types, relations, columns, functions, _relationships(conn, schema, relations))


def _relationships(conn: psycopg.Connection[Row], schema: str, relations: list[Row]) -> list[Row]:
    """Foreign keys of the schema's tables, and as PostgREST infers them for its views (a view column
    that is a table's column carries that column's keys: the view's top-level ``resorigtbl``/``resorigcol``)."""
    keys = conn.execute(
        """select k.conname as name, n.nspname as schema, c.relname as relation, c.oid::int8 as relation_oid,
                  k.conkey::int[] as keys, rn.nspname as referenced_schema, r.relname as referenced_relation,
                  r.oid::int8 as referenced_oid, k.confkey::int[] as referenced_keys,
                  (select array_agg(a.attname order by u.ord) from unnest(k.conkey) with ordinality u(col, ord)
                     join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.col) as columns,
                  (select array_agg(a.attname order by u.ord) from unnest(k.confkey) with ordinality u(col, ord)
                     join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.col) as referenced_columns,
                  exists (select 1 from pg_constraint u where u.conrelid = k.conrelid and u.contype in ('p', 'u')
                            and u.conkey::int[] = k.conkey::int[]) as one_to_one
             from pg_constraint k
             join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
             join pg_class r on r.oid = k.confrelid join pg_namespace rn on rn.oid = r.relnamespace
            where k.contype = 'f' and k.conparentid = 0 and k.connamespace = %s::regnamespace""",
        (schema,),
    ).fetchall()
    origins = _view_column_origins(conn, [r for r in relations if r["kind"] == "view"])
    found = list(keys)
    for key in keys:
        for view, by_origin in origins.items():
            own = [by_origin.get((key["relation_oid"], col), []) for col in key["keys"]]
            referenced = [by_origin.get((key["referenced_oid"], col), []) for col in key["referenced_keys"]]
            if all(own):  # the view shows the referencing columns: view -> referenced table
                found += [
                    {**key, "schema": schema, "relation": view, "columns": list(cols)}
                    for cols in itertools.product(*own)
                ]
            if all(referenced):  # the view shows the referenced columns: table -> view
                found += [
                    {
                        **key,
                        "referenced_schema": schema,
                        "referenced_relation": view,
                        "referenced_columns": list(cols),
                    }
                    for cols in itertools.product(*referenced)
                ]
    return found


def _view_column_origins(
    conn: psycopg.Connection[Row], views: list[Row]
) -> dict[str, dict[tuple[int, int], list[str]]]:
    """For each view: (table oid, column number) -> the view's columns that are that table column."""
    origins: dict[str, dict[tuple[int, int], list[str]]] = {}
    for view in views:
        rule = conn.execute(
            "select ev_action::text as tree from pg_rewrite where ev_class = %s and rulename = '_RETURN'",
            (view["oid"],),
        ).fetchone()
        if rule is None:
            continue
        by_origin: dict[tuple[int, int], list[str]] = {}
        for entry in _top_level_target_entries(rule["tree"]):
            name = re.search(r":resname (\S+)", entry)
            table = re.search(r":resorigtbl (\d+)", entry)
            column = re.search(r":resorigcol (\d+)", entry)
            if name and table and column and int(table[1]):
                by_origin.setdefault((int(table[1]), int(column[1])), []).append(name[1])
        origins[view["name"]] = by_origin
    return origins


def _top_level_target_entries(tree: str) -> Iterator[str]:
    """The view query's own ``TARGETENTRY`` nodes (not those of subqueries inside it)."""
    start = tree.find(":targetList (")
    depth, entry_start = 0, -1
    for i in range(start + len(":targetList "), len(tree)):
        char = tree[i]
        if char in "({":
            depth += 1
            if char == "{" and depth == 2:
                entry_start = i
        elif char in ")}":
            depth -= 1
            if char == "}" and depth == 1 and entry_start >= 0:
                yield tree[entry_start : i + 1]
            if depth == 0:
                return


# --- The Database type -----------------------------------------------------------------------------
def database_type(catalog: Catalog) -> Obj:
    tables = [r for r in catalog.relations if r["kind"] == "table"]
    views = [r for r in catalog.relations if r["kind"] == "view"]
    schema = Obj(
        [
            ("Tables", _section([(t["name"], _table(catalog, t)) for t in tables])),
            ("Views", _section([(v["name"], _view(catalog, v)) for v in views])),
            ("Functions", _section(_functions(catalog))),
            ("Enums", _section(_enums(catalog))),
            ("CompositeTypes", _section(_composite_types(catalog))),
        ]
    )
    return Obj([(catalog.schema, schema)])


def _section(members: list[tuple[str, TsType]]) -> Obj:
    return Obj(members or [("[_ in never]", Ref("never"))])


def _table(catalog: Catalog, table: Row) -> Obj:
    columns = catalog.columns.get(table["oid"], [])

    def member(column: Row, *, optional: bool) -> tuple[str, TsType]:
        if column["identity"] == "a":
            return (f"{_identifier(column['name'])}?", Ref("never"))
        key = _identifier(column["name"]) + ("?" if optional else "")
        return key, Ref(catalog.column_type(column, nullable=column["nullable"]))

    return Obj(
        [
            (
                "Row",
                Obj(
                    [
                        (_identifier(c["name"]), Ref(catalog.column_type(c, nullable=c["nullable"])))
                        for c in columns
                    ]
                ),
            ),
            (
                "Insert",
                Obj(
                    [
                        member(c, optional=c["nullable"] or bool(c["identity"]) or c["has_default"])
                        for c in columns
                    ]
                ),
            ),
            ("Update", Obj([member(c, optional=True) for c in columns])),
            ("Relationships", _relationships_of(catalog, table["name"])),
        ]
    )


def _view(catalog: Catalog, view: Row) -> Obj:
    columns = catalog.columns.get(view["oid"], [])
    members: list[tuple[str, TsType]] = [
        (
            "Row",
            Obj(
                [
                    (_identifier(c["name"]), Ref(catalog.column_type(c, nullable=c["nullable"])))
                    for c in columns
                ]
            ),
        )
    ]
    if view["updatable"]:
        for name in ("Insert", "Update"):
            members.append(
                (
                    name,
                    Obj(
                        [
                            (
                                f"{_identifier(c['name'])}?",
                                Ref(catalog.column_type(c, nullable=True) if c["updatable"] else "never"),
                            )
                            for c in columns
                        ]
                    ),
                )
            )
    members.append(("Relationships", _relationships_of(catalog, view["name"])))
    return Obj(members)


class Tuple(Obj):
    """``[ {...}, ]``: the relationships, an array of expanded objects."""


def _relationships_of(catalog: Catalog, relation: str) -> TsType:
    mine = sorted(
        (
            r
            for r in catalog.relationships
            if r["schema"] == catalog.schema
            and r["relation"] == relation
            and r["referenced_schema"] == catalog.schema
        ),
        key=lambda r: (r["name"], r["referenced_relation"], json.dumps(r["referenced_columns"])),
    )
    if not mine:
        return Ref("[]")
    return Tuple(
        [
            (
                "",
                Obj(
                    [
                        ("foreignKeyName", Ref(json.dumps(r["name"]))),
                        ("columns", Ref(_string_tuple(r["columns"]))),
                        ("isOneToOne", Ref(json.dumps(r["one_to_one"]))),
                        ("referencedRelation", Ref(json.dumps(r["referenced_relation"]))),
                        ("referencedColumns", Ref(_string_tuple(r["referenced_columns"]))),
                    ]
                ),
            )
            for r in mine
        ]
    )


def _string_tuple(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


@dataclass(frozen=True)
class _Arg:
    name: str
    mode: str  # in, out, inout, variadic, table
    type: int
    has_default: bool


def _args(function: Row) -> list[_Arg]:
    modes = {"i": "in", "o": "out", "b": "inout", "v": "variadic", "t": "table"}
    inputs = [m for m in function["modes"] if m in "ibv"]
    first_default = len(inputs) - function["defaults"]
    args, position = [], 0
    for mode, name, type_oid in zip(function["modes"], function["names"], function["arg_types"], strict=True):
        has_default = False
        if mode in "ibv":
            has_default = position >= first_default
            position += 1
        args.append(_Arg(name, modes[mode], type_oid, has_default))
    return sorted(args, key=lambda a: a.name)


def _functions(catalog: Catalog) -> list[tuple[str, TsType]]:
    relation_names = {r["oid"]: r["name"] for r in catalog.relations}
    members: list[tuple[str, TsType]] = []
    for name, group in itertools.groupby(catalog.functions, key=lambda f: f["name"]):
        signatures: list[TsType] = []
        for function in group:
            args = _args(function)
            inputs = [a for a in args if a.mode in ("in", "inout", "variadic")]
            if any(a.name == "" for a in inputs) and not all(
                a.name or (a.has_default and a.type in (114, 3802, 25)) for a in inputs
            ):
                continue  # PostgREST cannot call it (an unnamed argument of another kind): the CLI leaves it out
            arg_type: TsType = Ref("never")
            if inputs:
                arg_type = Obj(
                    [
                        (
                            _identifier(a.name) + ("?" if a.has_default else ""),
                            Ref(catalog.ts_type(catalog.types[a.type]["name"])),
                        )
                        for a in inputs
                    ],
                    expanded=False,
                )
            returns = _returns(catalog, function, args)
            table = relation_names.get(function["return_relation"]) if function["return_relation"] else None
            many = function["rows"] is not None and function["rows"] > 1
            if function["returns_set"] and not (not many and table is not None):
                returns = _array(returns)
            signature: list[tuple[str, TsType]] = [("Args", arg_type), ("Returns", returns)]
            if table is not None:
                signature.append(
                    (
                        "SetofOptions",
                        Obj(
                            [
                                ("from", Ref('"*"')),
                                ("to", Ref(json.dumps(table))),
                                ("isOneToOne", Ref(json.dumps(not many))),
                                ("isSetofReturn", Ref(json.dumps(function["returns_set"]))),
                            ]
                        ),
                    )
                )
            signatures.append(Obj(signature, expanded=False))
        if signatures:
            members.append(
                (_identifier(name), signatures[0] if len(signatures) == 1 else Union(tuple(signatures)))
            )
    return members


def _returns(catalog: Catalog, function: Row, args: list[_Arg]) -> TsType:
    table_args = [a for a in args if a.mode == "table"]
    if table_args:
        return Obj(
            [(_identifier(a.name), Ref(catalog.ts_type(catalog.types[a.type]["name"]))) for a in table_args]
        )
    relation = next((r for r in catalog.relations if r["oid"] == function["return_relation"]), None)
    if relation is not None:
        columns = catalog.columns.get(relation["oid"], [])
        return Obj(
            [(_identifier(c["name"]), Ref(catalog.column_type(c, nullable=c["nullable"]))) for c in columns]
        )
    returned = catalog.types.get(function["return_type"])
    return Ref(catalog.ts_type(returned["name"]) if returned else "unknown")


def _array(returns: TsType) -> TsType:
    if isinstance(returns, Obj):
        returns.suffix = "[]"
        return returns
    assert isinstance(returns, Ref)
    return Ref(f"({returns.text})[]" if " " in returns.text else f"{returns.text}[]")


def _enums(catalog: Catalog) -> list[tuple[str, TsType]]:
    found = sorted(
        (t for t in catalog.types.values() if t["schema"] == catalog.schema and t["enums"]),
        key=lambda t: t["name"],
    )
    return [(_identifier(t["name"]), Union(tuple(Ref(json.dumps(v)) for v in t["enums"]))) for t in found]


def _composite_types(catalog: Catalog) -> list[tuple[str, TsType]]:
    found = sorted(
        (t for t in catalog.types.values() if t["schema"] == catalog.schema and t["attributes"]),
        key=lambda t: t["name"],
    )
    members: list[tuple[str, TsType]] = []
    for t in found:
        attributes: list[tuple[str, TsType]] = []
        for name, type_oid in zip(t["attributes"], t["attribute_types"], strict=True):
            ts = catalog.ts_type(catalog.types[type_oid]["name"]) if type_oid in catalog.types else "unknown"
            attributes.append((_identifier(name), Ref(ts if ts == "unknown" else f"{ts} | null")))
        members.append((_identifier(t["name"]), Obj(attributes)))
    return members


# --- Layout, as prettier prints the CLI's template ----------------------------------------------------
def _flat(ts: TsType) -> str | None:
    """The one-line form, or None where the type keeps several lines."""
    if isinstance(ts, Ref):
        return ts.text
    if isinstance(ts, Union):
        options = [_flat(o) for o in ts.options]
        return None if None in options else " | ".join(o for o in options if o is not None)
    if ts.expanded or isinstance(ts, Tuple):
        return None
    parts = []
    for key, value in ts.members:
        flat = _flat(value)
        if flat is None:
            return None
        parts.append(f"{key}: {flat}")
    return "{ " + "; ".join(parts) + " }" + ts.suffix


def _lines(key: str, ts: TsType, depth: int) -> list[str]:
    """``key: ts`` at ``depth``, one line where it fits and may."""
    pad = INDENT * depth
    head = f"{pad}{key}: " if key else pad
    flat = _flat(ts)
    if flat is not None and len(head) + len(flat) <= WIDTH:
        return [head + flat]
    if isinstance(ts, Union):
        lines = [head.rstrip()]
        for option in ts.options:
            option_lines = _lines("", option, depth + 1)
            lines.append(INDENT * (depth + 1) + "| " + option_lines[0].strip())
            lines += [INDENT + line for line in option_lines[1:]]
        return lines
    if isinstance(ts, Ref):
        return [head + ts.text]
    if isinstance(ts, Tuple):
        lines = [head + "["]
        for _, element in ts.members:
            element_lines = _lines("", element, depth + 1)
            element_lines[-1] += ","
            lines += element_lines
        return [*lines, pad + "]"]
    if not ts.members:
        return [head + "{}" + ts.suffix]
    lines = [head + "{"]
    for member_key, value in ts.members:
        lines += _lines(member_key, value, depth + 1)
    return [*lines, pad + "}" + ts.suffix]


_PREAMBLE = """\
export type Json =
  | string
  | number
  | boolean
  | null
  | { [key: string]: Json | undefined }
  | Json[]
"""


def _helpers(schema: str) -> str:
    """The helper types and ``Constants`` the CLI writes after ``Database``."""
    db = "DatabaseWithoutInternals"

    def lookup(helper: str, param: str, name: str, section: str, member: str | None) -> str:
        keyed = f'keyof DefaultSchema["{section}"]'
        by_schema = f'{db}[{param}["schema"]]["{section}"]'
        if section == "Tables" and member == "R":
            keyed = 'keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])'
            by_schema = f'({db}[{param}["schema"]]["Tables"] &\n      {db}[{param}["schema"]]["Views"])'
        head = (
            f"export type {helper}<\n"
            f"  {param} extends\n"
            f"    | {keyed}\n"
            f"    | {{ schema: keyof {db} }},\n"
            f"  {name} extends {param} extends {{\n"
            f"    schema: keyof {db}\n"
            f"  }}\n"
        )
        if section == "Tables" and member == "R":
            head += (
                f'    ? keyof ({db}[{param}["schema"]]["Tables"] &\n'
                f'        {db}[{param}["schema"]]["Views"])\n'
            )
        else:
            head += f'    ? keyof {db}[{param}["schema"]]["{section}"]\n'
        head += f"    : never = never,\n> = {param} extends {{\n  schema: keyof {db}\n}}\n"
        if member is None:
            return (
                head
                + f'  ? {db}[{param}["schema"]]["{section}"][{name}]\n'
                + f"  : {param} extends {keyed}\n"
                + f'    ? DefaultSchema["{section}"][{param}]\n'
                + "    : never\n"
            )
        field = {"R": "Row", "I": "Insert", "U": "Update"}[member]
        if section == "Tables" and member == "R":
            return (
                head
                + f"  ? {by_schema}[{name}] extends {{\n      {field}: infer {member}\n    }}\n"
                + f"    ? {member}\n    : never\n"
                + f'  : {param} extends keyof (DefaultSchema["Tables"] &\n        DefaultSchema["Views"])\n'
                + '    ? (DefaultSchema["Tables"] &\n'
                + f'        DefaultSchema["Views"])[{param}] extends {{\n'
                + f"        {field}: infer {member}\n      }}\n"
                + f"      ? {member}\n      : never\n    : never\n"
            )
        return (
            head
            + f"  ? {by_schema}[{name}] extends {{\n      {field}: infer {member}\n    }}\n"
            + f"    ? {member}\n    : never\n"
            + f"  : {param} extends {keyed}\n"
            + f'    ? DefaultSchema["{section}"][{param}] extends {{\n'
            + f"        {field}: infer {member}\n      }}\n"
            + f"      ? {member}\n      : never\n    : never\n"
        )

    return "\n".join(
        [
            f'type {db} = Omit<Database, "__InternalSupabase">\n',
            f'type DefaultSchema = {db}[Extract<keyof Database, "{schema}">]\n',
            lookup("Tables", "DefaultSchemaTableNameOrOptions", "TableName", "Tables", "R"),
            lookup("TablesInsert", "DefaultSchemaTableNameOrOptions", "TableName", "Tables", "I"),
            lookup("TablesUpdate", "DefaultSchemaTableNameOrOptions", "TableName", "Tables", "U"),
            lookup("Enums", "DefaultSchemaEnumNameOrOptions", "EnumName", "Enums", None),
            lookup(
                "CompositeTypes",
                "PublicCompositeTypeNameOrOptions",
                "CompositeTypeName",
                "CompositeTypes",
                None,
            ),
        ]
    )


def _constants(catalog: Catalog) -> str:
    enums = _enums(catalog)
    lines = ["export const Constants = {", f"  {_identifier(catalog.schema)}: {{"]
    if not enums:
        lines.append("    Enums: {},")
    else:
        lines.append("    Enums: {")
        for name, values in enums:
            assert isinstance(values, Union)
            items = [o.text for o in values.options if isinstance(o, Ref)]
            flat = f"      {name}: [{', '.join(items)}],"
            if len(flat) <= WIDTH:
                lines.append(flat)
            else:
                lines += [f"      {name}: [", *(f"        {item}," for item in items), "      ],"]
        lines.append("    },")
    return "\n".join([*lines, "  },", "} as const", ""])


def render(catalog: Catalog) -> str:
    database = "\n".join(_lines("export type Database", database_type(catalog), 0)).replace(
        "export type Database: {", "export type Database = {", 1
    )
    return "\n".join([_PREAMBLE, database, "", _helpers(catalog.schema), _constants(catalog)])


def generate(database_url: str, schema: str = "public") -> str:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return render(read_catalog(conn, schema))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Write here (default: standard output).")
    parser.add_argument(
        "--database-url",
        help="A database with the migrations applied (default: a scratch one built from supabase/migrations).",
    )
    args = parser.parse_args(argv)
    if args.database_url:
        text = generate(args.database_url)
    else:
        admin = localdb.ensure_admin_url(Path(".dev") / "postgres").url
        name = f"qep_types_{uuid.uuid4().hex[:8]}"
        try:
            text = generate(localdb.build_migrated_database(admin, name))
        finally:
            localdb.drop_database(admin, name)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
