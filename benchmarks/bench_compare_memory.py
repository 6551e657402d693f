"""Peak RSS of `opdlens compare A B` against `opdlens analyze A` on the same runs (issue: compare
needs no more memory than analyze).

    python benchmarks/bench_compare_memory.py                    # one 8192×4096 bf16 tensor
    python benchmarks/bench_compare_memory.py --shape 4096x4096 --repeat 3

Two runs (seeds 1 and 2) of a bf16 base and checkpoints at steps 1 and 2 holding one tensor (a
rank-4 update plus a noise bulk), each with its own copy of the base: analyze sweeps both
steps, compare reads the last. Every command runs
with `--workers 1 --ranks 1,4,16` in a fresh process; its peak RSS is its ru_maxrss. The fixed
cost is the same command on a 64×64 tensor; what lies above it is given in float32 copies of
the tensor. The opdlens measured is the one on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _measure import opdlens_cmd  # noqa: E402

NAME = "model.layers.0.mlp.up_proj.weight"
_ROWS = 4096  # rows generated at a time


def build(root: Path, shape: tuple[int, int], seed: int) -> Path:
    """root/run-{shape}-{seed}/checkpoint-{0,1,2}/model.safetensors (written once)."""
    from safetensors.torch import save_file

    rows, cols = shape
    run = root / f"run-{rows}x{cols}-{seed}-3steps"
    if (run / "complete.json").is_file():
        return run
    g = torch.Generator().manual_seed(0)  # the base: the same for every seed
    w0 = torch.empty(shape, dtype=torch.bfloat16)
    for i in range(0, rows, _ROWS):
        j = min(i + _ROWS, rows)
        w0[i:j] = (0.02 * torch.randn(j - i, cols, generator=g)).to(torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(rows, 4, generator=g))[0] * torch.tensor([1.0, 0.7, 0.5, 0.35])
    b = torch.linalg.qr(torch.randn(cols, 4, generator=g))[0]
    scale = 1e-2 * 0.02 * (rows * cols) ** 0.5 / float(a.norm())  # ‖signal‖_F = 1 % of ‖W_0‖_F
    for step in (0, 1, 2):
        t = w0
        if step:
            t = torch.empty_like(w0)
            for i in range(0, rows, _ROWS):
                j = min(i + _ROWS, rows)
                block = w0[i:j].float() + step * scale * (a[i:j] @ b.T)
                block += 6.6e-5 * torch.randn(j - i, cols, generator=g)  # a bulk bf16 keeps
                t[i:j] = block.to(torch.bfloat16)
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True, exist_ok=True)
        save_file({NAME: t}, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (run / "complete.json").write_text(json.dumps({"shape": list(shape), "seed": seed}))
    return run


def measure(command: str, runs: list[Path], out: Path) -> tuple[float, int]:
    """Wall time (s) and peak RSS (bytes) of one opdlens command in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = opdlens_cmd(command, *map(str, runs), "--out", str(out), "--ranks", "1,4,16",
                      "--workers", "1", "--quiet")  # fmt: skip
    launch = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
              "print(time.perf_counter() - t, "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", launch, *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed: {done.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    t, rss = done.stdout.split()
    return float(t), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench-compare"))
    parser.add_argument("--shape", default="8192x4096", help="rows x cols, e.g. 4096x4096")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds")
    args = parser.parse_args()
    rows, cols = map(int, args.shape.split("x"))
    copy = 4 * rows * cols
    mib = 2**-20
    small = [build(args.workdir, (64, 64), s) for s in (1, 2)]
    big = [build(args.workdir, (rows, cols), s) for s in (1, 2)]
    out = args.workdir / "out"
    cases = {"analyze": lambda rs: ["analyze", rs[:1]], "compare": lambda rs: ["compare", rs]}
    fixed = {k: min(measure(*f(small), out)[1] for _ in range(2)) for k, f in cases.items()}
    print(f"{rows}x{cols} bf16, float32 copy {copy * mib:.0f} MiB; fixed cost (64×64): "
          + ", ".join(f"{k} {v * mib:.0f} MiB" for k, v in fixed.items()))  # fmt: skip
    print("round  command   time     peak RSS   over fixed")
    for r in range(args.repeat):
        for k, f in cases.items():
            t, rss = measure(*f(big), out)
            over = rss - fixed[k]
            print(f"{r + 1:5d}  {k:8s} {t:5.1f} s {rss * mib:8.0f} MiB {over * mib:6.0f} MiB = "
                  f"{over / copy:.2f} copies")  # fmt: skip
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load}")


if __name__ == "__main__":
    main()
