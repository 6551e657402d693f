"""Issue 24: the added cost of `analyze --base-geometry` over a plain `analyze`, on the Qwen3 pair.

    python benchmarks/bench_base_geometry.py [--repeat 2]

The pair is bench_peers.py's (207 M parameters, bf16, checkpoint-1 = checkpoint-0 + rank-4
signal + noise on every matrix). Plain `analyze` and `analyze --base-geometry` (ranks 1,4,16)
run --repeat times each, interleaved, in fresh processes with fresh outputs (no cache hits);
the medians are compared. Then one more `--base-geometry` run over the output of the last one
shows what the factor cache saves (W_0's and Δ's factors reused).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "analysis")]
from _measure import measure, opdlens_cmd  # noqa: E402
from bench_peers import RANKS, build_pair  # noqa: E402


def analyze_cmd(run: Path, out: Path, geometry: bool, *, fresh: bool = True) -> list[str]:
    if fresh:
        shutil.rmtree(out, ignore_errors=True)  # no cache hits
    cmd = opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", RANKS, "--quiet")
    return cmd + (["--base-geometry"] if geometry else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    run = build_pair(args.workdir)
    plain_out, geo_out = args.workdir / "plain-out", args.workdir / "geometry-out"
    measure(analyze_cmd(run, plain_out, False))  # warm-up: page cache and imports
    plain, geo = [], []
    for _ in range(args.repeat):
        plain.append(measure(analyze_cmd(run, plain_out, False))[0])
        geo.append(measure(analyze_cmd(run, geo_out, True))[0])
    cached = measure(analyze_cmd(run, geo_out, True, fresh=False))[0]
    prov = json.loads((geo_out / "provenance.json").read_text())
    methods = prov.get("svd_methods", {})
    mp, mg = statistics.median(plain), statistics.median(geo)
    print(f"pair: {run}")
    print(f"plain analyze --ranks {RANKS}:  {mp:6.1f} s  ({', '.join(f'{t:.1f}' for t in plain)})")
    print(f"analyze --base-geometry:         {mg:6.1f} s  ({', '.join(f'{t:.1f}' for t in geo)})")
    print(f"--base-geometry, cache reused:   {cached:6.1f} s  (SVDs of the last run: {methods})")
    print(f"ratio --base-geometry / plain = {mg / mp:.2f} (target ≤ 1.5, issue 24); "
          f"with the cache reused {cached / mp:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
