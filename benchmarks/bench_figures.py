"""Saving the report's figures: `save_figure` against matplotlib's own tight saving, side by side.

    python benchmarks/bench_figures.py [--rounds 3]

Two tiny Llama runs (tests/checkpoints.py, four saved steps each) are analysed once; then, per
round, every figure `opdlens figures` draws for them side by side is drawn twice, one copy saved
the way matplotlib does it by default (`savefig(bbox_inches="tight")` once per format: the
constrained layout and the tight box are computed again for each of PDF, SVG and PNG) and the
other with `opdlens.viz.save.save_figure` (laid out once, each format drawn once). The order of
the two alternates between rounds; the medians are compared. Drawing is timed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent / "tests")]
import checkpoints  # noqa: E402

from opdlens.report.load import load_sources  # noqa: E402
from opdlens.report.sources import SourceOptions  # noqa: E402
from opdlens.viz.figures import draw_figures  # noqa: E402
from opdlens.viz.save import _METADATA, PNG_DPI, save_figure  # noqa: E402
from opdlens.viz.style import paper_style  # noqa: E402


def save_tight(fig: matplotlib.figure.Figure, out: Path, stem: str) -> None:
    """matplotlib's way: each format laid out and measured afresh (what save_figure did)."""
    with paper_style():
        for fmt, metadata in _METADATA.items():
            fig.savefig(out / f"{stem}.{fmt}", format=fmt, dpi=PNG_DPI, metadata=metadata,
                        bbox_inches="tight")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = tuple(
            checkpoints.write_hf_run(root / name, "llama", steps=(0, 1, 2, 4), seed=seed)
            for seed, name in enumerate(("opd", "rl"))
        )
        sources = load_sources(SourceOptions(runs, labels=("OPD", "RL")), root / "out")
        times: dict[str, list[float]] = {"draw": [], "matplotlib": [], "save_figure": []}
        count = 0
        for r in range(args.rounds):
            ways = ["matplotlib", "save_figure"] if r % 2 == 0 else ["save_figure", "matplotlib"]
            for way in ways:
                t0 = time.perf_counter()
                panels, _ = draw_figures(sources)
                times["draw"].append(time.perf_counter() - t0)
                out = root / f"{way}-{r}"
                out.mkdir()
                t0 = time.perf_counter()
                for p in panels:
                    if way == "matplotlib":
                        save_tight(p.figure, out, p.stem)
                    else:
                        save_figure(p.figure, out, p.stem)
                times[way].append(time.perf_counter() - t0)
                count = len(panels)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{count} figures, PDF + SVG + PNG each; medians of {args.rounds} rounds")
    print(f"  drawing them:                          {med['draw']:6.2f} s")
    print(f"  saving, savefig(bbox_inches='tight'):  {med['matplotlib']:6.2f} s")
    print(f"  saving, save_figure:                   {med['save_figure']:6.2f} s")
    print(f"  ratio (matplotlib's / save_figure):    {med['matplotlib'] / med['save_figure']:6.2f}")


if __name__ == "__main__":
    main()
