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


def _copy_index(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_small_publish_writes_in_place_when_no_reader_has_the_index(hierarchy_index, tmp_path):
    """A hierarchy published with nobody reading: the file keeps its inode (no copy was renamed
    into place), no staging file appears, and the new rows are there for the next reader."""
    import os

    import neuronindex
    from neuronindex.jobs.categories import publish_hierarchy

    index = _copy_index(hierarchy_index, tmp_path / "index")
    db = index / "index.duckdb"
    before = os.stat(db).st_ino
    made = publish_hierarchy(index, layer="conv1", pooling="max")
    assert os.stat(db).st_ino == before and not list(index.glob(".staging-*"))
    with neuronindex.open(index) as idx:
        assert idx.categories(layer="conv1", pooling="max").meta["layer"] == made["layer"] == "conv1"


def test_small_publish_copies_while_a_reader_has_the_index_open(hierarchy_index, tmp_path):
    """With a reader open the publish stages a copy (a new inode) and the reader keeps its version."""
    import os

    import neuronindex
    from neuronindex.jobs.categories import publish_hierarchy

    index = _copy_index(hierarchy_index, tmp_path / "index")
    db = index / "index.duckdb"
    before = os.stat(db).st_ino
    with neuronindex.open(index) as reader:
        count = reader.query("SELECT count(*) AS n FROM hierarchies").rows()[0]["n"]
        publish_hierarchy(index, layer="conv1", pooling="max")
        assert os.stat(db).st_ino != before  # the staged copy took the file's place
        assert reader.query("SELECT count(*) AS n FROM hierarchies").rows()[0]["n"] == count
    with neuronindex.open(index) as after:
        assert after.query("SELECT count(*) AS n FROM hierarchies").rows()[0]["n"] == count + 1


def test_small_publish_in_place_that_fails_changes_nothing(hierarchy_index, tmp_path):
    import os

    index = _copy_index(hierarchy_index, tmp_path / "index")
    con = store.connect(index)
    before = con.execute("SELECT count(*) FROM hierarchies").fetchone()[0]
    con.close()
    inode = os.stat(index / "index.duckdb").st_ino
    with pytest.raises(RuntimeError):
        with store.staged(index, small=True) as w:
            w.execute("DELETE FROM hierarchy_nodes")
            w.execute("DELETE FROM hierarchies")
            raise RuntimeError("stopped half-way")
    assert os.stat(index / "index.duckdb").st_ino == inode
    con = store.connect(index)
    assert con.execute("SELECT count(*) FROM hierarchies").fetchone()[0] == before > 0
    con.close()


def test_a_reader_opening_during_a_publish_in_place_waits_for_its_commit(hierarchy_index, tmp_path):
    """Another process opening the index while a small publish holds it: it waits, then reads
    the committed rows (no error, no half-written state)."""
    import subprocess
    import sys
    import threading

    index = _copy_index(hierarchy_index, tmp_path / "index")
    entered, release = threading.Event(), threading.Event()

    def write():
        with store.staged(index, small=True) as w:
            w.execute("DELETE FROM class_distances")
            entered.set()
            release.wait(30)

    t = threading.Thread(target=write)
    t.start()
    assert entered.wait(30)
    reader = subprocess.Popen([sys.executable, "-c",
                               "import sys; from neuronindex import store; con = store.connect(sys.argv[1]); "
                               "print(con.execute('SELECT count(*) FROM class_distances').fetchone()[0])", str(index)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    release.set()  # the reader, started while the writer held DuckDB's lock, waited for the commit
    t.join(30)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert out.strip() == "0"
