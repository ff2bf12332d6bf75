"""``etchacell query``: run the named ops queries of ``ops/queries/``."""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from etchacell_loop.cli.context import console, operator_errors, require_schema, state

if TYPE_CHECKING:
    from etchacell_loop.db.queries import NamedQuery, QueryResult

# Figures in a table are read by a person: four significant digits say everything a ratio, a Dice
# or a Gini coefficient can (CSV and JSON keep every digit for the next program).
SIGNIFICANT_DIGITS = 4


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


class SqlTarget(StrEnum):
    PLAIN = "plain"
    GRAFANA = "grafana"
    METABASE = "metabase"


@operator_errors
def query(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="query name (see --list)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the named queries and their parameters")] = False,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="parameter as k=v (repeatable)")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="table, csv or json")] = OutputFormat.TABLE,
    sql: Annotated[
        SqlTarget | None,
        typer.Option("--sql", help="print the SQL instead of running it: plain, grafana or metabase"),
    ] = None,
) -> None:
    """Run a named ops query against the configured database."""
    from etchacell_loop.db.queries import get_query, load_queries, render_sql, run_query

    if list_ or name is None:
        _print_catalogue(load_queries())
        return
    named = get_query(name)
    if sql is not None:
        typer.echo(render_sql(named, sql.value))
        return
    with state(ctx).engine() as engine:
        require_schema(engine)
        result = run_query(engine, named, _parse_params(param or []))
    print_result(named, result, output)


def _parse_params(pairs: list[str]) -> dict[str, str]:
    from etchacell_loop.db.queries import QueryError

    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QueryError(f"--param {pair!r}: expected k=v")
        values[key.strip()] = value.strip()
    return values


def _print_catalogue(queries: dict[str, NamedQuery]) -> None:
    table = Table(title="named queries (ops/queries)", title_justify="left", show_lines=True)
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("what it answers")
    table.add_column("parameters")
    for named in queries.values():
        params = "\n".join(f"{p.name} ({p.type}{', default ' + p.default if p.default else ''})" for p in named.params)
        table.add_row(named.name, f"[bold]{named.title}[/]\n{named.description}", params or "-")
    console.print(table)


def print_result(named: NamedQuery, result: QueryResult, output: OutputFormat = OutputFormat.TABLE) -> None:
    """A named query's result as a table (or JSON, or CSV) on stdout."""
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(result.as_dicts(), indent=2, default=str))
    elif output is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        typer.echo(buffer.getvalue(), nl=False)
    else:
        table = Table(title=named.title, title_justify="left")
        for column in result.columns:
            table.add_column(column, overflow="fold")
        for row in result.rows:
            table.add_row(*(table_cell(v) for v in row))
        console.print(table)
        if not result.rows:
            console.print("[dim](no rows)[/]")


def table_cell(value: Any) -> str:
    """A value as a table shows it: empty for NULL, figures to four significant digits (whole
    numbers of any size stay whole: ``123456``, not ``1.235e+05``), everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, float | Decimal):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if abs(number) >= 10**SIGNIFICANT_DIGITS:
        return f"{number:.0f}"
    return f"{number:.{SIGNIFICANT_DIGITS}g}"
