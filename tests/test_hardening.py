"""Attacks that the earlier rounds did not cover: a hostile index file, every DuckDB type in answers,
unvalidated names, login guessing, cheap requests that cost minutes, disk full, leftovers."""
from __future__ import annotations

import shutil

import duckdb
import pytest
from fastapi.testclient import TestClient

import neuronindex
from neuronindex import store
from neuronindex.errors import ForeignSQLError
from neuronindex.service import create_app
from neuronindex_cli.main import cli


@pytest.fixture
def copy_of(hierarchy_index, tmp_path):
    def make(name="idx"):
        target = tmp_path / name
        shutil.copytree(hierarchy_index, target)
        return target
    return make


def _tamper(index_dir, *statements):
    """What an attacker who hands out an index file can do: any DDL inside it."""
    con = duckdb.connect(str(store.index_file(index_dir)))
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


def _view_body(index_dir, name="neuron_view") -> str:
    con = duckdb.connect(str(store.index_file(index_dir)), read_only=True)
    try:
        sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0]
    finally:
        con.close()
    return sql.split(" AS ", 1)[1].rstrip(";")


def _leaking_view(index_dir, secret) -> str:
    body = _view_body(index_dir)
    return (f"CREATE OR REPLACE VIEW neuron_view AS SELECT * REPLACE ((SELECT content FROM read_text('{secret}')) "
            f"AS color_name) FROM ({body})")


HOSTILE = {
    "view reading a local file": lambda d, secret: [_leaking_view(d, secret)],
    "macro shadowing a built-in": lambda d, secret: ["CREATE MACRO lower(x) AS 'pwned'"],
    "macro reading the index's own file": lambda d, secret: [
        f"CREATE MACRO leak() AS TABLE SELECT * FROM read_blob('{store.index_file(d)}')"],
    "extra view": lambda d, secret: ["CREATE VIEW innocent AS SELECT 1 AS x"],
}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_readers_refuse_sql_they_did_not_write(attack, copy_of, tmp_path, cli_runner):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    index_dir = copy_of()
    _tamper(index_dir, *HOSTILE[attack](index_dir, secret))
    with pytest.raises(ForeignSQLError, match="did not write"):
        neuronindex.open(index_dir)
    result = cli_runner.invoke(cli, ["search", str(index_dir), "red"])
    assert result.exit_code == 10 and "neuronindex migrate" in result.output and "Traceback" not in result.output
    with pytest.raises(ForeignSQLError):
        create_app(index_dir)  # `neuronindex serve` stops with the one-line error
    # a hostile file published under a running service: every answer is a 409, nothing runs
    served = copy_of("served")
    client = TestClient(create_app(served))
    assert client.get("/api/search", params={"q": "red"}).status_code == 200
    shutil.copyfile(store.index_file(index_dir), served / "staged.tmp")
    (served / "staged.tmp").replace(store.index_file(served))
    response = client.get("/api/search", params={"q": "red conv2"})
    assert response.status_code == 409 and "did not write" in response.json()["error"]
    assert "TOP-SECRET" not in response.text
    # a writer puts the migrations' SQL back; then nothing foreign runs and the secret never lands
    restored = []
    store.migrate(index_dir, restored)
    assert restored
    with neuronindex.open(index_dir) as idx:
        assert idx.sql("SELECT lower('ABC') AS l").rows() == [{"l": "abc"}]
        names = {r["color_name"] for r in idx.sql("SELECT color_name FROM neuron_search").rows()}
        assert not any("TOP-SECRET" in (n or "") for n in names)
        assert idx.search("conv1").rows()


