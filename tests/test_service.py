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
    assert [m["name"] for m in client.get("/api/models").json()] == ["tiny_cnn"]
    assert [l["name"] for l in client.get("/api/layers").json()] == ["conv1", "conv2"]
    summary = client.get("/api/summary").json()
    assert [s["layer"] for s in summary] == ["conv1", "conv2"] and summary[0]["neurons"] == 4


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
    assert_error(client.get("/api/report/nope/fig8_alpha_bins.png"), 404, "no figure")


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
        images = client.get("/api/models").json()[0]["images"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "neuronindex_cli", "ingest", "--model", "python:tinymodels:tiny_cnn",
                        "--input-size", "16", "16", "--resize-policy", "resize", "--images", images, "--layers", "conv1",
                        "--index", str(live), "--name", "second", "--top-k", "4", "-q"], env=env, check=True, timeout=300)
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join()
    assert not errors
    assert [m["name"] for m in client.get("/api/models").json()] == ["tiny_cnn", "second"]


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
