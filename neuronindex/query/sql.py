"""Guarded SQL: read-only, one query statement, no file or network access, a time limit, a row cap.

The connection itself is opened read-only with external access disabled and its configuration
locked (store.connect), so ATTACH, COPY, INSTALL/LOAD and file-reading table functions fail
there too; this module refuses everything but SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE /
EXPLAIN before it runs, and interrupts a query that outlives its time limit.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import duckdb

from neuronindex import store
from neuronindex.errors import QueryError, QueryTimeout

ALLOWED = {"SELECT", "EXPLAIN"}


@dataclass
class SQLResult:
    columns: list[str]
    rows: list[dict]
    truncated: bool
    elapsed: float
    extra: dict = field(default_factory=dict)


# functions that read files: the connection refuses files outside the index, but the index's own
# file stays readable to them, so they are refused by name
FILE_FUNCTIONS = re.compile(r"\b(read_\w+|glob|parquet_\w+|sniff_csv|\w*_scan)\s*\(", re.I)


def check(con: duckdb.DuckDBPyConnection, sql: str, max_length: int) -> None:
    """Refuse anything but exactly one read-only query statement that reads no file."""
    if not sql or not sql.strip():
        raise QueryError("empty SQL; pass one SELECT statement")
    if len(sql) > max_length:
        raise QueryError(f"the SQL text has {len(sql):,} characters, more than the {max_length:,} allowed")
    found = FILE_FUNCTIONS.search(sql)
    if found:
        raise QueryError(f"{found.group(1)}() reads files, which queries may not; query the index's tables")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryError(f"expected exactly one statement, got {len(statements)}; run them one at a time")
    try:
        kind = statements[0].type.name
    except ValueError:  # a statement type newer than the Python client's enum (e.g. UPDATE EXTENSIONS)
        kind = "non-query"
    if kind not in ALLOWED:
        raise QueryError(f"only queries are allowed (SELECT, WITH, DESCRIBE, EXPLAIN); this is a {kind} statement")


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params=None, *, time_limit: float, max_rows: int,
            max_length: int) -> SQLResult:
    """One guarded query: checked (`check`), stopped past `time_limit` seconds, at most `max_rows`
    rows (`truncated` says when more were there). The limits come from the caller's Settings."""
    started = time.perf_counter()  # the time limit covers the parse too (and, in the service, the JSON)
    check(con, sql, max_length)
    cursor = store.cursor(con)
    try:
        with store.interrupted_after(cursor, time_limit - (time.perf_counter() - started)):
            result = cursor.execute(sql, params or [])
            columns = [d[0] for d in result.description] if result.description else []
            rows = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise QueryTimeout(f"query interrupted after the {time_limit:g} s time limit; add filters or a LIMIT") from None
    except duckdb.Error as exc:
        if time.perf_counter() - started >= time_limit:
            raise QueryTimeout(f"query interrupted after the {time_limit:g} s time limit; add filters or a LIMIT") from None
        raise QueryError(f"SQL error: {_first_line(exc)}") from None
    finally:
        cursor.close()
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return SQLResult(columns, [dict(zip(columns, r)) for r in rows], truncated, time.perf_counter() - started,
                     {"deadline": started + time_limit})


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def schema(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every table, view and column of the index with its documentation."""
    rows = con.execute(
        "SELECT t.table_name, t.table_type, tc.comment, c.column_name, c.data_type, c.comment "
        "FROM duckdb_columns() c JOIN (SELECT table_name, 'table' AS table_type FROM duckdb_tables() WHERE NOT internal "
        "UNION ALL SELECT view_name, 'view' FROM duckdb_views() WHERE NOT internal) t ON t.table_name = c.table_name "
        "LEFT JOIN (SELECT table_name, comment FROM duckdb_tables() UNION ALL SELECT view_name, comment FROM duckdb_views()) tc "
        "ON tc.table_name = t.table_name WHERE NOT c.internal ORDER BY t.table_type, t.table_name, c.column_index").fetchall()
    return [{"table": r[0], "type": r[1], "table_doc": r[2], "column": r[3], "data_type": r[4], "doc": r[5]} for r in rows]