def test_a_writer_never_runs_stored_sql_with_file_access(copy_of, tmp_path):
    """Every writer goes through store.staged: locked down before the file's SQL can run, macros
    dropped before the migrations, views rewritten before the block; the publish materialises the
    migrations' neuron_view, not the attacker's."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    index_dir = copy_of()
    _tamper(index_dir, _leaking_view(index_dir, secret), "CREATE MACRO lower(x) AS 'pwned'")
    with store.staged(index_dir) as con:
        assert store.foreign_sql(con) == []
        assert store.execute(con, "SELECT lower('ABC')") == [("abc",)]
        with pytest.raises(duckdb.PermissionException):
            store.execute(con, f"SELECT content FROM read_text('{secret}')")
    raw = duckdb.connect(str(store.index_file(index_dir)), read_only=True)
    try:
        leaked = raw.execute("SELECT count(*) FROM neuron_search WHERE color_name LIKE '%TOP-SECRET%'").fetchone()[0]
    finally:
        raw.close()
    assert leaked == 0
    with neuronindex.open(index_dir) as idx:
        assert idx.search("conv1").rows()


def test_the_reference_views_are_the_migrations_own():
    """The check compares with what the migrations create, not with a copy kept by hand."""
    views = store.reference_views()
    assert set(views) == {"neuron_view", "class_distance_view"}
    assert "color_label" in views["neuron_view"]


# one query per DuckDB type family, with what its JSON must say (None: only that it serialises)
TYPES = {
    "decimal": ("SELECT 1.5 AS x", 1.5),
    "decimal wide": ("SELECT 12345678901234.5678::DECIMAL(18, 4) AS x", 12345678901234.5678),
    "hugeint": ("SELECT (2::HUGEINT ** 100)::HUGEINT AS x", 2 ** 100),
    "uhugeint": ("SELECT 340282366920938463463374607431768211455::UHUGEINT AS x", 2 ** 128 - 1),
    "interval": ("SELECT INTERVAL 1 DAY + INTERVAL 90 SECOND AS x", "P1DT90S"),
    "uuid": ("SELECT '6f1c1f6e-2d6e-4a8e-9b52-0b8a3c2d1e4f'::UUID AS x", "6f1c1f6e-2d6e-4a8e-9b52-0b8a3c2d1e4f"),
    "blob": ("SELECT '\\xAA\\xBB'::BLOB AS x", "<2 bytes>"),
    "nan": ("SELECT 'NaN'::DOUBLE AS x", None),
    "infinity": ("SELECT 'inf'::FLOAT AS x", None),
    "date": ("SELECT DATE '2026-12-07' AS x", "2026-12-07"),
    "timestamptz": ("SELECT TIMESTAMPTZ '2026-12-07 10:00:00+00' AS x", None),
    "time": ("SELECT TIME '12:34:56' AS x", "12:34:56"),
    "list of decimals": ("SELECT [1.5, 2.25] AS x", [1.5, 2.25]),
    "array": ("SELECT ['1.0'::DOUBLE, 'NaN'::DOUBLE]::DOUBLE[2] AS x", [1.0, None]),
    "struct": ("SELECT {'id': '6f1c1f6e-2d6e-4a8e-9b52-0b8a3c2d1e4f'::UUID, 'd': 0.5} AS x",
               {"id": "6f1c1f6e-2d6e-4a8e-9b52-0b8a3c2d1e4f", "d": 0.5}),
    "map": ("SELECT MAP {'a': 1.5} AS x", {"a": 1.5}),
    "enum": ("SELECT 'b'::ENUM('a', 'b') AS x", "b"),
    "bit": ("SELECT '1010'::BIT AS x", "1010"),
    "union": ("SELECT union_value(n := 2.5) AS x", 2.5),
    "summarize": ("SUMMARIZE models", None),
}


@pytest.mark.parametrize("name", list(TYPES))
def test_every_duckdb_type_serialises_on_every_surface(name, hierarchy_index, cli_runner):
    import io
    import json

    import pyarrow.parquet as pq

    query, expected = TYPES[name]
    response = TestClient(create_app(hierarchy_index)).post("/api/sql", json={"sql": query})
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    if expected is not None or name in ("nan", "infinity"):
        assert rows[0]["x"] == expected
    for fmt in ("table", "csv", "json", "jsonl"):
        result = cli_runner.invoke(cli, ["sql", str(hierarchy_index), query, "--format", fmt])
        assert result.exit_code == 0 and "Traceback" not in result.output, (fmt, result.output)
        if fmt == "json" and expected is not None:
            assert json.loads(result.output)[0]["x"] == expected
    parquet = TestClient(create_app(hierarchy_index)).get("/api/export", params={"q": "conv1", "format": "parquet"})
    assert parquet.status_code == 200 and pq.read_table(io.BytesIO(parquet.content)).num_rows > 0


def test_pages_with_missing_scores_render_and_failing_pages_are_html(copy_of, monkeypatch):
    """A hierarchy without WordNet scores (or with only some) and classes without an eccentricity
    render with dashes; a page that fails anyway is an HTML page with a 500, not raw JSON."""
    index_dir = copy_of()
    _tamper(index_dir, "UPDATE hierarchies SET wordnet_correlation = 0.5, wordnet_baseline = NULL, "
                       "wordnet_sibling_auc = NULL", "UPDATE hierarchy_nodes SET eccentricity = NULL")
    client = TestClient(create_app(index_dir))
    page = client.get("/categories/tiny_cnn")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "\u2014" in page.text
    from neuronindex.service import routes_pages

    def broken(*args, **kwargs):
        raise TypeError("must be real number, not NoneType")

    monkeypatch.setitem(routes_pages.TEMPLATES.env.filters, "fixed", broken)
    failed = client.get("/categories/tiny_cnn?layer=conv2")
    assert failed.status_code == 500 and "text/html" in failed.headers["content-type"]
    assert "could not be made" in failed.text and "Traceback" not in failed.text


def test_unknown_figure_names_are_refused_before_drawing(hierarchy_index, monkeypatch):
    from neuronindex.service import routes_api

    drawn = []
    real = routes_api.render_figures
    monkeypatch.setattr(routes_api, "render_figures", lambda idx, model: drawn.append(model) or real(idx, model))
    client = TestClient(create_app(hierarchy_index))
    for name in ("nope", "svd_spectrum"):  # the tiny index has no directions: no spectrum
        response = client.get(f"/api/report/tiny_cnn/{name}.png")
        assert response.status_code == 404 and "no figure" in response.json()["error"]
    assert client.get("/api/report/tiny_cnn/..%2Ffig1_curves.png").status_code == 404
    assert client.get("/api/report/nomodel/fig1_curves.png").status_code == 404
    assert drawn == []
    assert client.get("/api/report/tiny_cnn/fig1_curves.png").status_code == 200 and drawn == ["tiny_cnn"]
    assert client.get("/api/report/tiny_cnn/fig7_hue.png").status_code == 200 and drawn == ["tiny_cnn"]  # cached


def test_searches_and_exports_are_bounded_on_every_surface(hierarchy_index, cli_runner, tmp_path, monkeypatch):
    import time

    from neuronindex.errors import QueryError, QueryTimeout
    from neuronindex.query import search as search_module
    from neuronindex.settings import Settings

    long_text = "conv1 " * 1000
    with neuronindex.open(hierarchy_index) as idx:
        with pytest.raises(QueryError, match="at most 4,000"):
            idx.search(long_text)
        with pytest.raises(QueryTimeout):
            idx.search("conv1", time_limit=0)
        # a query that would run for minutes is interrupted at the limit
        real = search_module.compile_query
        monkeypatch.setattr(search_module, "compile_query",
                            lambda q, v, s=None: ("SELECT count(*) AS n FROM range(100000000000) a", [], ["n"]))
        with pytest.raises(QueryTimeout, match="0.5 s time limit"):  # minutes of work, stopped
            idx.search("conv1", time_limit=0.5)
        monkeypatch.setattr(search_module, "compile_query", real)
        # an HTML export whose whole images take too long stops at its limit, between two images
        monkeypatch.setattr(type(idx), "context", lambda self, key, rank: time.sleep(0.2) or __import__("PIL.Image").Image.new("RGB", (8, 8)))
        with pytest.raises(QueryTimeout, match="export took longer"):
            idx.export("conv1", "html", tmp_path / "sheet.html", time_limit=0.5)
    result = cli_runner.invoke(cli, ["search", str(hierarchy_index), long_text])
    assert result.exit_code == 7 and "search_max_length" in result.output
    result = cli_runner.invoke(cli, ["search", str(hierarchy_index), "conv1", "--time-limit", "0"])
    assert result.exit_code == 7 and "time limit" in result.output and "Traceback" not in result.output
    client = TestClient(create_app(hierarchy_index, settings=Settings(export_time_limit=0.5)))
    assert client.get("/api/search", params={"q": long_text}).status_code == 400
    response = client.get("/api/export", params={"q": "conv1", "format": "html"})
    assert response.status_code == 408 and "export took longer" in response.json()["error"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (IHDR with a valid CRC) and holds one tiny IDAT: enough for
    the header check, nothing to decode."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b"")


def test_uploads_are_bounded_before_decoding_and_reduced(hierarchy_index):
    """An 81 Mpx PNG is refused from its header (bench/uploads.py: 1 MB instead of a 928 MB peak);
    a large JPEG is decoded at a reduced scale; every upload is reduced to upload_max_side with
    its box scaled, and a box is checked against the upload's own size."""
    import io

    from PIL import Image

    from neuronindex.errors import UsageError
    from neuronindex.service.common import decode_upload

    with pytest.raises(UsageError, match="81 Mpx, more than the 25 Mpx"):
        decode_upload(_png_header_only(9000, 9000))
    buf = io.BytesIO()
    Image.new("RGB", (4400, 2200), (200, 30, 40)).save(buf, "JPEG")
    image, (sx, sy) = decode_upload(buf.getvalue())
    assert max(image.size) == 2048 and image.size[0] / image.size[1] == pytest.approx(2.0, abs=0.01)
    assert (sx, sy) == pytest.approx((image.size[0] / 4400, image.size[1] / 2200))
    client = TestClient(create_app(hierarchy_index))
    big = client.post("/api/nearest", files={"image": ("big.jpg", buf.getvalue(), "image/jpeg")},
                      data={"box": "4000,100,4300,400", "layer": "conv1", "k": "3"})
    assert big.status_code == 200, big.text
    outside = client.post("/api/nearest", files={"image": ("big.jpg", buf.getvalue(), "image/jpeg")},
                          data={"box": "5000,100,5100,200", "layer": "conv1"})
    assert outside.status_code == 400 and "outside the 4400x2200 image" in outside.json()["error"]
    bomb = client.post("/api/nearest", files={"image": ("bomb.png", _png_header_only(9000, 9000), "image/png")})
    assert bomb.status_code == 400 and "upload_max_pixels" in bomb.json()["error"]


