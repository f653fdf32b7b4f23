"""One registry of output formats for rows (list of dicts), used by the CLI and the HTTP API."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from neuronindex.errors import UsageError

TEXT_FORMATS = ("table", "csv", "json", "jsonl")
FORMATS = TEXT_FORMATS + ("parquet",)


def plain(value):
    """A value of any DuckDB type as JSON-able Python: numbers stay numbers (DECIMAL as a float,
    HUGEINT as an exact int; NaN and infinities as null), UUID, ENUM and BIT as text, INTERVAL as
    an ISO 8601 duration, dates and times in ISO 8601, BLOB as its size, LIST / ARRAY / STRUCT /
    MAP / UNION element by element."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Decimal):
        return plain(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, timedelta):
        seconds = value.seconds + value.microseconds / 1e6
        return f"P{value.days}DT{seconds:g}S"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    return str(value)  # UUID, and whatever a later DuckDB adds


def to_json(rows: Sequence[dict], **extra) -> str:
    if extra:
        return json.dumps({**extra, "rows": [{k: plain(v) for k, v in r.items()} for r in rows]}, indent=2)
    return json.dumps([{k: plain(v) for k, v in r.items()} for r in rows], indent=2)


def to_jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps({k: plain(v) for k, v in r.items()}) + "\n" for r in rows)


def to_csv(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else _cell(plain(r.get(c))) for c in columns])
    return buf.getvalue()


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def to_table(rows: Sequence[dict], columns: Sequence[str] | None = None, max_width: int = 48) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    if not columns:
        return "(no rows)\n"
    cells = [[_short(_cell(plain(r.get(c))), max_width) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines) + "\n"


def _short(v, width: int) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def to_parquet_bytes(rows: Sequence[dict]) -> bytes:
    table = pa.Table.from_pylist([{k: plain(v) for k, v in r.items()} for r in rows])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def render(rows: Sequence[dict], fmt: str, columns: Sequence[str] | None = None) -> str | bytes:
    if fmt == "table":
        return to_table(rows, columns)
    if fmt == "csv":
        return to_csv(rows, columns)
    if fmt == "json":
        return to_json(rows)
    if fmt == "jsonl":
        return to_jsonl(rows)
    if fmt == "parquet":
        return to_parquet_bytes(rows)
    raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
