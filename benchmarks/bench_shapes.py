"""Issue 11: `opdlens analyze` time and peak RSS per tensor on 7B-class shapes, one shape a run.

    python benchmarks/bench_shapes.py                 # all five shapes (writes ~7 GB under --workdir)
    python benchmarks/bench_shapes.py --shapes 4096x4096,11008x4096

For each shape: a run of a bf16 base and 4 checkpoints holding that one tensor (a rank-4 update
plus a 10 % noise bulk, like bench_peers' pair), analysed by `opdlens analyze --workers 1` in a
fresh process, once on its first 2 checkpoints and once on all 4; peak RSS is the larger
ru_maxrss. The difference of the two sweeps, halved, is the marginal time of one more step: what
each of a long run's checkpoints costs once the process has its memory (the first touch of fresh
memory is a fixed cost, and a large one on this VM, paid by an untimed warm-up run). The fixed cost is the same command on a
64×64 tensor. The target: peak RSS ≤ fixed cost + 3 float32 copies of the tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _measure import opdlens_cmd  # noqa: E402

SHAPES = {
    "4096x4096": ("model.layers.0.self_attn.q_proj.weight", (4096, 4096)),
    "11008x4096": ("model.layers.0.mlp.up_proj.weight", (11008, 4096)),
    "14336x4096": ("model.layers.0.mlp.gate_proj.weight", (14336, 4096)),
    "32000x4096": ("model.embed_tokens.weight", (32000, 4096)),
    "152064x3584": ("model.embed_tokens.weight", (152064, 3584)),
}
STEPS = (0, 1, 2, 3, 4)
SHORT = 2  # checkpoints of the shorter run
_ROWS = 4096  # rows generated at a time


def build(root: Path, name: str, shape: tuple[int, int]) -> Path:
    """root/checkpoint-{0,1,2}/model.safetensors holding one bf16 tensor (written once)."""
    from safetensors.torch import save_file

    run = root / f"shape-{shape[0]}x{shape[1]}"
    done = run / "complete.json"
    if done.is_file() and json.loads(done.read_text()).get("steps") == list(STEPS):
        return run
    g = torch.Generator().manual_seed(0)
    rows, cols = shape
    w0 = torch.empty(shape, dtype=torch.bfloat16)
    for i in range(0, rows, _ROWS):
        w0[i : i + _ROWS] = (0.02 * torch.randn(min(_ROWS, rows - i), cols, generator=g)).to(
            torch.bfloat16
        )
    a = torch.linalg.qr(torch.randn(rows, 4, generator=g))[0] * torch.tensor([1.0, 0.7, 0.5, 0.35])
    b = torch.linalg.qr(torch.randn(cols, 4, generator=g))[0]
    w0_norm = 0.02 * (rows * cols) ** 0.5
    scale = 1e-2 * w0_norm / float(a.norm())  # ‖signal‖_F = 1 % of ‖W_0‖_F
    noise = 3.3e-3 * w0_norm / (rows * cols) ** 0.5  # ‖noise‖_F ≈ 0.33 %: a ~10 % bulk
    for step in STEPS:
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True, exist_ok=True)
        if step == 0:
            w = w0
        else:
            w = torch.empty_like(w0)
            for i in range(0, rows, _ROWS):
                j = min(i + _ROWS, rows)
                block = w0[i:j].float() + step * scale * (a[i:j] @ b.T)
                block += noise * torch.randn(j - i, cols, generator=g)
                w[i:j] = block.to(torch.bfloat16)
        save_file({name: w}, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
        del w
    (run / "complete.json").write_text(
        json.dumps({"name": name, "shape": list(shape), "steps": list(STEPS)})
    )
    return run


def shorter(run: Path) -> Path:
    """A run of the first SHORT checkpoints of `run`, hard-linked (no second copy on disk)."""
    short = run.with_name(f"{run.name}-{SHORT}steps")
    for step in range(SHORT + 1):
        src, dst = run / f"checkpoint-{step}", short / f"checkpoint-{step}"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if not (dst / f.name).exists():
                os.link(f, dst / f.name)
    return short


def analyse(run: Path, out: Path, device: str) -> tuple[float, int, dict]:
    """Wall time (s), peak RSS (bytes, ru_maxrss of the child) and provenance of one analyze."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", "1,4,16", "--quiet",
                      "--workers", "1", "--device", device)  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"analyze failed on {run}: {done.stderr[-2000:]}")
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: one shape per process, and the
    # longer run (the same peak or more) measured last.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:
        raise SystemExit("ru_maxrss fell: run each shape in its own benchmark process")
    return elapsed, peak * 1024, json.loads((out / "provenance.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated, e.g. 4096x4096"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one shape, print JSON
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.one:
        if args.one == "fixed":
            run = build(args.workdir, "model.layers.0.mlp.up_proj.weight", (64, 64))
        else:
            run = build(args.workdir, *SHAPES[args.one])
        out = args.workdir / f"shape-out-{args.one}"
        # A VM backs guest memory on its first touch (~3 ms per MiB here): the first run after
        # the files were written pays it. Warm up with the long run, then time short, then long.
        analyse(run, out, args.device)
        _, _, short = analyse(shorter(run), out, args.device)
        t, rss, prov = analyse(run, out, args.device)
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps({"time": t, "rss": rss, "sweep": prov["wall_time_s"]["sweep"],
                          "short": short["wall_time_s"]["sweep"],
                          "methods": prov.get("svd_methods")}))  # fmt: skip
        return
    mib = 2**-20

    def one(key: str) -> dict:
        cmd = [sys.executable, __file__, "--workdir", str(args.workdir), "--one", key,
               "--device", args.device]  # fmt: skip
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    one("fixed")  # warm-up: page cache and imports
    fixed = one("fixed")
    print(f"fixed cost (analyze of one 64×64 tensor, {len(STEPS) - 1} steps): {fixed['time']:.1f} s, "
          f"peak RSS {fixed['rss'] * mib:.0f} MiB; device {args.device}")  # fmt: skip
    steps = len(STEPS) - 1
    print(f"shape          numel   f32 copy   time  sweep {SHORT}/{steps} steps  marginal/step"
          "   peak RSS   over fixed  (≤ 3 copies)  SVD calls")  # fmt: skip
    for key in args.shapes.split(","):
        rows, cols = SHAPES[key][1]
        copy = 4 * rows * cols
        build(args.workdir, *SHAPES[key])
        got = one(key)
        over = got["rss"] - fixed["rss"]
        marginal = (got["sweep"] - got["short"]) / (steps - SHORT)
        print(f"{key:12s} {rows * cols / 1e6:6.0f} M {copy * mib:7.0f} MiB {got['time']:5.1f} s "
              f"{got['short']:6.1f} s {got['sweep']:6.1f} s {marginal:8.2f} s "
              f"{got['rss'] * mib:9.0f} MiB {over * mib:7.0f} MiB = {over / copy:.2f} copies  "
              f"{got['methods']}")  # fmt: skip
    print(f"measured {time.strftime('%Y-%m-%d %H:%M')}; machine shared, figures noisy")


if __name__ == "__main__":
    main()
