"""Named, parameterised ops queries: one SQL file each in ``ops/queries/``, portable SQL.

Why files and not Python: the same text is run by ``etchacell query``, shown by the dashboard and
pasted into Grafana or Metabase, so there is one source of truth for every figure operators see.

A file starts with a comment header, then plain SQL using ``:name`` placeholders::

    -- title: Classifications per day
    -- description: What arrived each UTC day, and from how many volunteers.
    -- param: since timestamp = -30d : only classifications created at or after this time
    -- param: workflow_id integer : only this Panoptes workflow (empty: all)
    SELECT ...

A parameter without a default is NULL when not given; the SQL then treats it as "no filter"
(``CAST(:workflow_id AS INTEGER) IS NULL OR ...``). Timestamps accept ISO 8601 or a relative form
``-30d``, ``-12h``, ``-15m``, ``now``.

A figure that portable SQL cannot compute — one read from raw JSON text, where SQLite and PostgreSQL
share no function and a cast fails on the first bad value — names a Python step in its header
(``-- compute: volunteer_effort``, one of :data:`COMPUTATIONS`): the SQL still selects the rows,
portably, and the step turns them into the figures, so ``etchacell query``, ``etchacell status`` and
the dashboard show them through the same path. ``--sql`` then prints the row-selecting SQL with a note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etchacell_loop import effort
from etchacell_loop.db.types import UTCDateTime
from etchacell_loop.resources import queries_dir

ParamType = Literal["timestamp", "integer", "float", "text"]
PARAM_TYPES: tuple[ParamType, ...] = ("timestamp", "integer", "float", "text")
RenderTarget = Literal["plain", "grafana", "metabase"]

_HEADER = re.compile(r"^--\s*(?P<key>title|description|param|compute):\s*(?P<value>.*)$")
_PARAM = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*)\s+(?P<type>\w+)\s*(?:=\s*(?P<default>[^:\s]+))?\s*(?::\s*(?P<help>.*))?$"
)
_RELATIVE = re.compile(r"^-(?P<n>\d+)(?P<unit>[dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_SQLITE_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?$")


class QueryError(Exception):
    """A query file or a parameter value is wrong; the message is one line for the operator."""


Computation = Callable[[Sequence[Mapping[str, Any]]], tuple[tuple[str, ...], list[tuple[Any, ...]]]]
"""A query's Python step: the rows its SQL selected (as dicts) → the figures' columns and rows."""

COMPUTATIONS: Mapping[str, Computation] = {"volunteer_effort": effort.effort_table}
"""The Python steps a query may name with ``-- compute: NAME``, by name."""


@dataclass(frozen=True)
class QueryParam:
    """One declared parameter of a named query."""

    name: str
    type: ParamType
    default: str | None
    help: str = ""


@dataclass(frozen=True)
class NamedQuery:
    """A named ops query: its SQL and what it declares about itself."""

    name: str
    title: str
    description: str
    params: tuple[QueryParam, ...]
    sql: str
    path: Path
    compute: str | None = None  # a step of COMPUTATIONS that turns the selected rows into the figures

    def param(self, name: str) -> QueryParam:
        for candidate in self.params:
            if candidate.name == name:
                return candidate
        known = ", ".join(p.name for p in self.params) or "none"
        raise QueryError(f"{self.name}: unknown parameter {name!r} (parameters: {known})")


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows, values made printable (dates as ISO text, decimals as floats)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def parse_query_file(path: Path) -> NamedQuery:
    """Read one ``.sql`` file into a :class:`NamedQuery`."""
    title = description = ""
    compute: str | None = None
    params: list[QueryParam] = []
    body: list[str] = []
    in_header = True
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _HEADER.match(line.strip()) if in_header else None
        if match is None:
            if in_header and line.strip().startswith("--"):
                continue
            in_header = in_header and not line.strip()
            body.append(line)
            continue
        key, value = match["key"], match["value"].strip()
        if key == "title":
            title = value
        elif key == "description":
            description = f"{description} {value}".strip()
        elif key == "compute":
            compute = _computation_name(value, path, line_no)
        else:
            params.append(_parse_param(value, path, line_no))
    sql = "\n".join(body).strip().rstrip(";")
    if not sql:
        raise QueryError(f"{path}: no SQL after the header")
    _check_placeholders(sql, params, path)
    return NamedQuery(path.stem, title or path.stem, description, tuple(params), sql, path, compute)


def _computation_name(name: str, path: Path, line_no: int) -> str:
    if name not in COMPUTATIONS:
        raise QueryError(f"{path}:{line_no}: unknown compute step {name!r}; known: {', '.join(COMPUTATIONS)}")
    return name


def _parse_param(text: str, path: Path, line_no: int) -> QueryParam:
    match = _PARAM.match(text)
    if match is None or match["type"] not in PARAM_TYPES:
        raise QueryError(
            f"{path}:{line_no}: parameter line should read 'NAME TYPE [= DEFAULT] [: help]' "
            f"with TYPE one of {', '.join(PARAM_TYPES)}"
        )
    param_type: ParamType = match["type"]
    return QueryParam(match["name"], param_type, match["default"], (match["help"] or "").strip())


def _check_placeholders(sql: str, params: Sequence[QueryParam], path: Path) -> None:
    used = set(re.findall(r"(?<![:\w]):([a-z_][a-z0-9_]*)", sql))
    declared = {p.name for p in params}
    if used - declared:
        raise QueryError(f"{path}: placeholders not declared as parameters: {', '.join(sorted(used - declared))}")


def load_queries(directory: Path | None = None) -> dict[str, NamedQuery]:
    """Every named query in ``directory`` (default: the shipped ``ops/queries``), by name."""
    folder = directory or queries_dir()
    return {path.stem: parse_query_file(path) for path in sorted(folder.glob("*.sql"))}


def get_query(name: str, directory: Path | None = None) -> NamedQuery:
    """One named query; an unknown name gets the list of known ones."""
    queries = load_queries(directory)
    if name not in queries:
        raise QueryError(f"no query named {name!r}; known: {', '.join(queries) or 'none'}")
    return queries[name]


def bind_values(query: NamedQuery, given: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """Typed values for every parameter: given text, else the default, else NULL."""
    for name in given:
        query.param(name)
    moment = now or datetime.now(UTC)
    values: dict[str, Any] = {}
    for param in query.params:
        raw = given.get(param.name) or param.default  # "top=" means "the default", not NULL
        values[param.name] = None if raw in (None, "") else _convert(query.name, param, str(raw), moment)
    return values


def _convert(query_name: str, param: QueryParam, raw: str, now: datetime) -> Any:
    try:
        if param.type == "integer":
            return int(raw)
        if param.type == "float":
            return float(raw)
        if param.type == "timestamp":
            return _timestamp(raw, now)
        return raw
    except ValueError:
        raise QueryError(f"{query_name}: parameter {param.name} = {raw!r} is not a valid {param.type}") from None


def _timestamp(raw: str, now: datetime) -> datetime:
    if raw == "now":
        return now
    relative = _RELATIVE.match(raw)
    if relative:
        return now - timedelta(**{_UNITS[relative["unit"]]: int(relative["n"])})
    parsed = datetime.fromisoformat(raw)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def run_query(engine: Engine, query: NamedQuery, given: Mapping[str, str] | None = None) -> QueryResult:
    """Run a named query read-only and return printable rows."""
    values = bind_values(query, given or {})
    statement = sa.text(query.sql).bindparams(*_typed_binds(query))
    with engine.connect() as conn:
        result = conn.execute(statement, values)
        columns = tuple(result.keys())
        if query.compute is not None:
            # the step reads the values as stored (its rows can be many: no printing on the way)
            columns, rows = COMPUTATIONS[query.compute]([dict(zip(columns, row, strict=True)) for row in result])
        else:
            rows = list(result)
        conn.rollback()
    return QueryResult(columns, [tuple(_printable(v) for v in row) for row in rows])


def _typed_binds(query: NamedQuery) -> list[sa.BindParameter[Any]]:
    kinds: dict[ParamType, Any] = {
        "timestamp": UTCDateTime(),
        "integer": sa.BigInteger(),
        "float": sa.Float(),
        "text": sa.Text(),
    }
    placeholders = set(re.findall(r"(?<![:\w]):([a-z_][a-z0-9_]*)", query.sql))
    return [sa.bindparam(p.name, type_=kinds[p.type]) for p in query.params if p.name in placeholders]


def _printable(value: Any) -> Any:
    if isinstance(value, str) and _SQLITE_TIMESTAMP.match(value):
        # SQLite hands stored UTC timestamps back as bare text; show them as PostgreSQL does.
        return datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat()
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def render_sql(query: NamedQuery, target: RenderTarget = "plain") -> str:
    """The SQL ready to paste: ``:name`` becomes ``$name`` (Grafana) or ``{{name}}`` (Metabase). A query
    with a Python step gets a first line saying that this SQL selects its rows, not its figures."""
    pattern = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
    if target == "plain":
        sql = query.sql
    elif target == "grafana":
        sql = pattern.sub(lambda m: f"${m[1]}", query.sql)
    else:
        sql = pattern.sub(lambda m: "{{" + m[1] + "}}", query.sql)
    return f"{computed_note(query)}\n{sql}" if query.compute else sql


def computed_note(query: NamedQuery) -> str:
    """The comment put before the SQL of a query with a Python step."""
    return (
        f"-- the rows behind {query.name}; `etchacell query {query.name}` turns them into its figures "
        f"in Python (step {query.compute!r}), which this SQL alone does not compute"
    )
