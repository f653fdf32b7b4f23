"""Index directory: migrations, version checks, atomic staging."""
from __future__ import annotations

import duckdb
import pytest

from neuronindex import store
from neuronindex.errors import IndexNotFoundError, SchemaVersionError


def test_new_index_records_every_migration(tmp_path):
    with store.staged(tmp_path):
        pass
    con = store.connect(tmp_path)
    rows = con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in store.migrations()]
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"models", "layers", "datasets", "classes", "images", "ingests", "neurons", "topk"} <= tables


def test_older_index_is_refused_then_migrated_in_place(tmp_path):
    con = duckdb.connect(str(tmp_path / "index.duckdb"))
    first = store.migrations()[0]
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)")
    con.execute(first.sql)
    con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [first.version, first.name])
    con.execute("INSERT INTO models (id, name, spec) VALUES (1, 'kept', 'x')")
    con.close()
    with pytest.raises(SchemaVersionError, match="neuronindex migrate"):
        store.connect(tmp_path)
    applied = store.migrate(tmp_path)
    assert [m.version for m in applied] == [m.version for m in store.migrations()[1:]]
    con = store.connect(tmp_path)
    assert con.execute("SELECT name FROM models").fetchall() == [("kept",)]
    assert store.migrate(tmp_path) == []


def test_newer_index_is_refused(tmp_path):
    with store.staged(tmp_path) as con:
        con.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    with pytest.raises(SchemaVersionError, match="newer than this neuronindex"):
        store.connect(tmp_path)


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no index at"):
        store.connect(tmp_path / "nothing")


def test_failed_write_leaves_the_published_index_untouched(tmp_path):
    with store.staged(tmp_path) as con:
        con.execute("INSERT INTO models (id, name, spec) VALUES (1, 'first', 'x')")
    before = (tmp_path / "index.duckdb").read_bytes()
    with pytest.raises(RuntimeError):
        with store.staged(tmp_path) as con:
            con.execute("INSERT INTO models (id, name, spec) VALUES (2, 'second', 'x')")
            raise RuntimeError("crash in the middle")
    assert (tmp_path / "index.duckdb").read_bytes() == before
    # the writer lock file stays (deleting it on release would let two writers lock different files)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".write.lock", "index.duckdb"]


def test_float_lists_match_the_general_arrow_path():
    """The fast list<float32> column (one offsets and one values buffer) stores what the general
    path stores: NaN as NULL, empty vectors, float64 input cast to float32."""
    import numpy as np
    import pyarrow as pa

    from neuronindex.store.writer import _float_lists

    vectors = [np.array([1.5, np.nan, -2], np.float32), np.array([], np.float32), np.arange(4, dtype=np.float64)]
    fast = _float_lists(vectors)
    assert fast.equals(pa.array(vectors, type=pa.list_(pa.float32()), from_pandas=True))
    assert fast.to_pylist() == [[1.5, None, -2.0], [], [0.0, 1.0, 2.0, 3.0]]
