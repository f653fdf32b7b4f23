"""A non-editable install carries the CLI, the migrations and the templates under project names."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, native_expected


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("neuronindex-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "neuronindex_cli/main.py" in names and "neuronindex_cli/__main__.py" in names
    assert "neuronindex_migrations/0001_initial.sql" in names and "neuronindex_migrations/__init__.py" in names
    assert "neuronindex/service/templates/home.html" in names
    assert not any(n.startswith("cli/") or n.startswith("migrations/") for n in names)
    if native_expected():
        assert any(n.startswith("neuronindex/_pass1.") and n.endswith(".so") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "neuronindex = neuronindex_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def run(args, **kw):
    """Run a child process; on failure the assertion shows what it printed (stderr included)."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{args[:3]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_installed_wheel_runs(tmp_path):
    """Install the wheel into a fresh venv and run the CLI. The venv sees this interpreter's
    packages through a .pth file naming its site-packages: `--system-site-packages` would expose
    the *base* interpreter's instead when the tests themselves run inside a venv."""
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "w", REPO],
        timeout=300)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    child = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (Path(child.stdout.strip()) / "_parent_packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    (wheel,) = (tmp_path / "w").glob("*.whl")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
         "--force-reinstall", wheel], timeout=300)
    code = ("import neuronindex, neuronindex_cli, neuronindex.store as s, neuronindex.nets.kernels as k; "
            "print(neuronindex.__file__); print(s.code_version()); print(k.native() is not None)")
    out = run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    assert str(venv) in out.stdout.splitlines()[0]  # the installed copy, not the checkout
    assert int(out.stdout.splitlines()[1]) >= 6
    assert out.stdout.splitlines()[2] == str(native_expected())  # the native kernels load from the wheel
    result = subprocess.run([venv / "bin" / "neuronindex", "layers", "cifar-resnet20", "--format", "json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and '"alias": "conv19"' in result.stdout
