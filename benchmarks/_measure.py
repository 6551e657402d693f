"""Time one command as a fresh process tree and poll its peak RSS, shared by the benchmarks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run a command; poll the RSS of its whole process tree (workers included) every 100 ms, and
# take the kernel's own peak of the largest process (ru_maxrss) when it is higher. Polling every
# 20 ms cost ~12 % of a core here, taken from the multi-threaded commands being timed.
LAUNCH = textwrap.dedent("""
    import os, resource, subprocess, sys, time
    def tree(root):
        kids = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(p))
        out, todo = [], [root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out
    def rss(pid):
        got = {}
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(("VmRSS:", "RssAnon:")):
                    k, v = line.split()[:2]
                    got[k] = int(v) * 1024
        except OSError:
            pass
        return got
    t = time.perf_counter()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_rss = peak_anon = 0
    while proc.poll() is None:
        vals = [rss(p) for p in tree(proc.pid)]
        peak_rss = max(peak_rss, sum(v.get("VmRSS:", 0) for v in vals))
        peak_anon = max(peak_anon, sum(v.get("RssAnon:", 0) for v in vals))
        time.sleep(0.1)
    err = proc.stderr.read().decode()[-2000:]
    peak_rss = max(peak_rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    print(proc.returncode, time.perf_counter() - t, peak_rss, peak_anon, repr(err))
""")


def measure(cmd: list[str]) -> tuple[float, int, int]:
    """Wall time (s), peak RSS and peak anonymous RSS (bytes) of one fresh process tree."""
    out = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], capture_output=True, text=True)
    rc, elapsed, rss, anon, err = out.stdout.split(maxsplit=4)
    if int(rc) != 0:
        raise SystemExit(f"{cmd[:6]} failed with status {rc}: {err}")
    return float(elapsed), int(rss), int(anon)


def opdlens_cmd(*args: str) -> list[str]:
    """The `opdlens` console script as a fresh interpreter runs it."""
    entry = "import sys; from opdlens.cli import console; sys.argv[0] = 'opdlens'; console()"
    return [sys.executable, "-c", entry, *args]
