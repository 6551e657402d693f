"""Issue 24: the added cost of `analyze --base-geometry` over a plain `analyze`, on two 207 M pairs.

    python benchmarks/bench_base_geometry.py [--repeat 1]

Both pairs have bench_peers.py's Qwen3 shapes and update (bf16, checkpoint-1 = checkpoint-0 +
rank-4 signal (1e-2 of ‖W_0‖_F) + noise on every matrix); they differ in the base:
- "random init": bench_peers.py's pair, transformers' initialisation: a Marchenko–Pastur
  spectrum, flat at the top (the worst case; no user analyses a random base);
- "power-law": every matrix replaced by a pretrained-like one of the same Frobenius norm:
  64 directions with σ_i ∝ i^-1/2 holding 30 % of ‖W_0‖_F² over a Gaussian bulk with the rest.
Per pair, plain `analyze` and `analyze --base-geometry` (ranks 1,4,16) run --repeat times each,
interleaved, in fresh processes with fresh outputs (no cache hits); the medians are compared.
Then one more `--base-geometry` run over the output of the last one shows what the factor cache
saves (W_0's and Δ's factors reused), and one into a fresh output with `--base-from` the last one
what a second run of the same base costs (W_0's factors reused, Δ's and W_t's computed).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "analysis")]
from _measure import measure, opdlens_cmd  # noqa: E402
from bench_peers import RANKS, build_pair, write_pair  # noqa: E402

TOP, TOP_SHARE = 64, 0.3  # the power-law base: directions, and their share of ‖W_0‖_F²


def powerlaw_matrix(m: int, n: int, norm: float, g: torch.Generator) -> torch.Tensor:
    """σ_i ∝ i^-1/2 on TOP random directions plus a Gaussian bulk, ‖·‖_F = norm. Shape: (m, n)."""
    r = min(TOP, m, n)
    sig = torch.arange(1, r + 1, dtype=torch.float32) ** -0.5
    sig *= norm * math.sqrt(TOP_SHARE) / float(sig.norm())
    a = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
    b = torch.linalg.qr(torch.randn(n, r, generator=g))[0]
    bulk = torch.randn(m, n, generator=g)
    bulk *= norm * math.sqrt(1.0 - TOP_SHARE) / float(bulk.norm())
    return bulk.addmm_(a * sig, b.T)


def build_powerlaw_pair(root: Path, random_pair: Path) -> Path:
    """The random pair's shapes and config with a power-law base, and the same kind of update."""
    run = root / "qwen3-powerlaw-pair"
    if (run / "complete.json").is_file():
        return run
    from safetensors.torch import load_file

    base = load_file(random_pair / "checkpoint-0" / "model.safetensors")
    g = torch.Generator().manual_seed(2)
    for name, w in base.items():
        if w.dim() == 2:
            base[name] = powerlaw_matrix(*w.shape, float(w.float().norm()), g).to(w.dtype)
    config = (random_pair / "checkpoint-0" / "config.json").read_text()
    write_pair(run, base, config, {"base": f"power-law, {TOP} directions, {TOP_SHARE} of ‖W_0‖²"})
    return run


def analyze_cmd(
    run: Path, out: Path, geometry: bool, *, fresh: bool = True, base_from: Path | None = None
) -> list[str]:
    if fresh:
        shutil.rmtree(out, ignore_errors=True)  # no cache hits
    cmd = opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", RANKS, "--quiet")
    cmd += ["--base-geometry"] if geometry else []
    return cmd + (["--base-from", str(base_from)] if base_from is not None else [])


def bench(run: Path, work: Path, repeat: int) -> dict[str, object]:
    """Plain and --base-geometry medians (s), the cached run (s) and its SVD methods."""
    plain_out, geo_out = work / "plain-out", work / "geometry-out"
    measure(analyze_cmd(run, plain_out, False))  # warm-up: page cache and imports
    plain, geo = [], []
    for _ in range(repeat):
        plain.append(measure(analyze_cmd(run, plain_out, False))[0])
        geo.append(measure(analyze_cmd(run, geo_out, True))[0])
    cold = json.loads((geo_out / "provenance.json").read_text()).get("svd_methods", {})
    cached = measure(analyze_cmd(run, geo_out, True, fresh=False))[0]
    warm = json.loads((geo_out / "provenance.json").read_text()).get("svd_methods", {})
    donated = measure(analyze_cmd(run, work / "second-out", True, base_from=geo_out))[0]
    return {"plain": plain, "geo": geo, "cached": cached, "cold_methods": cold, "methods": warm,
            "second": donated}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    random_pair = build_pair(args.workdir)
    pairs = {
        "random init": random_pair,
        "power-law": build_powerlaw_pair(args.workdir, random_pair),
    }
    got = {label: bench(run, args.workdir / label.replace(" ", "-"), args.repeat)
           for label, run in pairs.items()}  # fmt: skip
    print(f"analyze --ranks {RANKS}, --repeat {args.repeat}; seconds, median (all runs)")
    print(f"{'base':<12} {'plain':>14} {'--base-geometry':>22} {'cache reused':>20} "
          f"{'--base-from':>18}")  # fmt: skip
    for label, r in got.items():
        plain, geo, cached, second = r["plain"], r["geo"], r["cached"], r["second"]
        assert isinstance(plain, list) and isinstance(geo, list)
        assert isinstance(cached, float) and isinstance(second, float)
        mp, mg = statistics.median(plain), statistics.median(geo)
        runs = ", ".join(f"{t:.1f}" for t in geo)
        print(f"{label:<12} {mp:8.1f} s      {mg:7.1f} s = {mg / mp:4.2f}× ({runs})  "
              f"{cached:6.1f} s = {cached / mp:4.2f}×  {second:6.1f} s = {second / mp:4.2f}×")  # fmt: skip
    for label, r in got.items():
        print(f"{label}: SVDs cold {r['cold_methods']}; cache reused {r['methods']}")
    print("target: --base-geometry ≤ 1.5× plain (issue 24)")


if __name__ == "__main__":
    main()
