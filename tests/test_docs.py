"""The README and docs/ cannot drift: the quick start runs as written, and every command and snippet
of the README and of each docs page runs, page by page in reading order, against the default demo
index built here (and ../shared/data where it exists). What cannot run here is reported as a skip
with its reason, after everything else on the page has run."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, SHARED

README = (REPO / "README.md").read_text(encoding="utf-8")
# reading order: later pages read what earlier ones wrote (held-out, cifar, squeezenet indexes)
PAGES = ["README.md", "docs/ingest.md", "docs/explore.md", "docs/search.md", "docs/sql.md", "docs/python.md",
         "docs/http.md", "docs/scale-out.md", "docs/indexes.md", "docs/performance.md", "docs/security.md",
         "docs/layout.md"]
SHARED_INDEXES = ("cifar", "cifar-ray", "squeezenet")  # indexes the docs build from ../shared/data
INGEST_LIMIT = 64  # doc ingests run on their first images here: the full runs are the integration tests'
README_MAX_LINES = 250


def text(page: str) -> str:
    return (REPO / page).read_text(encoding="utf-8")


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def blocks(lang: str, page_text: str) -> list[str]:
    if page_text is README:  # the quick start is the install and the test run: tested on its own
        page_text = README.split("## What the demo printed", 1)[1]
    return re.findall(rf"```{lang}\n(.*?)```", page_text, re.S)


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


def test_readme_is_a_five_minute_read_and_links_every_page():
    assert len(README.splitlines()) <= README_MAX_LINES
    for page in PAGES[1:]:
        assert f"({page})" in README, page
    for page in PAGES:
        assert not re.search(r"\bseeds? 00\d", text(page), re.I), page  # papers by name, not our file numbers


def test_every_cli_command_is_documented_and_has_help():
    from neuronindex_cli.main import cli

    everything = "\n".join(text(p) for p in PAGES)
    for name, command in cli.commands.items():
        assert f"neuronindex {name}" in everything, name
        assert command.help and len(command.help) > 20, name
        assert not re.search(r"\bseeds? 00\d", command.help, re.I), name


@pytest.mark.slow
def test_install_and_demo_command_as_written(tmp_path):
    """The first command as written (the default demo, not a reduced one), then the README's first
    query on what it wrote; a second run reuses the model and the index."""
    command = quick_start()[0]
    out = tmp_path / "demo"
    first = subprocess.run(f"{command} --out {out}", shell=True, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stdout.count("[ok]") == 4 and "FAILED" not in first.stdout
    assert "search 'red conv1_1':\n(no rows)" not in first.stdout
    assert (out / "index" / "index.duckdb").exists() and (out / "red-neurons.html").exists()
    red = subprocess.run(["neuronindex", "search", str(out / "index"), "red conv1"], capture_output=True, text=True)
    assert red.returncode == 0 and "demo_cnn/conv1_1/" in red.stdout and " red" in red.stdout
    model_time = (out / "model.pt").stat().st_mtime_ns
    index_time = (out / "index" / "index.duckdb").stat().st_mtime_ns
    again = subprocess.run(f"neuronindex demo --out {out} -q", shell=True, cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and again.stdout.count("[ok]") == 4
    assert (out / "model.pt").stat().st_mtime_ns == model_time  # reused, not retrained
    assert (out / "index" / "index.duckdb").stat().st_mtime_ns == index_time


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding `neuronindex-demo/` as the README's first command leaves it (the default demo)."""
    from neuronindex.demo import run_demo

    root = tmp_path_factory.mktemp("docs")
    result = run_demo(root / "neuronindex-demo", progress=False)
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
                    assert [m["name"] for m in json.load(r)["rows"]] == ["demo_cnn"]
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.time() < deadline, "the server did not answer within 60 s"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=20)


def _needs_shared(command: str) -> bool:
    return "../shared/data" in command or bool(re.match(rf"neuronindex \w+ ({'|'.join(SHARED_INDEXES)}) ", command))


def _outputs(command: str) -> list[str]:
    """Files and folders a command says it writes (`-o FILE`, `--to DIR`, `--png-dir DIR`, `--index DIR`)."""
    found = re.findall(r"(?:\s-o|--to|--png-dir|--index)\s+(\S+)", command)
    return [f for f in found if f != "-"]


def _check(command: str, out: str, cwd: Path) -> None:
    on_demo = "neuronindex-demo/index" in command
    if command.startswith("neuronindex search"):
        if "--explain" in command:
            assert "SELECT" in out and "-- parameters:" in out, command
        elif on_demo:
            assert "demo_cnn/" in out, f"{command}: no rows on the demo"
    if command.startswith(("neuronindex nearest", "neuronindex similar", "neuronindex sql")) and on_demo:
        assert "(no rows)" not in out and out.strip(), f"{command}: no rows on the demo"
    if "--format json" in command:
        json.loads(out)
    if " -o -" in command:
        assert out.startswith("rank,key,"), command
    for path in _outputs(command):
        target = cwd / path
        assert target.exists(), f"{command} wrote no {path}"
        if target.is_file():
            assert target.stat().st_size > 500, f"{command}: {path} is nearly empty"
    if command.startswith("neuronindex export") and on_demo and "--format html" in command:
        written = (cwd / _outputs(command)[0]).read_text()
        assert written.count("<tr>") >= 2, f"{command} exported no neuron"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, workdir, monkeypatch):
    """Each bash command of the page in order, with checks of what it must produce; each python
    block exec'd in the demo's folder; each sql block on the demo index."""
    import neuronindex

    body = README if page == "README.md" else text(page)
    skipped, ran = [], 0
    for block in blocks("bash", body):
        for command in commands(block):
            if _needs_shared(command):
                if not SHARED.is_dir():
                    skipped.append(command.split(" --", 1)[0])
                    continue
                command = command.replace("../shared/data", str(SHARED))
            if command.startswith("neuronindex ingest"):
                command += f" --limit {INGEST_LIMIT}" + ("" if " -q" in command else " -q")
            if command.startswith("neuronindex serve"):
                _serve(command, workdir)
            else:
                _check(command, _run(command, workdir).stdout, workdir)
            ran += 1
    monkeypatch.chdir(workdir)
    for snippet in blocks("python", body):
        exec(compile(snippet, page, "exec"), {})
        ran += 1
    for query in blocks("sql", body):
        with neuronindex.open(workdir / "neuronindex-demo" / "index") as idx:
            rows = idx.sql(query).rows()
        assert rows and {r["model"] for r in rows} == {"demo_cnn"}, query
        ran += 1
    if skipped:
        pytest.skip(f"{page}: ran {ran} blocks and commands; {len(skipped)} need ../shared/data, absent here: "
                    + "; ".join(skipped))


def test_python_blocks_compile():
    for page in PAGES:
        for snippet in blocks("python", README if page == "README.md" else text(page)):
            compile(snippet, page, "exec")
    assert sys.version_info >= (3, 11)
