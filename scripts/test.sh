#!/usr/bin/env bash
# Install opdlens with its test extras (CPU torch 2.13.0 first, so pip never pulls a CUDA build),
# check lint and types (ruff, mypy), and run the whole test suite, slow end-to-end tests included.
# Then it runs the quick tests again at both ends of what opdlens supports, each in
# its own venv under .venvs/: the oldest torch on the oldest Python (torch 2.6.0, Python 3.10) and the newest
# release on the newest Python here (torch 2.15.0, Python 3.13). Those venvs hold what a user's
# training environment may be no more than: torch, opdlens and the tools the tests write
# checkpoints with (transformers, peft); tests of optional extras (Ray, TRL, notebooks) skip
# there. Their torch builds come from the registry as CUDA builds (~3 GB to download, ~6 GB
# installed, with their nvidia-* packages), so the passes run one after the other, each venv
# removed once its pass has passed, and pip keeps no cache: at most one venv is on disk at a time.
# The floor's venv is built while the main suite runs.
#
#   bash scripts/test.sh                  # lint, types, the whole suite, both version passes (CI)
#   bash scripts/test.sh --no-versions    # without the version passes
#   bash scripts/test.sh [--no-versions] -- PYTEST_ARGS...   # e.g. -- -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."

versions=1
while [ $# -gt 0 ]; do
    case "$1" in
        --versions) versions=1; shift ;;
        --no-versions) versions=0; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done

# (venv, python, torch) at each end of the supported range; README's "Versions" says the same.
FLOOR=(".venvs/floor" "3.10" "2.6.0")
NEWEST=(".venvs/newest" "3.13" "2.15.0")

find_python() {  # find_python 3.10: a python3.10 under pyenv or on PATH that runs, else nothing
    local root cand
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    # pyenv's shim for a version that is not the active one is on PATH but does not run.
    for cand in $(ls -d "$root"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -rV) \
        "$(command -v "python$1" 2>/dev/null)"; do
        if [ -n "$cand" ] && "$cand" -c "import sys" >/dev/null 2>&1; then
            echo "$cand"
            return
        fi
    done
}

make_venv() {  # make_venv DIR PY TORCH [PIP ARGS]: that torch and the test tools (opdlens later)
    local dir=$1 version=$2 torch=$3 py
    shift 3
    py=$(find_python "$version")
    if [ -z "$py" ]; then
        # The torch end of the range is still tested, on the Python that runs this script.
        py=$(command -v python)
        echo "scripts/test.sh: no Python $version here (PATH or pyenv): the $dir pass tests torch $torch on $("$py" -c 'import sys; print(sys.version.split()[0])') instead" >&2
    fi
    rm -rf "$dir"
    "$py" -m venv "$dir"
    # A machine-wide pip constraint may cap torch below the newest release: this venv names its own.
    PIP_CONSTRAINT=$PWD/scripts/no-constraints.txt "$dir/bin/python" -m pip install --quiet \
        --disable-pip-version-check --no-cache-dir "torch==$torch" pytest hypothesis transformers peft "$@"
}

if [ "$versions" = 1 ]; then
    trap 'kill $(jobs -p) 2>/dev/null || true' EXIT  # a failed main suite stops the download
    mkdir -p .venvs
    # The oldest pass: every runtime dependency at exactly the floor pyproject.toml declares.
    make_venv "${FLOOR[@]}" -r scripts/floor-requirements.txt >.venvs/floor.log 2>&1 &
    floor_pid=$!
fi

python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
ruff check .
ruff format --check .
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
python -m pytest -q --durations=25 "$@"

if [ "$versions" = 1 ]; then
    # A job started with & by a non-interactive shell has SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: the ctrl-c tests need the default disposition back before exec.
    sigint_default=(python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])')
    failed=0
    for spec in floor newest; do
        if [ "$spec" = floor ]; then
            wait "$floor_pid" || setup_failed=1
        else
            make_venv "${NEWEST[@]}" >.venvs/newest.log 2>&1 || setup_failed=1
        fi
        if [ "${setup_failed:-0}" = 1 ]; then
            echo "scripts/test.sh: setting up the $spec venv failed; its log:" >&2
            grep -v "^WARNING: Location" ".venvs/$spec.log" >&2 || true
            df -h . >&2 || true
            exit 1
        fi
        # The floor's pins stay as they are while opdlens' requirements are resolved.
        pins=$PWD/scripts/$([ "$spec" = floor ] && echo floor-requirements || echo no-constraints).txt
        PIP_CONSTRAINT=$pins ".venvs/$spec/bin/python" -m pip install \
            --quiet --disable-pip-version-check --no-cache-dir -e . >>".venvs/$spec.log" 2>&1 || {
            echo "scripts/test.sh: installing opdlens into the $spec venv failed; its log:" >&2
            grep -v "^WARNING: Location" ".venvs/$spec.log" >&2
            exit 1
        }
        echo "== quick tests on $(".venvs/$spec/bin/python" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"
        basetemp="${TMPDIR:-/tmp}/opdlens-tests-$spec-$$"
        if "${sigint_default[@]}" ".venvs/$spec/bin/python" -m pytest -q -m "not slow" \
            -p no:cacheprovider --basetemp="$basetemp"; then
            rm -rf ".venvs/$spec" "$basetemp"  # ~6 GB each: the next pass needs the room
        else
            failed=1
        fi
    done
    exit $failed
fi
