"""`IndexDirectory`: the one place that knows an index directory's layout.

    DIR/index.duckdb                  the source of truth (DuckDB)
    DIR/vectors/                      FAISS indexes of the embeddings (rebuildable from the database)
    DIR/.write.lock                   the writers' advisory lock (one writer from staging to publish)
    DIR/.staging-PID-index.duckdb     a writer's copy of the database until it is published
    DIR/.work/RUN/                    an ingest's checkpoints (pass-1 state, Ray shard states)
    DIR/.work/                        the spill folder of pass 2's patch vectors

Every job, the store and the vector store take their paths from here; the folder is made when
a writer needs it, never by a reader.
"""
from __future__ import annotations

import os
from pathlib import Path

INDEX_FILE = "index.duckdb"
LOCK_FILE = ".write.lock"
WORK = ".work"
VECTORS = "vectors"
STAGING = ".staging-{pid}-" + INDEX_FILE


class IndexDirectory:
    """Paths of an index directory (nothing is opened or made by constructing one)."""

    __slots__ = ("path",)

    def __init__(self, path: "str | os.PathLike | IndexDirectory"):
        self.path = Path(path.path if isinstance(path, IndexDirectory) else path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"IndexDirectory({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, IndexDirectory) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def database(self) -> Path:
        return self.path / INDEX_FILE

    def exists(self) -> bool:
        """Whether an index was published here."""
        return self.database.is_file()

    @property
    def vectors(self) -> Path:
        return self.path / VECTORS

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def stage(self, pid: int | None = None) -> Path:
        """The staged copy of the database a writer (this process by default) publishes."""
        return self.path / STAGING.format(pid=os.getpid() if pid is None else pid)

    def stale_stages(self) -> list[Path]:
        """Every writer's staging files (the stage, its log and spill, a half-made compact copy)."""
        return list(self.path.glob(STAGING.format(pid="*") + "*"))

    @property
    def work(self) -> Path:
        """Checkpoints of unfinished runs and pass 2's spilled patch vectors."""
        return self.path / WORK

    def run_work(self, run_key: str) -> Path:
        """The checkpoint folder of one run (its key: model, data, layers and parameters)."""
        return self.work / run_key
