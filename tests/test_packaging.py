"""A non-editable install carries the CLI, the migrations and the templates under project names."""
from __future__ import annotations

import subprocess
import sys
import zipfile

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


def test_installed_wheel_runs(tmp_path):
    """Install the wheel into a fresh venv (reusing this interpreter's packages) and run the CLI."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "w"), str(REPO)], check=True, timeout=300, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    (wheel,) = (tmp_path / "w").glob("*.whl")
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    code = ("import neuronindex, neuronindex_cli, neuronindex.store as s, neuronindex.stats as st; "
            "print(neuronindex.__file__); print(s.code_version()); print(st.native() is not None)")
    out = subprocess.run([venv / "bin" / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(venv) in out.stdout.splitlines()[0]  # the installed copy, not the checkout
    assert int(out.stdout.splitlines()[1]) >= 6
    assert out.stdout.splitlines()[2] == str(native_expected())  # the native kernels load from the wheel
    result = subprocess.run([venv / "bin" / "neuronindex", "layers", "cifar-resnet20", "--format", "json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and '"alias": "conv19"' in result.stdout