def test_login_guessing_is_throttled_and_session_forms_are_same_origin(hierarchy_index):
    from neuronindex.service.auth import COOKIE
    from neuronindex.settings import default

    app = create_app(hierarchy_index, token="s3cret")
    site = TestClient(app, follow_redirects=False, headers={"Origin": "http://testserver"})
    attempts = default("login_attempts")
    for _ in range(attempts):
        assert site.post("/login", data={"token": "guess"}).status_code == 401
    refused = site.post("/login", data={"token": "s3cret"})  # even the right token, until the window passes
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert site.get("/api/models", headers={"Authorization": "Bearer guess"}).status_code == 429
    # the throttle counts per client address: time passing (a fake clock) lets it try again
    app.state.throttle.clock = lambda: 1e12
    assert site.post("/login", data={"token": "s3cret"}).status_code == 303
    # bearer-token guessing counts the same way (a client without the session cookie)
    api = TestClient(app)
    for _ in range(attempts):
        assert api.get("/api/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert api.get("/api/models", headers={"Authorization": "Bearer nope"}).status_code == 429
    # a login or logout posted from another site, or with no origin at all, is refused
    app = create_app(hierarchy_index, token="s3cret")
    site = TestClient(app, follow_redirects=False, headers={"Origin": "http://testserver"})
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}, {}):
        cross = TestClient(app, follow_redirects=False, cookies={COOKIE: "x"})
        assert cross.post("/logout", headers=headers).status_code == 403
        assert cross.post("/login", headers=headers, data={"token": "s3cret"}).status_code == 403
    assert site.get("/logout").status_code in (303, 405)  # a GET never logs out
    assert "set-cookie" not in site.get("/logout").headers


