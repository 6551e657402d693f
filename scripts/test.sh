#!/usr/bin/env bash
# Install opdlens with its test extras (CPU torch 2.13.0 first, so pip never pulls a CUDA build),
# type-check the package with mypy ([tool.mypy] in pyproject.toml), and run the whole test
# suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
python -m mypy
# The report test renders the HTML page in a real browser (Debian's chromium).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "scripts/test.sh: chromium is missing and cannot be installed here (needs root and apt-get); the report's browser test will be skipped" >&2
    fi
fi
python -m pytest -q "$@"
