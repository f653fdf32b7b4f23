"""The README cannot drift: its quick start commands run as written."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()
DEMO_SMALL = "--per-class 120 --epochs 10 -q"  # reduced size; the checks still hold (measured 93% accuracy)


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_exactly_two_setup_commands_and_ci_runs_the_second():
    commands = quick_start()
    assert len(commands) == 2
    assert "neuronindex demo" in commands[0] and "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci


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
