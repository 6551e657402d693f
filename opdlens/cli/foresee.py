"""`opdlens foresee`: how close one extrapolation from each step lands to every later step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ._app import (
    AddressOpt,
    BaseOpt,
    CheckpointOpt,
    DeviceOpt,
    Executor,
    ExecutorOpt,
    OverwriteOpt,
    QuietOpt,
    RunArg,
    TensorsOpt,
    TrustPickleOpt,
    WorkersOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
    parse_floats,
)

ModulesOpt = Annotated[
    str,
    typer.Option(
        "--modules",
        help="Blocks whose weight matrices are measured: attn,mlp,embed,norm,head,other or all.",
    ),
]


@app.command()
@handle_errors
def foresee(
    run: RunArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory for the tables and provenance.")
    ],
    alphas: Annotated[
        str, typer.Option("--alphas", help="Grid of α in θ_t + α(θ_t − θ_a), e.g. 0.5,1,2,4.")
    ] = "0.5,1,2,4",
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            metavar="<previous|base|step>",
            help="θ_a: the previous saved step, the base, or one saved step "
            "(default: previous, plus EffOPD's scheduled pairs).",
        ),
    ] = None,
    modules: ModulesOpt = "attn,mlp",
    tensors: TensorsOpt = None,
    scopes: Annotated[
        str, typer.Option("--scopes", help="Rows for these scopes: tensor,block,layer,overall.")
    ] = "tensor,block,layer,overall",
    alpha0: Annotated[float, typer.Option("--alpha0", help="α of EffOPD's first candidate.")] = 2.0,
    max_candidates: Annotated[
        int, typer.Option("--max-candidates", help="EffOPD candidates per scheduled step.")
    ] = 5,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = Executor.local,
    address: AddressOpt = None,
    device: DeviceOpt = "cpu",
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predictability of the run: rel_error of θ_t + α(θ_t − θ_a) against every later step."""
    from ..analysis.foresight import effopd_comparison, foresight_sentence
    from ..analysis.foresight_write import write_foresight  # pandas loads only for this command
    from ..frames import select_anchor
    from ..run import open_run

    if address is not None and executor is not Executor.ray:
        raise OptionError("--address is for a Ray cluster; add --executor ray or drop --address.")
    chosen: str | int | None = anchor
    if anchor is not None and anchor.strip().isascii() and anchor.strip().isdigit():
        chosen = int(anchor)
    elif anchor is not None and anchor not in ("previous", "base"):
        raise OptionError(
            f"--anchor takes 'previous', 'base' or a saved step in digits 0-9; got '{anchor}'."
        )
    mods = [m.strip() for m in modules.split(",") if m.strip()]
    r = open_run(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle)
    df, path = write_foresight(
        r, out, overwrite=overwrite, progress=not quiet, alphas=parse_floats(alphas, "--alphas"),
        anchor=chosen, modules=mods, tensors=tensors, alpha0=alpha0,
        scopes=[x.strip() for x in scopes.split(",") if x.strip()],
        max_candidates=max_candidates, workers=workers, executor=executor.value, address=address,
        device=device,
    )  # fmt: skip
    echo(foresight_sentence(df))
    overall = df[(df["scope"] == "overall") & (df["alpha_kind"] == "optimal")]
    nxt = overall.groupby(["step", "anchor"])["target_step"].transform("min")
    shown = overall[overall["target_step"] == nxt]
    if anchor is None:
        shown = select_anchor(shown)
    if not shown.empty:
        echo(
            "whole model, against the next saved step: α* and rel_error at α* (< 1: closer than θ_t)"
        )
        cols = ["step", "anchor", "target_step", "alpha", "rel_error"]
        table = shown[cols].rename(columns={"alpha": "alpha_star"})
        echo(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    eff = effopd_comparison(df)
    eff = eff[eff["target_step"] == eff.groupby(["step", "anchor"])["target_step"].transform("min")]
    if not eff.empty:
        tried = ", ".join(f"{a:.4g}" for a in sorted(eff["alpha"].unique()))
        echo(f"EffOPD's schedule tries α = {tried} (cumulative multiples of θ_t − θ_a); rel_error "
             "of each against the next saved step, beside α* and its rel_error:")  # fmt: skip
        wide = eff.pivot_table(
            index=["step", "anchor", "target_step", "alpha_star", "rel_error_at_alpha_star"],
            columns="alpha", values="rel_error",
        ).reset_index()  # fmt: skip
        wide.columns = [c if isinstance(c, str) else f"α={c:.4g}" for c in wide.columns]
        wide = wide.rename(columns={"rel_error_at_alpha_star": "rel_error*"})
        echo(wide.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    echo(f"\nwrote {path}/foresight.parquet, foresight.csv, effopd_schedule.csv, provenance.json "
         f"({len(df)} rows)")  # fmt: skip
    for w in df.attrs.get("warnings", [])[:20]:
        typer.echo(f"warning: {w}", err=True)
