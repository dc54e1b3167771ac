"""The built wheel: it ships what users of the package rely on besides the code (the py.typed marker, so that
type checkers read our annotations; the shipped recipes and class lists)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("tresnet/py.typed", "tresnet/configs/digits-demo.yaml", "tresnet/data/imagenet_synsets.txt")


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built offline (no build isolation) from a copy of the sources, so the tree keeps no build files."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "--quiet", "-w", str(wheels), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("tresnet-*.whl")
    return wheel


def test_wheel_ships_the_type_marker_and_the_data_files(tmp_path):
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"the wheel lacks {missing}: keep them under src/ and in pyproject.toml's package-data"
