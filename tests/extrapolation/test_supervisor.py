"""The scorer supervisor relays exit statuses and ends its process group when its parent dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from opdlens.extrapolation.supervisor import supervised


def test_exit_status_and_signals_are_relayed() -> None:
    run = lambda script: subprocess.run(  # noqa: E731
        supervised(["/bin/sh", "-c", script]), start_new_session=True, capture_output=True
    )
    assert run("exit 3").returncode == 3
    assert run("kill -9 $$").returncode == -9
    done = run("echo 2.5; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"2.5\n", b"err\n")


def test_the_group_dies_with_the_parent(tmp_path: Path) -> None:
    """A parent that vanishes without cleaning up (as under SIGKILL) takes the command along."""
    pidfile = tmp_path / "pid"
    parent = (
        "import os, subprocess, sys, time\n"
        "from opdlens.extrapolation.supervisor import supervised\n"
        f"subprocess.Popen(supervised(['/bin/sh', '-c', 'echo $$ > {pidfile}; sleep 60']),"
        " start_new_session=True)\n"
        f"while not os.path.exists({str(pidfile)!r}): time.sleep(0.01)\n"
        "os._exit(0)\n"  # no cleanup, no signal to the group: only the supervisor can end it
    )
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=60)
    shell = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(shell, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{shell}/stat").read_text().split(")")[1].split()[0] == "Z":
            return  # a zombie waiting for init to reap it: ended
        time.sleep(0.05)
    raise AssertionError(f"the scorer shell {shell} outlived its parent by 5 s")
