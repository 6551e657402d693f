"""Benchmark `opdlens analyze` against the I/O floor and the naive full-SVD method (issue 6)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure, opdlens_cmd  # noqa: E402
from _qwen3_run import build_run  # noqa: E402

# Read every tensor of every checkpoint and form Δ_t in float32; no metric.
IO_FLOOR = """
import sys
from pathlib import Path
from safetensors import safe_open
run = Path(sys.argv[1])
dirs = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
base = safe_open(dirs[0] / "model.safetensors", "pt")
cks = [safe_open(d / "model.safetensors", "pt") for d in dirs[1:]]
for name in base.keys():
    w0 = base.get_tensor(name).float()
    for ck in cks:
        delta = ck.get_tensor(name).float() - w0
"""

# The naive method: full torch.linalg.svd of every 2-D Δ_t at the given steps.
NAIVE = """
import json, sys, time
from pathlib import Path
import torch
from safetensors import safe_open
run, steps, out, kmax = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3], 16
base = safe_open(run / "checkpoint-0" / "model.safetensors", "pt")
cks = {s: safe_open(run / f"checkpoint-{s}" / "model.safetensors", "pt") for s in steps}
res, svd_time = {}, 0.0
for name in base.keys():
    w0 = base.get_tensor(name).float()
    if w0.dim() != 2:
        continue
    f = {}
    for s in steps:
        d = cks[s].get_tensor(name).float() - w0
        t = time.perf_counter()
        u, sv, vh = torch.linalg.svd(d, full_matrices=False)
        svd_time += time.perf_counter() - t
        f[s] = (u[:, :kmax].double(), sv.double(), float(d.double().pow(2).sum()))
    T = steps[-1]
    for s in steps:
        u, sv, tot = f[s]
        svT = f[T][1]
        res[f"{name}@{s}"] = {
            key: val
            for k in (1, 4, 16)
            for key, val in (
                (f"energy_k{k}", float((sv[:k] ** 2).sum()) / tot),
                (f"align_left_k{k}", float(((u[:, :k].T @ f[T][0][:, :k]) ** 2).sum()) / k),
                (f"defined_k{k}", bool(min((sv[k - 1] - sv[k]) / sv[0], (svT[k - 1] - svT[k]) / svT[0]) >= 1e-2)),
            )
        }
json.dump({"svd_time": svd_time, "rows": res}, open(out, "w"))
"""


def analyze_cmd(run: Path, out: Path, workers: int | None) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh output: no cache hits
    cmd = opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", "1,4,16", "--quiet")
    return cmd + ([] if workers is None else ["--workers", str(workers)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument("--layers", type=int, default=8, help="8 by default; 28 for the full model")
    args = parser.parse_args()
    run = build_run(args.workdir, args.layers)
    steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    ck_bytes = (run / "checkpoint-0" / "model.safetensors").stat().st_size
    out = args.workdir / "analyze-out"
    py = [sys.executable, "-c"]
    measure(py + [IO_FLOOR, str(run)])  # warm-up: page cache and imports
    io_t, io_rss, _ = measure(py + [IO_FLOOR, str(run)])
    an_t, an_rss, an_anon = measure(analyze_cmd(run, out, None))
    an1_t, an1_rss, an1_anon = measure(analyze_cmd(run, out / "w1", 1))
    two = [steps[len(steps) // 2], steps[-1]]  # a middle step and the final one
    naive_json = args.workdir / "naive.json"
    nv_t, _, _ = measure(py + [NAIVE, str(run), ",".join(map(str, two)), str(naive_json)])
    naive = json.loads(naive_json.read_text())
    scale = (len(steps) - 1) / len(two)
    nv_total = naive["svd_time"] * scale
    nv_wall = nv_t * scale

    import pandas as pd

    df = pd.read_parquet(out / "metrics.parquet")
    err_e = err_a = err_flagged = 0.0
    n_flagged = n_defined = 0
    for key, v in naive["rows"].items():
        name, step = key.rsplit("@", 1)
        row = df[(df["tensor"] == name) & (df["step"] == int(step)) & (df["span"] == "cumulative")]
        for k in (1, 4, 16):
            err_e = max(err_e, abs(row[f"energy_k{k}"].item() - v[f"energy_k{k}"]))
            diff = abs(row[f"align_left_k{k}"].item() - v[f"align_left_k{k}"])
            if v[f"defined_k{k}"]:  # design.md: alignment is only meaningful where gap_k ≥ 1e-2
                err_a, n_defined = max(err_a, diff), n_defined + 1
            else:
                err_flagged, n_flagged = max(err_flagged, diff), n_flagged + 1
    gib = 1 / 2**20
    print(
        f"run: {run} ({args.layers} layers, steps {steps}, {ck_bytes * gib:.0f} MiB per checkpoint)"
    )
    print(
        f"(1) I/O floor (read all, Δ_t in float32):   {io_t:7.1f} s   peak RSS {io_rss * gib:6.0f} MiB"
    )
    print(f"(2) analyze --ranks 1,4,16 (default workers): {an_t:7.1f} s   peak RSS {an_rss * gib:6.0f} MiB"
          f" (anonymous {an_anon * gib:.0f} MiB)")  # fmt: skip
    print(f"    analyze --workers 1:                     {an1_t:7.1f} s   peak RSS {an1_rss * gib:6.0f} MiB"
          f" (anonymous {an1_anon * gib:.0f} MiB)")  # fmt: skip
    print(
        f"(3) naive full SVD of every 2-D Δ_t: timed on steps {two} ({nv_t:.1f} s wall, "
        f"{naive['svd_time']:.1f} s in svd), scaled ×{scale:.1f} to all {len(steps) - 1} steps: "
        f"{nv_wall:.1f} s wall ({nv_total:.1f} s in svd)"
    )
    print(
        f"    answers vs (2) at steps {two}, K in 1,4,16: max |Δ energy_k| = {err_e:.2e}; "
        f"max |Δ align_left_k| = {err_a:.2e} over {n_defined} well-defined subspaces "
        f"(gap_k ≥ 1e-2), {err_flagged:.2e} over {n_flagged} flagged ones (gap_k < 1e-2)"
    )
    print(
        f"(4) peak RSS of (2) / one checkpoint: {an_rss / ck_bytes:.0%} "
        f"(anonymous only: {an_anon / ck_bytes:.0%}; workers=1: {an1_rss / ck_bytes:.0%}, "
        f"anonymous {an1_anon / ck_bytes:.0%})"
    )
    print(
        f"ratios: (2)/(1) = {an_t / io_t:.2f} (target ≤ 2, issue 11); (3)/(2) = {nv_wall / an_t:.1f} "
        f"(target ≥ 10); RSS/checkpoint = {an_rss / ck_bytes:.0%} (target ≤ 25 %)"
    )
    print(f"measured {time.strftime('%Y-%m-%d %H:%M')}; machine shared, figures noisy")


if __name__ == "__main__":
    main()
