"""The HTTP API in-process (httpx via TestClient) and the gallery in a real headless Chromium."""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from neuronindex.service import create_app


@pytest.fixture(scope="module")
def index_dir(hierarchy_index):
    return hierarchy_index


@pytest.fixture(scope="module")
def client(index_dir):
    return TestClient(create_app(index_dir))


def png_bytes(size=16, colour=(220, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def assert_error(response, status, text):
    assert response.status_code == status
    body = response.json()
    assert body["ok"] is False and body["status"] == status and text in body["error"]
    assert "Traceback" not in response.text


def test_models_layers_summary(client):
    assert [m["name"] for m in client.get("/api/models").json()["rows"]] == ["tiny_cnn"]
    assert [l["name"] for l in client.get("/api/layers").json()["rows"]] == ["conv1", "conv2"]
    summary = client.get("/api/summary").json()["rows"]
    assert [s["layer"] for s in summary] == ["conv1", "conv2"] and summary[0]["neurons"] == 4


def test_every_json_success_has_one_shape(client):
    """Every JSON answer of the API is an object with ok: true (lists under rows); errors are
    {ok: false, error, status}."""
    paths = ["/api/models", "/api/layers", "/api/summary", "/api/settings", "/api/status",
             "/api/search?q=conv1", "/api/explain?q=red", "/api/neurons/tiny_cnn/conv1/0",
             "/api/neurons/tiny_cnn/conv1/0/similar", "/api/neurons/tiny_cnn/conv1/0/distribution",
             "/api/visualizations"]
    listed = {"/api/models", "/api/layers", "/api/summary", "/api/settings", "/api/search?q=conv1",
              "/api/neurons/tiny_cnn/conv1/0/similar"}
    for path in paths:
        r = client.get(path)
        body = r.json()
        assert r.status_code == 200 and isinstance(body, dict) and body["ok"] is True, path
        if path in listed:
            assert isinstance(body["rows"], list) and body["rows"], path
    assert client.get("/api/visualizations").json() == {"ok": True, "rows": []}  # none made in this index
    sql = client.post("/api/sql", json={"sql": "SELECT 1 AS one"}).json()
    assert sql["ok"] is True and sql["rows"] == [{"one": 1}]
    bad = client.get("/api/neurons/nope/0/0").json()
    assert bad["ok"] is False and bad["status"] == 404 and "no neuron" in bad["error"]


def test_search_and_errors(client):
    rows = client.get("/api/search", params={"q": "red conv1 chroma>0.3"}).json()["rows"]
    assert rows[0]["key"] == "tiny_cnn/conv1/0"
    assert_error(client.get("/api/search", params={"q": "red conv7"}), 400, "did you mean")
    assert_error(client.get("/api/search"), 400, "invalid request")
    assert "SELECT" in client.get("/api/explain", params={"q": "red"}).json()["sql"]


def test_neuron_images_and_404(client):
    data = client.get("/api/neurons/tiny_cnn/conv1/0").json()
    assert data["key"] == "tiny_cnn/conv1/0" and len(data["topk"]) == 10 and data["classes"] and data["colours"]
    assert any(not c["is_leaf"] and c["name"] == "warm" for c in data["classes"])
    for path in ("nf.png", "crops.png", "crops/1.png"):
        r = client.get(f"/api/neurons/tiny_cnn/conv1/0/{path}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size[0] >= 3
    assert_error(client.get("/api/neurons/tiny_cnn/conv1/99"), 404, "no neuron")
    assert_error(client.get("/api/neurons/tiny_cnn/conv1/0/crops/99.png"), 404, "no rank 99")
    assert_error(client.get("/api/neurons/tiny_cnn/conv1/2/nf.png"), 404, "no Neuron Feature")


def test_sql(client):
    r = client.post("/api/sql", json={"sql": "SELECT count(*) AS n FROM neurons"})
    assert r.json()["rows"] == [{"n": 10}] and r.json()["truncated"] is False
    assert_error(client.post("/api/sql", json={"sql": "DELETE FROM neurons"}), 400, "only queries are allowed")
    assert_error(client.post("/api/sql", json={"query": "x"}), 400, "send {")


def test_nearest_similar_export(client):
    r = client.post("/api/nearest", files={"image": ("p.png", png_bytes(), "image/png")},
                    data={"box": "2,2,10,10", "layer": "conv1", "k": "3", "mode": "response"})
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["key"] == "tiny_cnn/conv1/0"  # a red patch drives the red detector most
    assert_error(client.post("/api/nearest", files={"image": ("p.png", b"not an image", "image/png")}), 400,
                 "not a readable image")
    assert_error(client.post("/api/nearest", files={"image": ("p.png", png_bytes(), "image/png")}, data={"box": "1,2"}),
                 400, "x0,y0,x1,y1")
    assert len(client.get("/api/neurons/tiny_cnn/conv2/1/similar", params={"k": 3}).json()["rows"]) == 3
    alike = client.get("/api/neurons/tiny_cnn/conv2/1/similar", params={"k": 3, "kind": "channel"}).json()["rows"]
    assert len(alike) == 3 and {r["kind"] for r in alike} == {"channel"}
    assert_error(client.get("/api/neurons/tiny_cnn/conv2/1/similar", params={"kind": "neuron"}), 400,
                 "unknown unit kind")
    r = client.post("/api/nearest", files={"image": ("p.png", png_bytes(), "image/png")},
                    data={"layer": "conv2", "k": "3", "space": "patch", "kind": "channel"})
    rows = r.json()["rows"]
    assert r.status_code == 200 and len({x["key"] for x in rows}) == len(rows) == 3 and all(x["crops"] >= 1 for x in rows)
    for fmt in ("csv", "json", "jsonl", "parquet", "html"):
        r = client.get("/api/export", params={"q": "conv1", "format": fmt})
        assert r.status_code == 200 and len(r.content) > 50
    assert_error(client.get("/api/export", params={"q": "conv1", "format": "xls"}), 400, "unknown export format")


def test_upload_limit_and_bomb(index_dir):
    small = TestClient(create_app(index_dir, max_upload=2000))
    big = png_bytes(200)  # compresses well; make it incompressible
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    big = buf.getvalue()
    assert len(big) > 2000
    assert_error(small.post("/api/nearest", files={"image": ("p.png", big, "image/png")}), 413, "limit")
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # tiny file, 144 million pixels
    client = TestClient(create_app(index_dir))
    assert_error(client.post("/api/nearest", files={"image": ("b.png", bomb.getvalue(), "image/png")}), 400,
                 "144 Mpx, more than the 89 Mpx limit")


def test_token(index_dir):
    guarded = TestClient(create_app(index_dir, token="s3cret"))
    assert_error(guarded.get("/api/models"), 401, "bearer token")
    assert_error(guarded.get("/api/models", headers={"Authorization": "Bearer nope"}), 401, "bearer token")
    assert guarded.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    from neuronindex.errors import UsageError
    from neuronindex.service import serve

    with pytest.raises(UsageError, match="--token"):
        serve(index_dir, host="0.0.0.0")


def test_report_figures(client):
    r = client.get("/api/report/tiny_cnn/fig8_alpha_bins.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert_error(client.get("/api/report/tiny_cnn/fig99.png"), 404, "no figure")
    assert_error(client.get("/api/report/nope/fig8_alpha_bins.png"), 404, "no model")


def test_pages_render(client):
    for url in ("/", "/layer/tiny_cnn/conv1", "/layer/tiny_cnn/conv1?sort=color_index&q=red", "/neuron/tiny_cnn/conv1/0",
                "/search?q=red", "/search?q=nonsense", "/patch", "/docs"):
        r = client.get(url)
        assert r.status_code == 200, url
    assert "did you mean" in client.get("/search?q=red conv7").text or "unknown" in client.get("/search?q=red conv7").text


def test_live_index_swap_without_errors(tmp_path, index_dir):
    """An ingest in another process (as in real use) publishes while requests keep coming."""
    import subprocess
    import sys

    from conftest import HERE

    live = tmp_path / "live"
    shutil.copytree(index_dir, live)
    client = TestClient(create_app(live))
    errors, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.get("/api/models")
            if r.status_code != 200:
                errors.append(r.text)
    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        images = client.get("/api/models").json()["rows"][0]["images"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "neuronindex_cli", "ingest", "--model", "python:tinymodels:tiny_cnn",
                        "--input-size", "16", "16", "--resize-policy", "resize", "--images", images, "--layers", "conv1",
                        "--index", str(live), "--name", "second", "--top-k", "4", "-q"], env=env, check=True, timeout=300)
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join()
    assert not errors
    assert [m["name"] for m in client.get("/api/models").json()["rows"]] == ["tiny_cnn", "second"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian chromium is not installed")
def test_gallery_in_a_real_browser(index_dir, tmp_path):
    import uvicorn
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(base + "/")
            assert "conv1" in page.inner_text("body")
            page.fill("header input[name=q]", "red conv1 chroma>0.3")
            page.press("header input[name=q]", "Enter")
            page.wait_for_selector("a.result")
            page.click("a.result >> nth=0")
            page.wait_for_selector("img#nf")
            page.wait_for_load_state("networkidle")
            assert page.url.endswith("/neuron/tiny_cnn/conv1/0")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images below the fold load
            page.wait_for_function("[...document.querySelectorAll('img.crop')].every(i => i.complete)")
            widths = page.eval_on_selector_all("img#nf, img.crop", "els => els.map(e => e.naturalWidth)")
            assert len(widths) >= 2 and all(w > 0 for w in widths), widths
            page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
            assert (tmp_path / "neuron.png").stat().st_size > 1000
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_limits_answer_with_json(client):
    assert_error(client.get("/api/search", params={"q": "x" * 9000}), 414, "longer than 8192")
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, "PNG")
    r = client.post("/api/nearest", files={"image": ("big.png", buf.getvalue(), "image/png")})
    assert_error(r, 400, "Mpx limit")
    r = client.post("/api/sql", json={"sql": "SELECT * FROM read_blob('index.duckdb')"})
    assert_error(r, 400, "reads files")
    r = client.post("/api/sql", json={"sql": "SELECT 1", "max_rows": "abc"})
    assert_error(r, 400, "max_rows")


# ------------------------------------------------------------------ under load and abuse (issue 19)
class RealServer:
    """The app on uvicorn in a thread, with the options `neuronindex serve` uses."""

    def __init__(self, app):
        import uvicorn

        from neuronindex.service.app import server_options

        self.app = app
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, **server_options("127.0.0.1", self.port)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


# a query no machine finishes within the (shortened) time limit
ENDLESS_SQL = "SELECT sum(a.i * b.i) AS s FROM range(100000000) a(i), range(100000) b(i)"


def wait_for(condition, seconds=20):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_queries_run_concurrently_on_their_own_cursors(index_dir, monkeypatch):
    """A slow query holds one worker and its own cursor: other requests are answered meanwhile
    (there is no global lock), and the slow one ends at the time limit with a JSON 408."""
    import httpx

    from neuronindex.settings import Settings

    app = create_app(index_dir, cache_mb=0, settings=Settings(sql_time_limit=3.0))  # no cached answers: every request below queries the index
    with RealServer(app) as server:
        slow = {}

        def run_slow():
            slow["response"] = httpx.post(server.base + "/api/sql", json={"sql": ENDLESS_SQL}, timeout=60)
            slow["ended"] = time.time()
        thread = threading.Thread(target=run_slow)
        thread.start()
        wait_for(lambda: app.state.light.pending == 1)
        answered = []
        with httpx.Client(base_url=server.base, timeout=30) as http:
            for path in ("/api/neurons/tiny_cnn/conv1/0", "/api/search?q=red", "/api/neurons/tiny_cnn/conv2/1/nf.png",
                         "/api/summary") * 3:
                r = http.get(path)
                assert r.status_code == 200, r.text
                answered.append(time.time())
        assert thread.is_alive()  # all twelve answered while the slow query was still running
        thread.join()
    assert_error(slow["response"], 408, "time limit")
    assert max(answered) < slow["ended"]


def test_full_pool_answers_503_at_once(index_dir, monkeypatch):
    """One query thread and no queue: while it runs a slow query, the next query request gets a
    JSON 503 with Retry-After immediately; requests that need no worker (settings) still answer."""
    import httpx

    from neuronindex.settings import Settings

    app = create_app(index_dir, threads=1, queue=0, cache_mb=0, settings=Settings(sql_time_limit=2.0))
    with RealServer(app) as server:
        thread = threading.Thread(target=lambda: httpx.post(server.base + "/api/sql", json={"sql": ENDLESS_SQL}, timeout=60))
        thread.start()
        wait_for(lambda: app.state.light.pending == 1)
        r = httpx.get(server.base + "/api/neurons/tiny_cnn/conv1/0", timeout=30)
        # answered while the slow query still held the only worker: it did not wait for it
        assert thread.is_alive() and app.state.light.pending == 1
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
        assert httpx.get(server.base + "/api/settings", timeout=30).status_code == 200
        thread.join()
        assert httpx.get(server.base + "/api/neurons/tiny_cnn/conv1/0", timeout=30).status_code == 200


def test_answers_carry_the_index_version(tmp_path, index_dir):
    """ETag = the published version: a revalidation is a 304 without a body; a URL naming the
    version (as the pages write them) may be cached for good; a publish changes the tag."""
    from neuronindex import store

    live = tmp_path / "live"
    shutil.copytree(index_dir, live)
    client = TestClient(create_app(live))
    r = client.get("/api/neurons/tiny_cnn/conv1/0/nf.png")
    tag = r.headers["etag"]
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache" and tag.startswith('"')
    again = client.get("/api/neurons/tiny_cnn/conv1/0/nf.png", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    version = tag.strip('"')
    forever = client.get(f"/api/neurons/tiny_cnn/conv1/0/nf.png?v={version}")
    assert forever.headers["cache-control"] == "public, max-age=31536000, immutable" and forever.content == r.content
    page = client.get("/neuron/tiny_cnn/conv1/0").text
    assert f"/api/neurons/tiny_cnn/conv1/0/nf.png?v={version}" in page
    assert client.get("/api/status").json()["version"] == version
    with store.staged(live) as con:  # a publish: same content, a new file
        con.execute("UPDATE models SET name = name")
    r = client.get("/api/neurons/tiny_cnn/conv1/0/nf.png", headers={"If-None-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag and r.content == forever.content
    assert client.get("/api/sql", params={}).status_code == 405  # POST only


def test_a_publish_is_read_by_the_next_open_in_the_same_process(tmp_path, index_dir):
    """Readers attach the file (not DuckDB's per-path shared instance): an open Index keeps
    reading its version, the next open reads the published one."""
    import neuronindex
    from neuronindex import store

    live = tmp_path / "live"
    shutil.copytree(index_dir, live)
    old = neuronindex.open(live)
    with store.staged(live) as con:
        con.execute("UPDATE models SET name = 'renamed'")
    new = neuronindex.open(live)
    assert [m["name"] for m in old.models()] == ["tiny_cnn"]
    assert [m["name"] for m in new.models()] == ["renamed"]
    old.close()
    new.close()


def test_views_share_loaded_vectors_models_and_images(index_dir, monkeypatch):
    """One read of a space and group's vectors (and one FAISS index made of them), one model load
    and one decode per source image per opened index, whichever thread's view asks; each view has
    its own cursor."""
    import neuronindex
    from neuronindex import api as api_module
    from neuronindex.store import vectors as vectors_module

    reads, loads, decodes = [], [], []
    rows = vectors_module.rows
    monkeypatch.setattr(vectors_module, "rows", lambda con, *a: reads.append(a[:2]) or rows(con, *a))
    from neuronindex.query import reader as reader_module

    real_load = reader_module.load_model  # the reader loads the models the index's views share
    monkeypatch.setattr(reader_module, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    real_image = api_module.Index.load_image
    monkeypatch.setattr(api_module.Index, "load_image", lambda self, *a: decodes.append(a) or real_image(self, *a))
    with neuronindex.open(index_dir) as idx:
        results = []

        def work():
            view = idx.view()
            try:
                assert view.con is not idx.con
                results.append((view.similar("tiny_cnn/conv2/1", 3).rows(), view.crop("tiny_cnn/conv2/1", 1).tobytes()))
                image = view.sql("SELECT path FROM images ORDER BY id LIMIT 1")[0]["path"]
                view.nearest(image, layer="conv2", k=3)
            finally:
                view.close()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4 and all(r == results[0] for r in results)
        assert len(reads) == len(set(reads)) >= 1 and len(loads) == 1 and len(decodes) == 1
        idx.similar("tiny_cnn/conv2/1", 3)
        assert len(reads) == len(set(reads))


def test_sql_time_limit_covers_parse_and_serialisation(index_dir):
    """The deadline starts before the parse; the service's JSON encoding checks it between slices."""
    import neuronindex
    from neuronindex.errors import QueryTimeout
    from neuronindex.service.common import encode_json

    with neuronindex.open(index_dir) as idx:
        before = time.perf_counter()
        result = idx.sql("SELECT * FROM range(600) t(i)", time_limit=2.0)
        assert before + 2.0 <= result.meta["deadline"] <= time.perf_counter() + 2.0
    payload = {"ok": True, "columns": result.columns, "rows": result.rows()}
    import json

    assert json.loads(encode_json(payload, time.perf_counter() + 60)) == json.loads(json.dumps(payload))
    with pytest.raises(QueryTimeout, match="serialise"):
        encode_json(payload, time.perf_counter() - 1)


def test_reader_limits_are_configurable(index_dir):
    import neuronindex
    from neuronindex.errors import UsageError

    client = TestClient(create_app(index_dir, memory_limit="256MB", temp_limit="100MB"))
    row = client.post("/api/sql", json={"sql": "SELECT current_setting('memory_limit') AS m, "
                                               "current_setting('max_temp_directory_size') AS t"}).json()["rows"][0]
    assert row == {"m": "244.1 MiB", "t": "95.3 MiB"}
    with pytest.raises(UsageError, match="bad reader limit"):
        neuronindex.open(index_dir, memory_limit="lots")
    r = client.post("/api/sql", json={"sql": "SELECT current_setting('enable_external_access') AS e"}).json()
    assert r["rows"] == [{"e": False}]


ATTACKS = [  # (method, path, body, status, words in the error)
    ("post", "/api/sql", {"sql": "UPDATE EXTENSIONS"}, 400, "only queries"),
    ("post", "/api/sql", {"sql": "SELECT * FROM read_blob('index.duckdb')"}, 400, "reads files"),
    ("post", "/api/sql", {"sql": "SELECT * FROM read_text('/etc/passwd')"}, 400, "reads files"),
    ("post", "/api/sql", {"sql": "SELECT * FROM glob('*')"}, 400, "reads files"),
    ("post", "/api/sql", {"sql": "ATTACH '/tmp/x.duckdb' AS x"}, 400, "only queries"),
    ("post", "/api/sql", {"sql": "SET enable_external_access = true"}, 400, "only queries"),
    ("post", "/api/sql", {"sql": "SELECT 1; DROP TABLE neurons"}, 400, "exactly one statement"),
    ("post", "/api/sql", {"sql": "SELECT 1 -- " + "x" * 200_000}, 400, "characters"),
    ("post", "/api/sql", {"sql": "SELECT 1", "max_rows": "abc"}, 400, "max_rows"),
    ("post", "/api/sql", {"sql": "SELECT 1", "max_rows": None}, 400, "max_rows"),
    ("post", "/api/sql", '{"sql": "SELECT 1", "max_rows": 1e400}', 400, "max_rows"),  # raw JSON: inf
    ("post", "/api/sql", {"nothing": 1}, 400, "send {"),
    ("get", "/api/search?q=alpha>true", None, 400, ""),
    ("get", "/api/search?q=csi%3Dfalse", None, 400, ""),
    ("get", "/api/neurons/tiny_cnn/conv1/0/similar?k=0", None, 400, "k must be"),
    ("get", "/api/neurons/tiny_cnn/conv1/0/similar?k=-3", None, 400, "k must be"),
    ("get", "/api/neurons/tiny_cnn/conv1/0/similar?k=abc", None, 400, "invalid request"),
    ("get", "/api/neurons/tiny_cnn/conv1/0/crops/999.png", None, 404, "rank 999"),
    ("get", "/api/neurons/tiny_cnn/conv9/0/nf.png", None, 404, "no neuron"),
    ("get", "/api/neurons/tiny_cnn/conv9/0/crops/1.png", None, 404, "no neuron"),
    ("get", "/api/export?q=red&format=exe", None, 400, "unknown export format"),
    ("get", "/api/report/nomodel/hue.png", None, 404, "no model"),
]


@pytest.mark.parametrize("method,path,body,status,words", ATTACKS, ids=[f"{a[0]} {a[1][:40]} {str(a[2])[:30]}" for a in ATTACKS])
def test_attacks_get_json_errors(client, method, path, body, status, words):
    if isinstance(body, str):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body) if method == "post" else client.get(path)
    assert_error(r, status, words)


@pytest.mark.parametrize("field", ["k", "box"])
def test_nearest_bad_numbers(client, field):
    form = {"k": "0"} if field == "k" else {"box": "0,0,inf,4"}
    r = client.post("/api/nearest", files={"image": ("a.png", png_bytes(), "image/png")}, data=form)
    assert_error(r, 400, "k must be" if field == "k" else "four finite numbers")


def test_long_urls_over_a_real_socket(index_dir):
    """h11 with room for 1 MB: a 200 KB URL gets the JSON 414, not a reset connection."""
    with RealServer(create_app(index_dir)) as server:
        for n in (9_000, 200_000):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                s.sendall(b"GET /api/search?q=" + b"a" * n + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while b"}" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            assert data.startswith(b"HTTP/1.1 414") and b'"ok":false' in data and b"longer than 8192" in data


def test_load_smoke(index_dir, monkeypatch):
    """Sixteen clients over the JSON, image and page routes while a seventeenth loops a query the
    time limit stops: every fast request answers 200, the slow ones 408, nothing else."""
    import httpx

    from neuronindex.settings import Settings

    app = create_app(index_dir, settings=Settings(sql_time_limit=1.0))
    import neuronindex

    with neuronindex.open(index_dir) as idx:  # the neurons with an NF and crops (a dead one's NF is a 404)
        keys = [r["key"] for r in idx.query("SELECT n.key FROM neurons n JOIN neuron_features f ON f.neuron_id = n.id "
                                            "WHERE f.nf_png IS NOT NULL AND f.sprite_png IS NOT NULL ORDER BY n.id")]
    assert len(keys) >= 6
    paths = [p for k in keys for p in (f"/api/neurons/{k}", f"/api/neurons/{k}/nf.png", f"/api/neurons/{k}/crops.png",
                                      f"/api/neurons/{k}/crops/1.png", f"/neuron/{k}", f"/api/search?q={k.split('/')[1]}")]
    statuses, slow_statuses = [], []
    with RealServer(app) as server:
        stop = threading.Event()

        def slow():
            with httpx.Client(base_url=server.base, timeout=60) as http:
                while not stop.is_set():
                    slow_statuses.append(http.post("/api/sql", json={"sql": ENDLESS_SQL}).status_code)

        def fast(seed):
            with httpx.Client(base_url=server.base, timeout=60) as http:
                for i in range(60):
                    statuses.append(http.get(paths[(seed * 7 + i) % len(paths)]).status_code)
        slow_thread = threading.Thread(target=slow)
        slow_thread.start()
        wait_for(lambda: app.state.light.pending >= 1)
        threads = [threading.Thread(target=fast, args=(s,)) for s in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        slow_thread.join()
        status = httpx.get(server.base + "/api/status").json()
    assert len(statuses) == 16 * 60 and set(statuses) == {200}
    assert slow_statuses and set(slow_statuses) == {408}
    assert status["answers"]["entries"] == len(set(paths)) and status["pools"]["query"]["pending"] == 0