@pytest.mark.parametrize("name, problem", [
    ("a/b", "'/'"), ("../../etc", "'/'"), ("x\ny", "U+000A"), (" ", "U+0020"), ("r\u200besnet", "U+200B"),
    ("evil\u202eexe", "U+202E"), ("n" * 3000, "3,000 characters"), ("-x", "must start"), ("", "empty"),
])
def test_model_names_are_validated_before_the_model_loads(name, problem, image_folder, tmp_path, monkeypatch):
    from neuronindex.errors import UsageError
    from neuronindex.jobs import ingest as ingest_job
    from neuronindex.jobs.ingest import ingest

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the name was checked")

    monkeypatch.setattr(ingest_job, "load_model", no_model)
    import re

    with pytest.raises(UsageError, match=re.escape(problem)):
        ingest("python:tinymodels:tiny_cnn", str(image_folder), "conv1", tmp_path / "idx", name=name or None,
               progress=False) if name else __import__("neuronindex.names").names.valid_name(name, "model name")
    assert not (tmp_path / "idx" / "index.duckdb").exists()


def test_names_are_stored_composed(image_folder, tmp_path, cli_runner):
    """The decomposed spelling is stored as the composed one, so both spell the same model in
    URLs, searches and SQL."""
    import unicodedata

    from neuronindex.jobs.ingest import IngestParams, ingest

    composed, decomposed = unicodedata.normalize("NFC", "résnet"), unicodedata.normalize("NFD", "résnet")
    assert composed != decomposed
    ingest("python:tinymodels:tiny_cnn", str(image_folder), "conv1", tmp_path / "idx", name=decomposed,
           params=IngestParams(top_k=4), progress=False)
    with neuronindex.open(tmp_path / "idx") as idx:
        assert [r["name"] for r in idx.sql("SELECT name FROM models")] == [composed]
        assert idx.search(f"model:{composed} conv1").rows()
        client = TestClient(create_app(tmp_path / "idx"))
        assert client.get(f"/api/neurons/{composed}/conv1/0").status_code == 200
    result = cli_runner.invoke(cli, ["ingest", "--model", "python:tinymodels:tiny_cnn", "--images", str(image_folder),
                                     "--layers", "conv1", "--index", str(tmp_path / "other"), "--name", "a/b"])
    assert result.exit_code == 2 and "use letters, digits" in result.output and "Traceback" not in result.output


