"""The Python API as people type it: stdin, `python -c` and a script without a __main__ guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "analysis"))

from planted import SMALL_CONFIG, small_states, write_state_run  # noqa: E402

# No `if __name__ == "__main__":` guard, on purpose: that is how people type it.
TOUR = """
import sys
import opdlens

with open(sys.argv[-1], "a") as f:  # one line per run of this top-level code
    f.write("ran\\n")
run = opdlens.open_run({run!r})
pooled = opdlens.analyze(run, ranks=(1, 4), workers=2)
default = opdlens.analyze(run, ranks=(1, 4))
inline = opdlens.analyze(run, ranks=(1, 4), workers=1)
assert pooled.equals(inline) and default.equals(inline), "pool and inline rows differ"
print("rows", len(pooled))
"""


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_state_run(tmp_path_factory.mktemp("tour"), small_states(), SMALL_CONFIG)


@pytest.mark.parametrize("how", ["stdin", "script", "dash-c"])
def test_analyze_with_a_pool_from_stdin_script_and_dash_c(run_root, tmp_path, how):
    code = TOUR.format(run=str(run_root))
    ran = tmp_path / "ran.txt"
    if how == "stdin":
        cmd, stdin = [sys.executable, "-", str(ran)], code
    elif how == "script":
        script = tmp_path / "tour.py"
        script.write_text(code)
        cmd, stdin = [sys.executable, str(script), str(ran)], None
    else:
        cmd, stdin = [sys.executable, "-c", code, str(ran)], None
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("rows ")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # The workers never re-ran the caller's top-level code.
    assert ran.read_text() == "ran\n"
