"""DuckDB access for an index directory: opening, schema versions, atomic publishing.

An *index directory* (its layout: `directory.IndexDirectory`) holds `index.duckdb` (the source of
truth) and `vectors/` (FAISS files, rebuildable). Readers open the file read-only; writers (ingest, migrate) work on a staged copy
and publish it with an atomic rename, so a reader never sees a half-written index and a failed
write never damages the published one.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import duckdb

from neuronindex.errors import (
    DiskFullError,
    ForeignSQLError,
    IndexBusyError,
    IndexNotFoundError,
    SchemaVersionError,
    UsageError,
    disk_full,
)
from neuronindex.settings import default
from neuronindex.store.directory import INDEX_FILE, IndexDirectory

# the catalog name a reader attaches the index under (queries see its tables unqualified)
CATALOG = "idx"


def reader_config(memory_limit: str | None = None, temp_limit: str | None = None, threads: int | None = None) -> dict:
    """DuckDB settings of a reader's in-memory instance: no extension installs, bounded memory and
    spill (to a private folder under the system's temp directory, not beside the index)."""

    return {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
            "memory_limit": memory_limit or default("reader_memory_limit"),
            "max_temp_directory_size": temp_limit or default("reader_temp_limit"),
            "temp_directory": str(Path(tempfile.gettempdir()) / f"neuronindex-spill-{os.getpid()}"),
            **({"threads": threads} if threads else {})}


def writer_config(stage: Path) -> dict:
    """DuckDB settings of the connection that writes a publish into the staged file `stage`.

    No automatic checkpoints: the publish ends with one. DuckDB's automatic ones (every 16 MB of
    log) rewrote the row groups that later statements appended to, and the freed blocks stayed
    in the file (SqueezeNet: 633 MB for 480 MB of data). One transaction for the whole publish
    avoids that too, but held 400 MB more in memory."""
    return {"memory_limit": default("writer_memory_limit"), "checkpoint_threshold": "1TB",
            "temp_directory": str(stage.with_name(stage.name + ".spill"))}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every schema migration shipped with this package, in order."""
    found = []
    for entry in resources.files("neuronindex_migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def code_version() -> int:
    return migrations()[-1].version


def index_file(directory: str | os.PathLike) -> Path:
    return IndexDirectory(directory).database


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    has = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchone()[0]
    if not has:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def apply_migrations(con: duckdb.DuckDBPyConnection) -> list[Migration]:
    """Bring a writable connection up to the code's schema; each step in its own transaction."""
    execute(
        con, "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    current = schema_version(con)
    _refuse_newer(current)
    applied = []
    for migration in migrations():
        if migration.version <= current:
            continue
        execute(con, "BEGIN TRANSACTION")
        try:
            execute(con, migration.sql)
            execute(
                con, "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            execute(con, "COMMIT")
        except Exception:
            execute(con, "ROLLBACK")
            raise
        applied.append(migration)
    return applied


def _refuse_newer(version: int) -> None:
    if version > code_version():
        raise SchemaVersionError(
            f"this index has schema version {version}, newer than this neuronindex understands "
            f"({code_version()}); upgrade neuronindex (pip install -U neuronindex)"
        )


def connect(directory: str | os.PathLike, memory_limit: str | None = None, temp_limit: str | None = None,
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open an index read-only, checking that its schema matches the code.

    The file is ATTACHed to a private in-memory DuckDB instance rather than opened as the
    instance's own database: DuckDB shares one instance per path within a process, so a second
    `duckdb.connect(path)` after an ingest renamed a new file into place would still read the old
    one. Attached, every connect reads the file published at that moment, and a reader holding an
    older version keeps reading it (the rename leaves its inode alive) until it closes.

    Readers cannot touch files or the network, install extensions, or change these settings:
    external access is switched off and the configuration locked once the file is attached.
    Threads take their own connection with `cursor(con)`.
    """
    path = index_file(directory)
    if not path.is_file():
        raise IndexNotFoundError(
            f"no index at {directory} ({INDEX_FILE} is missing); create one with `neuronindex ingest --index {directory} ...`"
        )
    try:
        con = duckdb.connect(":memory:", config=reader_config(memory_limit, temp_limit, threads))
    except duckdb.Error as exc:
        raise UsageError(f"bad reader limit: {str(exc).splitlines()[0]}; give sizes like 2GB or 512MB") from None
    try:
        _attach_when_free(con, path)
        lock_down(con)
    except duckdb.Error as exc:
        con.close()
        raise IndexNotFoundError(f"cannot open the index at {directory}: {str(exc).splitlines()[0]}") from None
    version = schema_version(con)
    if version != code_version():
        con.close()
    _refuse_newer(version)
    if version < code_version():
        raise SchemaVersionError(
            f"the index at {directory} has schema version {version}, older than this neuronindex "
            f"({code_version()}); upgrade it with `neuronindex migrate {directory}`"
        )
    foreign = foreign_sql(con)
    if foreign:
        con.close()
        raise ForeignSQLError(
            f"the index at {directory} holds SQL that neuronindex did not write ({', '.join(foreign[:4])}"
            f"{', ...' if len(foreign) > 4 else ''}); it is not run. `neuronindex migrate {directory}` rewrites "
            "the views from the schema and drops the macros"
        )
    return con


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No file or network access from SQL (read_text, COPY, ATTACH, replacement scans) and no
    setting changes, for the rest of the connection's life: readers once the index is attached,
    writers as soon as they open their staged file, before any SQL stored in it can run."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


@lru_cache(maxsize=1)
def reference_views() -> dict[str, str]:
    """The views the migrations create, name -> DuckDB's SQL for them (made once per process in an
    empty in-memory database: 0.3 s). The migrations create no macros."""
    with duckdb.connect(":memory:") as ref:
        apply_migrations(ref)
        return dict(execute(ref, "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                                 "AND database_name = current_database()"))


def foreign_sql(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What the open index holds that the migrations did not write: any macro (it could shadow a
    built-in: `CREATE MACRO lower(x) AS ...`, or wrap a file reader) and any view that is not
    exactly one of theirs (a view is SQL that runs on every read)."""
    reference = reference_views()
    macros = [r[0] for r in execute(con, "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal "
                                         "AND database_name = current_database() ORDER BY 1")]
    views = execute(con, "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                         "AND database_name = current_database() ORDER BY 1")
    return [f"macro {m}" for m in macros] + [f"view {v}" for v, sql in views if reference.get(v) != sql]


def restore_sql(con: duckdb.DuckDBPyConnection) -> list[str]:
    """A writer's cure for foreign_sql: drop every macro and every view that is not the
    migrations', then create the migrations' views as they define them. Returns what it replaced."""
    foreign = foreign_sql(con)
    if not foreign:
        return []
    _drop_macros(con)
    for name in (f.split(" ", 1)[1] for f in foreign if f.startswith("view ")):
        execute(con, 'DROP VIEW IF EXISTS "' + name.replace('"', '""') + '"')
    present = {r[0] for r in execute(con, "SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                          "AND database_name = current_database()")}
    for name, sql in reference_views().items():
        if name not in present:
            execute(con, sql)
    return foreign


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A new connection to a reader's instance, for one thread or one request (DuckDB
    connections are not shared between threads; cursors of one instance run queries concurrently)."""
    cur = con.cursor()
    cur.execute(f"USE {CATALOG}")
    return cur


READER_WAIT = 120.0  # seconds a reader waits for a small publish in place to commit


def _attach_when_free(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """_attach, waiting while a small publish writes the file in place (it holds DuckDB's lock
    for the time of one transaction)."""
    deadline = time.monotonic() + READER_WAIT
    while True:
        try:
            return _attach(con, path)
        except duckdb.Error as exc:
            held = "could not set lock" in str(exc).lower() or "unique file handle conflict" in str(exc).lower()
            if not held or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _attach(con: duckdb.DuckDBPyConnection, path: Path, name: str = CATALOG, use: bool = True) -> None:
    """A database file, read-only, as catalog `name` (by default the connection's default catalog)."""
    con.execute(f"ATTACH '{str(path.resolve()).replace(chr(39), chr(39) * 2)}' AS {name} (READ_ONLY)")
    if use:
        con.execute(f"USE {name}")


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """One writer of an index at a time, from staging to publish (an advisory lock on
    DIR/.write.lock, released by the kernel if the holder dies). A second writer waits, saying so
    once, or with wait=False fails at once. Where file locks are not available (not POSIX) there is
    no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    directory = IndexDirectory(directory)
    directory.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise IndexBusyError(f"another process (pid {holder}) is writing {directory}; wait for it to publish, "
                                     "or run again without --no-wait") from None
            import sys

            print(f"waiting for another process (pid {holder}) to publish {directory} ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def staged(directory: str | os.PathLike, wait: bool = True, small: bool = False,
           search: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable copy of the index (or a new one), published atomically when the block succeeds.

    Holds the writer lock from copy to publish, so two writers never lose each other's work; the
    staging files of writers that died are removed. On an exception the staged copy is removed
    and the published index is untouched.

    `small` (a map, a tree, a hierarchy, a batch of optimised images): when no reader has the
    index open and it needs no migration, the block writes into the index itself in one
    transaction instead of into a copy, so the publish costs what it writes, not a copy of the
    file. Readers that open the index meanwhile wait for the commit (`connect`); one killed
    half-way leaves the index as it was (DuckDB's log drops the unfinished transaction). With a
    reader open (a running `neuronindex serve`), the copy is made as above.

    `search=False`: the block changes nothing the search tables are made from (neurons, their
    classes, visualizations), so they are not rebuilt.
    """
    directory = IndexDirectory(directory)
    with writer_lock(directory, wait):
        con = _in_place(directory) if small and default("in_place_publish") and directory.exists() else None
        if con is not None:
            with _published_in_place(directory, con, search) as con:
                yield con
            return
        with _staged(directory, search) as con:
            yield con


def _in_place(directory: IndexDirectory) -> duckdb.DuckDBPyConnection | None:
    """The index opened for writing, when nothing else has it open and it is at the code's schema
    with nothing foreign in it; else None (the caller stages a copy)."""
    try:
        con = duckdb.connect(str(directory.database), config=writer_config(directory.work / "publish"))
    except duckdb.Error:  # a reader holds it (another process's lock, or attached in this process)
        return None
    try:
        lock_down(con)
        if schema_version(con) == code_version() and not foreign_sql(con):
            return con
    except duckdb.Error:
        pass
    con.close()
    return None


@contextlib.contextmanager
def _published_in_place(directory: IndexDirectory, con: duckdb.DuckDBPyConnection,
                        search: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    try:
        execute(con, "BEGIN TRANSACTION")
        try:
            yield con
            if search:
                refresh_search(con)
            execute(con, "COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                execute(con, "ROLLBACK")
            raise
        execute(con, "CHECKPOINT")
    except BaseException as exc:
        if disk_full(exc, directory.path):
            raise DiskFullError(f"no space left on the disk holding {directory}: free space and run again; the "
                                "index is unchanged") from None
        raise
    finally:
        with contextlib.suppress(Exception):
            con.close()
        shutil.rmtree(directory.work / "publish.spill", ignore_errors=True)


@contextlib.contextmanager
def _staged(directory: IndexDirectory, search: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    target = directory.database
    stage = directory.stage()
    _remove(directory.stale_stages())  # we hold the lock: these writers are gone
    con = None
    try:
        if target.exists():
            shutil.copyfile(target, stage)
        con = duckdb.connect(str(stage), config=writer_config(stage))
        # nothing stored in the file runs with file access, and no stored macro shadows a built-in
        lock_down(con)
        _drop_macros(con)
        # a migration, or SQL rewritten from the schema, may change what the search tables hold
        rebuilt = bool(apply_migrations(con)) | bool(restore_sql(con))
        yield con
        if search or rebuilt:
            refresh_search(con)
        execute(con, "CHECKPOINT")
        total, free, block = execute(con, "SELECT total_blocks, free_blocks, block_size FROM pragma_database_size() "
                                          "WHERE database_name = current_database()")[0]
        con.close()
        if free > COMPACT_SHARE * total and free * block > COMPACT_MIN_BYTES:
            _compact(stage)
        os.replace(stage, target)
        _fsync_dir(directory.path)
    except BaseException as exc:
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()
        _remove(directory.path.glob(f"{stage.name}*"))  # the stage, its log, a half-made compact copy
        if disk_full(exc, directory.path):
            raise DiskFullError(f"no space left on the disk holding {directory}: a publish needs room for a copy "
                                f"of the index ({_mb(target)}) and what it adds; free space and run again (an ingest "
                                "continues with --resume); the published index is unchanged") from None
        raise
    finally:
        shutil.rmtree(stage.with_name(stage.name + ".spill"), ignore_errors=True)


COMPACT_SHARE = 0.1  # free blocks above this share of the file (and above COMPACT_MIN_BYTES): compact it
COMPACT_MIN_BYTES = 4 * 2**20


def _remove(paths) -> None:
    """Delete files and folders, whatever is already gone."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def interrupted_after(con: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    """Interrupt what `con` runs once `seconds` have passed (DuckDB then raises InterruptException);
    the time limits of user SQL and of searches."""
    timer = threading.Timer(max(0.0, seconds), con.interrupt)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _compact(stage: Path) -> None:
    """Rewrite the staged file without its free blocks (a recompute replaces most rows; DuckDB
    reuses freed blocks but never gives them back): the schema, comments and rows copied into a
    fresh file, which takes the stage's place. The stage holds only the migrations' SQL by now
    (restore_sql), and the copy runs locked down once both files are attached."""
    fresh = stage.with_name(stage.name + ".compact")
    fresh.unlink(missing_ok=True)
    with duckdb.connect(str(fresh), config=writer_config(fresh)) as con:
        _attach(con, stage, "staged", use=False)
        lock_down(con)
        name = execute(con, "SELECT current_database()")[0][0]
        execute(con, "COPY FROM DATABASE staged TO \"" + name.replace('"', '""') + "\"")
        execute(con, "DETACH staged")
        execute(con, "CHECKPOINT")
    shutil.rmtree(fresh.with_name(fresh.name + ".spill"), ignore_errors=True)
    os.replace(fresh, stage)


def _mb(path: Path) -> str:
    try:
        return f"{path.stat().st_size / 2**20:,.0f} MB"
    except OSError:
        return "a new index"


def _drop_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Before the migrations run any SQL on a writer: the migrations create no macros."""
    for (name,) in execute(con, "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal "
                                "AND database_name = current_database()"):
        quoted = '"' + name.replace('"', '""') + '"'
        for statement in (f"DROP MACRO TABLE IF EXISTS {quoted}", f"DROP MACRO IF EXISTS {quoted}"):
            try:
                execute(con, statement)
            except duckdb.Error:
                pass


def refresh_search(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild the tables searches scan: `neuron_search` (neuron_view materialised) and
    `class_search` (neuron_classes ordered by class)."""
    execute(con, "DELETE FROM neuron_search")
    execute(con, "INSERT INTO neuron_search SELECT * FROM neuron_view ORDER BY id")
    execute(con, "DELETE FROM class_search")
    execute(con, "INSERT INTO class_search SELECT class_id, neuron_id, share, rank FROM neuron_classes "
                 "ORDER BY class_id, neuron_id")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def migrate(directory: str | os.PathLike, restored: list | None = None) -> list[Migration]:
    """Upgrade an existing index in place (atomically); returns the migrations applied. SQL the
    migrations did not write (foreign_sql) is replaced by theirs; `restored` receives what was."""
    if not index_file(directory).is_file():
        raise IndexNotFoundError(f"no index at {directory} ({INDEX_FILE} is missing); nothing to migrate")
    with duckdb.connect(":memory:", config=reader_config()) as probe:
        _attach(probe, index_file(directory))
        lock_down(probe)
        before = schema_version(probe)
        foreign = foreign_sql(probe) if before == code_version() else []
    _refuse_newer(before)
    if restored is not None:
        restored.extend(foreign)
    if before == code_version() and not foreign:
        return []
    with staged(directory):
        pass
    return [m for m in migrations() if m.version > before]


def execute(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> list:
    """Execute a statement and consume its result (DuckDB refuses new work while one is pending)."""
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    try:
        return cur.fetchall()
    except duckdb.InvalidInputError:  # statements without a result set
        return []


def next_id(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return execute(con, f"SELECT coalesce(max(id), 0) + 1 FROM {table}")[0][0]
