"""A scorer command's supervisor: it ends the command's process group when opdlens dies.

SIGINT, SIGTERM and timeouts let opdlens kill a scorer command's process group itself; SIGKILL
does not. So the command runs under a small Python process, the leader of its own session, that
starts the command in its process group, relays its exit status, and kills the whole group as
soon as its parent (opdlens) is gone, however opdlens ended.
"""

from __future__ import annotations

import os
import sys

__all__ = ["supervised"]

# argv: the parent's PID, then the command. -I -S: no site packages or environment, a fast start.
_SCRIPT = r"""
import os, signal, sys, time
parent = int(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_DFL)
pid = os.fork()
if pid == 0:
    for name in ("SIGPIPE", "SIGXFSZ"):  # as subprocess does: Python ignores them, exec keeps that
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    except OSError as e:
        os.write(2, f"opdlens-scorer: cannot run {sys.argv[2]}: {e}\n".encode())
    os._exit(127)
nap = 0.001
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if os.getppid() != parent:  # opdlens is gone (even by SIGKILL): take the group with it
        os.killpg(0, signal.SIGKILL)
    time.sleep(nap)
    nap = min(nap * 2, 0.2)
code = os.waitstatus_to_exitcode(status)
if code < 0:  # killed by a signal: die of the same one, so opdlens sees what sh -c would show
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    code = 128 - code
sys.exit(code)
"""


def supervised(cmd: list[str]) -> list[str]:
    """`cmd` run under the supervisor; start it with `start_new_session=True`."""
    return [sys.executable, "-I", "-S", "-c", _SCRIPT, str(os.getpid()), *cmd]
