#!/usr/bin/env bash
# Install opdlens with its test extras (CPU torch 2.13.0 first, so pip never pulls a CUDA build),
# type-check the package with mypy ([tool.mypy] in pyproject.toml), and run the whole test
# suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
python -m mypy
python -m pytest -q "$@"
