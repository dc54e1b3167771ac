#!/usr/bin/env bash
# The README's test command: installs the package with its test and docs extras, then runs ruff, type-checks
# the public API with mypy (the files and settings of pyproject.toml's [tool.mypy]), builds the documentation
# strictly (a broken link or a missing page fails) and runs pytest on parallel workers (pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test,docs]"
python3 -m ruff check src tests benchmarks hubconf.py
python3 -m mypy  # about 20 s from cold, under 2 s with its cache (.mypy_cache)
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
python3 -m mkdocs build --strict --quiet --site-dir "$site_dir"
# One worker per core, at most 4 (each holds its own models and fixtures); -n 0 runs in this process.
python3 -m pytest -q -n auto --maxprocesses 4 "$@"
