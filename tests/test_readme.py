"""The README cannot drift: its quick start runs as written, and so does every command and snippet
of its "Use" section, against a demo index built here (and ../shared/data where it exists)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, SHARED

README = (REPO / "README.md").read_text()
DEMO_SMALL = "--per-class 120 --epochs 10 -q"  # reduced size; the checks still hold (measured 93% accuracy)
USE = README.split("## Use", 1)[1]
SHARED_INDEXES = ("cifar", "squeezenet")  # indexes the README builds from ../shared/data
INGEST_LIMIT = 64  # README ingests run on their first images here: the full runs are the integration tests'


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def blocks(lang: str, text: str = USE) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current = f"{current} {line.strip()}" if current else line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        out.append(re.sub(r"\s+#\s.*$", "", current))
        current = ""
    return out


def test_exactly_two_setup_commands_and_ci_runs_the_second():
    commands_ = quick_start()
    assert len(commands_) == 2
    assert "neuronindex demo" in commands_[0] and "pytest" in commands_[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands_[1] in ci


def test_every_cli_command_is_in_the_readme_and_has_help():
    from neuronindex_cli.main import cli

    for name, command in cli.commands.items():
        assert f"neuronindex {name}" in README, name
        assert command.help and len(command.help) > 20, name


@pytest.mark.slow
def test_install_and_demo_command_as_written(tmp_path):
    command = quick_start()[0]
    out = tmp_path / "demo"
    run = f"{command} --out {out} {DEMO_SMALL}"
    first = subprocess.run(run, shell=True, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stdout.count("[ok]") == 3 and "FAILED" not in first.stdout
    assert (out / "index" / "index.duckdb").exists() and (out / "red-neurons.html").exists()
    model_time = (out / "model.pt").stat().st_mtime_ns
    index_time = (out / "index" / "index.duckdb").stat().st_mtime_ns
    again = subprocess.run(f"neuronindex demo --out {out} {DEMO_SMALL}", shell=True, cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("[ok]") == 3
    assert (out / "model.pt").stat().st_mtime_ns == model_time  # reused, not retrained
    assert (out / "index" / "index.duckdb").stat().st_mtime_ns == index_time


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding `neuronindex-demo/` as the quick start leaves it (smaller, same checks)."""
    from neuronindex.demo import run_demo

    root = tmp_path_factory.mktemp("readme")
    result = run_demo(root / "neuronindex-demo", per_class=120, epochs=10, progress=False)
    assert all(result["tour"]["checks"].values())
    return root


def _run(command: str, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _serve(command: str, cwd) -> None:
    """`neuronindex serve` runs until stopped: start it, ask the API, stop it."""
    port = int(re.search(r"--port (\d+)", command).group(1))
    server = subprocess.Popen(shlex.split(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=2) as r:
                    assert [m["name"] for m in json.load(r)] == ["demo_cnn"]
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.time() < deadline, "the server did not answer within 60 s"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.slow
def test_every_use_command_runs(workdir):
    """Each bash command of "Use", in order (later ones read what earlier ones wrote), with checks
    of what it must produce. Commands on ../shared/data run where that folder exists."""
    ran = 0
    for block in blocks("bash"):
        for command in commands(block):
            if "../shared/data" in command or re.match(rf"neuronindex \w+ ({'|'.join(SHARED_INDEXES)}) ", command):
                if not SHARED.is_dir():
                    continue
                command = command.replace("../shared/data", str(SHARED))
            if command.startswith("neuronindex ingest"):
                command += f" --limit {INGEST_LIMIT}" + ("" if " -q" in command else " -q")
            if command.startswith("neuronindex serve"):
                _serve(command, workdir)
                ran += 1
                continue
            out = _run(command, workdir).stdout
            ran += 1
            if command.startswith("neuronindex search"):
                # each README search finds neurons on the demo; --explain prints the SQL instead
                assert ("SELECT" in out and "-- parameters:" in out) if "--explain" in command else "demo_cnn/" in out, command
            if "--format json" in command:
                json.loads(out)
            if " -o -" in command:
                assert out.startswith("rank,key,"), command
    assert ran >= 25
    for written in ("red.html", "n.png", "report.html", "held-out/index.duckdb"):
        assert (workdir / written).stat().st_size > 500, written
    assert len(list((workdir / "figures").glob("*.png"))) >= 5
    assert len(list((workdir / "parquet").glob("*.parquet"))) >= 10
    if SHARED.is_dir():
        assert (workdir / "squeezenet" / "index.duckdb").exists() and (workdir / "cifar" / "index.duckdb").exists()


@pytest.mark.slow
def test_python_snippet_runs(workdir, monkeypatch):
    (snippet,) = blocks("python")
    monkeypatch.chdir(workdir)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    idx = scope["idx"]
    assert scope["red"].rows() and all(r["color_name"] == "red" for r in scope["red"].rows())
    assert set(scope["n"].row) >= {"color_index", "color_name", "class_index", "csi", "mean_chroma", "top_class"}
    assert (workdir / "rounds.html").read_text().count("<tr>") >= 2
    idx.close()


@pytest.mark.slow
def test_sql_snippets_run_on_this_duckdb(workdir):
    import duckdb

    import neuronindex

    (query,) = blocks("sql")
    with neuronindex.open(workdir / "neuronindex-demo" / "index") as idx:
        rows = idx.sql(query).rows()
    assert duckdb.__version__ and rows and {r["model"] for r in rows} == {"demo_cnn"}
    assert all(0 <= r["colour_selective"] <= 1 for r in rows if r["colour_selective"] is not None)


def test_readme_python_blocks_compile():
    for snippet in blocks("python", README):
        compile(snippet, "README.md", "exec")
    assert sys.version_info >= (3, 11)
