"""`opdlens extrapolate`, `opdlens replay` and `opdlens surgery …`: write predicted checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ..extrapolation.extrapolate import ERRORS_FILE, extrapolate_paths
from ..extrapolation.extrapolate import extrapolate as _extrapolate
from ..extrapolation.replay import OFFLINE_NOTE, replay_summary
from ..extrapolation.replay import replay as _replay
from ..extrapolation.surgery import surgery_lowrank, surgery_scale, surgery_window
from ..io.like import output_note
from ..run import Run, open_run
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
    TensorsOpt,
    TrustPickleOpt,
    Typer,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
)

OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Directory of the new checkpoint (must not exist).")
]
StepOpt = Annotated[int, typer.Option("--step", help="Saved step T whose weights are changed.")]
ModulesOpt = Annotated[
    str,
    typer.Option(
        "--modules",
        help="Blocks whose weight matrices change: attn,mlp,embed,norm,head,other or all.",
    ),
]

surgery_app = Typer(help="The paper's weight-surgery experiments on Δ_T, each writing a checkpoint.",
                    no_args_is_help=True)  # fmt: skip
app.add_typer(surgery_app, name="surgery")


def _modules(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _open(
    run: Path | None, base: Path | None, checkpoint: list[str] | None, trust_pickle: bool
) -> Run:
    if run is None and not checkpoint:
        raise OptionError("Give a run directory (RUN), or --checkpoint STEP=PATH for each step.")
    return open_run(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle)


def _note(r: Run, step: int) -> None:
    note = output_note(r.checkpoint(step))
    if note:
        echo(f"note: {note}.")


@app.command()
@handle_errors
def extrapolate(
    out: OutOpt,
    run: OptRunArg = None,
    step: Annotated[
        int | None, typer.Option("--step", help="Saved step T to extrapolate from.")
    ] = None,
    anchor: Annotated[
        int | None, typer.Option("--anchor", help="Saved step A used as θ_a.")
    ] = None,
    from_base: Annotated[
        bool, typer.Option("--from-base", help="Use the base (step 0) as θ_a.")
    ] = False,
    alpha: Annotated[
        float, typer.Option("--alpha", help="α in θ_T + α(θ_T − θ_a); negative interpolates.")
    ] = 1.0,
    current: Annotated[
        Path | None, typer.Option("--current", help="Checkpoint directory θ (instead of RUN).")
    ] = None,
    anchor_path: Annotated[
        Path | None,
        typer.Option("--anchor-path", help="Checkpoint directory θ_a (with --current)."),
    ] = None,
    modules: ModulesOpt = "attn,mlp",
    tensors: TensorsOpt = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="rel_error against every later saved step.")
    ] = False,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write θ_T + α(θ_T − θ_a) on attention and MLP weight matrices as a new checkpoint."""
    if current is not None or anchor_path is not None:
        if (
            current is None
            or anchor_path is None
            or run is not None
            or step is not None
            or evaluate
        ):
            raise OptionError(
                "--current and --anchor-path go together and replace RUN, --step and --anchor "
                "(and --evaluate, which needs later saved steps); give either form, not both."
            )
        path = extrapolate_paths(current, anchor_path, alpha=alpha, out=out, modules=_modules(modules),
                                 tensors=tensors, overwrite=overwrite, trust_pickle=trust_pickle,
                                 progress=not quiet)  # fmt: skip
        echo(f"wrote {path}")
        return
    if step is None:
        raise OptionError(
            "Give --step T (a saved step of the run), or --current and --anchor-path."
        )
    if anchor is not None and from_base:
        raise OptionError("Give --anchor A or --from-base, not both.")
    if anchor is None and not from_base:
        raise OptionError("Say what θ_a is: --anchor A (an earlier saved step) or --from-base.")
    r = _open(run, base, checkpoint, trust_pickle)
    path, errors = _extrapolate(
        r, step, anchor=anchor, from_base=from_base, alpha=alpha, out=out, modules=_modules(modules),
        tensors=tensors, evaluate=evaluate, overwrite=overwrite, progress=not quiet,
    )  # fmt: skip
    _note(r, step)
    echo(f"wrote {path}")
    if errors is not None:  # with --evaluate
        overall = errors[errors["scope"] == "overall"][["target_step", "rel_error"]]
        if overall.empty:
            echo("no saved step after the extrapolated one: nothing to compare against.")
        else:
            echo("rel_error over the extrapolated tensors (< 1: better than standing still):")
            echo(overall.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        eq = errors.attrs.get("equivalent_step")
        if errors.attrs.get("beats_standing_still"):
            echo(f"equivalent_step (nearest saved step): {eq}")
        else:  # the nearest saved step is no gain when θ_t itself is nearer to every later step
            echo(f"equivalent_step: {errors.attrs.get('verdict')}; nearest saved step {eq}.")
        echo(f"per-tensor errors: {path / ERRORS_FILE}")


@app.command()
@handle_errors
def replay(
    run: OptRunArg = None,
    scorer: ScorerOpt = None,
    scorer_cmd: ScorerCmdOpt = None,
    scorer_timeout: ScorerTimeoutOpt = None,
    max_candidates: Annotated[
        int, typer.Option("--max-candidates", help="Candidates per scheduled step.")
    ] = 5,
    alpha0: Annotated[float, typer.Option("--alpha0", help="α of the first candidate.")] = 2.0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where accepted candidates and history go.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Keep no candidate; only the history.")
    ] = False,
    modules: ModulesOpt = "attn,mlp",
    tensors: TensorsOpt = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replay EffOPD on the saved checkpoints: try, score and keep extrapolated candidates."""
    r = _open(run, base, checkpoint, trust_pickle)
    result = _replay(
        r, scorer, scorer_cmd=scorer_cmd, scorer_timeout=scorer_timeout,
        max_candidates=max_candidates, alpha0=alpha0, out=out, dry_run=dry_run,
        modules=_modules(modules), tensors=tensors, overwrite=overwrite, progress=not quiet,
    )  # fmt: skip
    echo(f"scorer: {result.scorer}")
    echo("rel_error_next: against the next saved step (< 1: better than standing still)")
    summary = replay_summary(result.history)
    shown = summary.astype({"accepted": object, "next_step": object})
    shown = shown.fillna({"accepted": "-", "next_step": "-"})
    echo(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    for path in result.accepted:
        echo(f"kept {path}")
    if result.out is not None:
        echo(f"wrote {result.out}/history.csv, history.json (rel_error against every later step)")
    else:
        echo("the full history (rel_error against every later step) is written with --out DIR")
    echo(f"note: {OFFLINE_NOTE}")


@surgery_app.command("scale")
@handle_errors
def scale(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    step: StepOpt,
    factor: Annotated[float, typer.Option("--factor", help="C in θ_0 + C·Δ_T (C ≥ 0).")],
    out: OutOpt,
    modules: ModulesOpt = "attn,mlp",
    tensors: TensorsOpt = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write θ_0 + C·Δ_T (the same direction with a different gain)."""
    r = _open(run, base, checkpoint, trust_pickle)
    path = surgery_scale(r, step, factor, out, modules=_modules(modules), tensors=tensors,
                         overwrite=overwrite, progress=not quiet)  # fmt: skip
    _note(r, step)
    echo(f"wrote {path}")


@surgery_app.command("lowrank")
@handle_errors
def lowrank(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    step: StepOpt,
    rank: Annotated[
        int, typer.Option("--rank", help="K: keep the top-K singular directions of each Δ_T.")
    ],
    out: OutOpt,
    keep_norm: Annotated[
        bool, typer.Option("--keep-norm", help="Rescale each truncated Δ to ‖Δ_T‖_F.")
    ] = False,
    modules: ModulesOpt = "attn,mlp",
    tensors: TensorsOpt = None,
    device: DeviceOpt = "cpu",
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write θ_0 + Δ_T truncated to rank K per matrix."""
    r = _open(run, base, checkpoint, trust_pickle)
    path = surgery_lowrank(r, step, rank, out, keep_norm=keep_norm, modules=_modules(modules),
                           tensors=tensors, overwrite=overwrite, progress=not quiet,
                           device=device)  # fmt: skip
    _note(r, step)
    echo(f"wrote {path}")


@surgery_app.command("window")
@handle_errors
def window(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    step: StepOpt,
    out: OutOpt,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layer window FIRST-LAST (inclusive), e.g. 5-10.")
    ] = None,
    blocks: Annotated[
        str | None, typer.Option("--blocks", help="Only these blocks, e.g. mlp or attn,mlp.")
    ] = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write θ_T inside a layer window and/or block, θ_0 everywhere else."""
    r = _open(run, base, checkpoint, trust_pickle)
    path = surgery_window(r, step, out, layers=layers, blocks=_modules(blocks) if blocks else None,
                          overwrite=overwrite, progress=not quiet)  # fmt: skip
    _note(r, step)
    echo(f"wrote {path}")