def _serve(index_dir, port, *options, nofile=None):
    import resource
    import subprocess
    import sys
    import time
    import urllib.request

    def limit():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = open(index_dir.parent / f"serve-{port}.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "neuronindex_cli.main", "serve", str(index_dir), "--port", str(port),
                               *options], stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=2):
                return server, log
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_idle_and_slow_connections_cannot_take_the_service(hierarchy_index, tmp_path):
    """4,000 idle sockets from one address against a server limited to 512 open files: the
    others are still answered, the idle ones are refused or timed out, slow headers are cut off,
    and the log stays small."""
    import resource
    import socket
    import time
    import urllib.request

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    index_dir = tmp_path / "index"
    shutil.copytree(hierarchy_index, index_dir)
    port = _free_port()
    server, log = _serve(index_dir, port, "--header-timeout", "2", nofile=512)
    idle = []
    try:
        for _ in range(4000):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        answered = []
        for _ in range(5):
            started = time.time()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=10) as r:
                answered.append((r.status, time.time() - started))
            time.sleep(0.2)
        assert all(status == 200 and took < 5 for status, took in answered), answered
        time.sleep(3)  # past the header timeout: every idle socket has been refused or cut off
        still_open = 0
        for s in idle:
            s.setblocking(True)
            s.settimeout(0.05)
            try:
                data = s.recv(100)
                still_open += data == b"x"  # never
            except socket.timeout:
                still_open += 1
            except OSError:
                pass
        assert still_open == 0, f"{still_open} idle sockets are still held"
        slow = socket.create_connection(("127.0.0.1", port))
        started = time.time()
        with pytest.raises(OSError):
            for byte in b"GET /api/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                slow.send(bytes([byte]))
                time.sleep(0.1)
        assert time.time() - started < 6
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=10) as r:
            assert r.status == 200
    finally:
        for s in idle:
            s.close()
        server.terminate()
        server.wait(timeout=20)
        log.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (index_dir.parent / f"serve-{port}.log").stat().st_size < 100_000


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs of its own (root only: skipped where it cannot be mounted)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk, leave_bytes: int):
    """Fill the disk but `leave_bytes`."""
    import os

    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        chunk = b"\0" * 2**20
        left = free - leave_bytes
        while left > 0:
            f.write(chunk[: min(len(chunk), left)])
            left -= len(chunk)
    return disk / "filler"


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_full_is_one_line_and_leaves_the_index_as_it_was(hierarchy_index, small_disk, cli_runner):
    from neuronindex.errors import DiskFullError

    index_dir = small_disk / "index"
    shutil.copytree(hierarchy_index, index_dir)
    before = _digest(store.index_file(index_dir))
    # no room for the staged copy: the copy itself fails
    filler = _fill(small_disk, 2 * 2**20)
    result = cli_runner.invoke(cli, ["indexes", str(index_dir), "-q"])
    assert result.exit_code == 11 and "no space left" in result.output and "Traceback" not in result.output
    assert [p.name for p in index_dir.iterdir() if p.name.startswith(".staging")] == []
    assert _digest(store.index_file(index_dir)) == before
    filler.unlink()
    # room for the copy, not for what the writer adds: DuckDB's write fails
    size = store.index_file(index_dir).stat().st_size
    filler = _fill(small_disk, size + 3 * 2**20)
    with pytest.raises(DiskFullError, match="the published index is unchanged"):
        with store.staged(index_dir) as con:
            store.execute(con, "CREATE TABLE bulk AS SELECT repeat(md5(i::VARCHAR), 64) AS x FROM range(200000) t(i)")
            store.execute(con, "CHECKPOINT")
    assert [p.name for p in index_dir.iterdir() if p.name.startswith(".staging")] == []
    assert _digest(store.index_file(index_dir)) == before
    with neuronindex.open(index_dir) as idx:
        assert idx.search("conv1").rows()
    filler.unlink()
    # space freed: the same writer succeeds
    result = cli_runner.invoke(cli, ["indexes", str(index_dir), "-q"])
    assert result.exit_code == 0, result.output


