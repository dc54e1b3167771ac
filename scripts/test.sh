#!/usr/bin/env bash
# The README's test command: installs the package with its test extra, then runs ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test]"
python3 -m ruff check src tests benchmarks
python3 -m pytest -q "$@"
