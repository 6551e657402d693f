"""`opdlens ablate`: score step T with each group's update dropped or alone, and at rank k."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ..extrapolation.ablate import CANDIDATES_DIR, SCORES_FILE
from ..extrapolation.ablate import ablate as _ablate
from ..run import open_run
from ._app import (
    BaseOpt,
    CheckpointOpt,
    DeviceOpt,
    OptRunArg,
    OverwriteOpt,
    QuietOpt,
    ScorerCmdOpt,
    ScorerOpt,
    ScorerTimeoutOpt,
    TrustPickleOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
    parse_ints,
)


@app.command()
@handle_errors
def ablate(
    step: Annotated[int, typer.Option("--step", help="Saved step T whose update is ablated.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Results directory; re-running into it resumes."),
    ],
    run: OptRunArg = None,
    scorer: ScorerOpt = None,
    scorer_cmd: ScorerCmdOpt = None,
    scorer_timeout: ScorerTimeoutOpt = None,
    by: Annotated[
        str, typer.Option("--by", help="Groups: block, layer, layer,block or kind.")
    ] = "block",
    mode: Annotated[
        str, typer.Option("--mode", help="drop (θ_T without g), only (θ_0 with g) or both.")
    ] = "both",
    ranks: Annotated[
        str | None,
        typer.Option("--ranks", help="Also score θ_0 + rank-k(Δ_T) for each k, e.g. 1,2,4,8."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Candidates scored at once.")] = 1,
    keep: Annotated[
        bool, typer.Option("--keep", help=f"Keep every candidate under OUT/{CANDIDATES_DIR}/.")
    ] = False,
    device: DeviceOpt = "cpu",
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Marginal utility of each group's update at step T: S(θ_T) − S(θ_T without it)."""
    if run is None and not checkpoint:
        raise OptionError("Give a run directory (RUN), or --checkpoint STEP=PATH for each step.")
    r = open_run(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle)
    result = _ablate(
        r, step, scorer, scorer_cmd=scorer_cmd, scorer_timeout=scorer_timeout, by=by, mode=mode,
        ranks=None if ranks is None else parse_ints(ranks, "--ranks"), jobs=jobs, out=out, keep=keep, overwrite=overwrite,
        progress=not quiet, device=device,
    )  # fmt: skip
    from ..analysis.findings import ablation_sentence

    table, curve = result
    attrs = table.attrs
    echo(f"scorer: {attrs['scorer']}")
    echo(f"score of step {step}: {attrs['score_full']:.6g}; of the base: {attrs['score_base']:.6g}")
    shown = table[["group", "update_share", "score_drop", "score_only", "utility"]]
    echo(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    if not curve.empty:
        echo("rank curve: θ_0 + rank-k(Δ_T) on every matrix (energy_k: ‖Δ‖²-weighted)")
        echo(
            curve[["k", "score", "energy_k"]].to_string(
                index=False, float_format=lambda x: f"{x:.4g}"
            )
        )
    echo(ablation_sentence(table))
    if attrs["reused"]:
        echo(f"reused {attrs['reused']} score(s) saved in {out / SCORES_FILE} by an earlier run")
    files = "ablation.csv, ablation.parquet" + (
        ", rank_curve.csv, rank_curve.parquet" if not curve.empty else ""
    )
    echo(f"wrote {out}/: {files}, provenance.json")
    if keep:
        echo(f"kept the candidates in {out / CANDIDATES_DIR}/")
