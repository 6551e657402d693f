"""Benchmark one extrapolated checkpoint against a plain file copy and a minimal safetensors loop.

Run: python benchmarks/bench_extrapolate.py [--workdir /tmp/opdlens-bench] [--layers 28] [--vocab 151936]
The defaults are Qwen3-0.6B's own shape: 28 layers, 151,936-token tied embedding, bf16 (1.1 GiB).
Each measurement runs in a fresh subprocess (after one warm-up of each), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _qwen3_run import QWEN3_VOCAB, build_run  # noqa: E402

STEP, ANCHOR, ALPHA = 4, 2, 1.5

COPY = """
import shutil, sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir()
for f in src.iterdir():
    shutil.copy(f, out / f.name)
"""

# The floor in Python: read each tensor, compute in float32, round, save with safetensors.
MINIMAL = """
import sys
import torch
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
cur, anc, out, alpha = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
out.mkdir()
result = {}
with safe_open(cur / "model.safetensors", "pt") as fc, safe_open(anc / "model.safetensors", "pt") as fa:
    for name in fc.keys():
        t = fc.get_tensor(name)
        if (".self_attn." in name or ".mlp." in name) and t.dim() == 2:
            t32 = t.float()
            t = (t32 + alpha * (t32 - fa.get_tensor(name).float())).to(t.dtype)
        result[name] = t
save_file(result, out / "model.safetensors", metadata={"format": "pt"})
"""


# A small launcher, so the measured child is forked from a small process: on Linux a child's
# ru_maxrss counts the memory it inherited at fork, before exec.
LAUNCH = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak RSS (bytes) of one fresh subprocess."""
    out = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], capture_output=True, text=True)
    rc, elapsed, rss = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"{cmd[:4]} failed with status {rc}: {out.stderr[-2000:]}")
    return float(elapsed), int(rss) * 1024  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--vocab", type=int, default=QWEN3_VOCAB)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = build_run(args.workdir, args.layers, args.vocab)
    cur, anc = run / f"checkpoint-{STEP}", run / f"checkpoint-{ANCHOR}"
    size = (cur / "model.safetensors").stat().st_size
    outs = args.workdir / "outputs"
    opdlens = [
        sys.executable,
        "-c",
        "import sys; from opdlens.cli import console; sys.argv[0] = 'opdlens'; console()",
    ]
    cases = {
        "(a) plain copy": lambda o: [sys.executable, "-c", textwrap.dedent(COPY), str(cur), str(o)],
        "(b) minimal safetensors loop": lambda o: [sys.executable, "-c", textwrap.dedent(MINIMAL), str(cur),
                                                   str(anc), str(o), str(ALPHA)],
        "(c) opdlens extrapolate": lambda o: [*opdlens, "extrapolate", str(run), "--step", str(STEP),
                                              "--anchor", str(ANCHOR), "--alpha", str(ALPHA), "--out",
                                              str(o), "--quiet"],
    }  # fmt: skip
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in cases}
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        for label, make in cases.items():
            shutil.rmtree(outs, ignore_errors=True)
            outs.mkdir(parents=True)
            t, rss = measure(make(outs / "ck"))
            if repeat:
                results[label].append((t, rss))
    shutil.rmtree(outs, ignore_errors=True)
    print(f"run {run}: {args.layers} layers, vocab {args.vocab}, checkpoint {size / 2**20:.0f} MiB (bf16), "
          f"best of {args.repeats} after a warm-up, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'case':32s} {'time s':>8s} {'peak RSS MiB':>13s} {'RSS/ckpt':>9s}")
    best = {}
    for label, rows in results.items():
        t = min(r[0] for r in rows)
        rss = max(r[1] for r in rows)
        best[label] = (t, rss)
        print(f"{label:32s} {t:8.2f} {rss / 2**20:13.0f} {rss / size:9.2f}")
    (ta, _), (tb, _), (tc, rc) = best.values()
    print(f"(c)/(b) time: {tc / tb:.2f}x (target ≤ 1.2x)   (c)/(a) time: {tc / ta:.2f}x   "
          f"(c) peak RSS / checkpoint: {rc / size:.1%} (target ≤ 25%)")  # fmt: skip


if __name__ == "__main__":
    main()