def test_a_dead_runs_spilled_vectors_are_removed(tmp_path):
    import os

    from neuronindex.jobs.derive import remove_stale_spills

    spill = tmp_path / ".work"
    dead, alive, legacy = spill / "patches-999999999-abc", spill / f"patches-{os.getpid()}-def", spill / "patches-x1y2"
    for folder in (dead, alive, legacy):
        folder.mkdir(parents=True)
        (folder / "0.npy").write_bytes(b"x" * 1000)
    assert sorted(remove_stale_spills(spill)) == sorted([dead, legacy])
    assert alive.exists() and not dead.exists()


def test_a_finished_ingest_leaves_no_dead_runs_files(tiny_loaded, image_folder, tmp_path):
    """What a run killed in pass 2 or the publish left under .work/ is gone once the next run
    (its --resume, or any other) has finished."""
    from neuronindex.jobs.ingest import IngestParams, ingest

    index_dir = tmp_path / "idx"
    dead = index_dir / ".work" / "patches-999999999-abc"
    dead.mkdir(parents=True)
    (dead / "layer0.npy").write_bytes(b"x" * 10_000)
    ingest(tiny_loaded, str(image_folder), "conv1", index_dir, params=IngestParams(top_k=4), progress=False)
    assert not (index_dir / ".work").exists()


def test_a_recompute_does_not_grow_the_file(hierarchy_index, tmp_path, cli_runner, monkeypatch):
    """An `indexes` recompute rewrites most rows; the publish compacts a file whose free blocks
    pass COMPACT_SHARE, so the file does not grow with every recompute."""
    import duckdb as db

    index_dir = tmp_path / "index"
    shutil.copytree(hierarchy_index, index_dir)
    monkeypatch.setattr(store, "COMPACT_MIN_BYTES", 0)

    def blocks():
        with db.connect(str(store.index_file(index_dir)), read_only=True) as con:
            return con.execute("SELECT total_blocks, free_blocks FROM pragma_database_size()").fetchone()
    start = blocks()
    for _ in range(3):
        assert cli_runner.invoke(cli, ["indexes", str(index_dir), "-q"]).exit_code == 0
    total, free = blocks()
    assert total <= start[0] * 1.12 and free <= store.COMPACT_SHARE * total


def test_the_security_page_lists_every_limit_with_its_default():
    from conftest import REPO
    from neuronindex.settings import BY_NAME

    page = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    limits = ["max_upload", "max_pixels", "upload_max_pixels", "upload_max_side", "max_url", "sql_max_length",
              "sql_time_limit", "sql_max_rows", "search_max_length", "search_time_limit", "export_time_limit",
              "reader_memory_limit", "reader_temp_limit", "serve_threads", "serve_heavy", "serve_queue",
              "header_timeout", "body_timeout", "max_client_connections", "max_connections", "login_attempts",
              "login_window"]
    for name in limits:
        assert f"`{name}`" in page, name
        value = BY_NAME[name].default
        shown = {int: lambda v: [f"{v:,}", str(v), f"{v / 1e6:.1f} Mpx", f"{v / 1e6:g} Mpx", f"{v // 2**20} MB"],
                 float: lambda v: [f"{v:g} s"], str: lambda v: [v.replace("GB", " GB")]}[type(value)](value)
        assert any(s in page for s in shown), (name, shown)
