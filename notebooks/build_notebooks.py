"""Write the example notebooks (without outputs) from the cells below: python notebooks/build_notebooks.py."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

DEMO = """\
%matplotlib inline
import os
import tempfile
from pathlib import Path

from opdlens.demo import finished_runs, generate_runs

# Everything this notebook writes goes into one temporary directory, removed by the last cell
# (or when the kernel exits). It reuses the runs `opdlens demo` trained, found in
# OPDLENS_DEMO_DIR when set, else in ./opdlens-demo or ../opdlens-demo (the README's first
# command, run from the repository root); either preset works. Only when none holds finished
# runs does it train the quick demo into the temporary directory (a few minutes on a CPU).
scratch = tempfile.TemporaryDirectory(prefix="opdlens-notebook-")
places = [os.environ.get("OPDLENS_DEMO_DIR") or "opdlens-demo", "../opdlens-demo"]
demo = next(filter(None, map(finished_runs, places)), None)
if demo is None:
    demo = generate_runs(Path(scratch.name) / "demo-quick", quick=True, progress=False)
    print(f"trained the quick demo into {demo.out_dir}")
else:
    print(f"reusing the demo runs in {demo.out_dir}")
demo"""


def cleanup() -> list:
    """The closing cells: remove the notebook's temporary directory and say which it was."""
    return [
        new_markdown_cell("## Clean up\n\nRemove every file this notebook wrote."),
        new_code_cell('scratch.cleanup()\nprint(f"removed {scratch.name}")'),
    ]


EXPLORE = [
    new_markdown_cell(
        "# Where did post-training move the weights?\n\n"
        "This notebook opens the built-in demo's two runs (on-policy distillation, **OPD**, and "
        "RL from a reward, **RL**, both from the same student), computes opdlens' metrics for "
        "every (step, tensor), and looks at *module allocation* (which layers and modules take "
        "the update) and at the *low-rank structure* of one tensor's update "
        "Δ_T = W_T − W_0. Definitions: `design.md`."
    ),
    new_code_cell(DEMO),
    new_code_cell(
        "import pandas as pd\n\n"
        "import opdlens\n"
        "from opdlens import plots\n\n"
        "opd = opdlens.open_run(demo.opd)\n"
        "rl = opdlens.open_run(demo.rl)\n"
        "opd, rl"
    ),
    new_markdown_cell(
        "## The metrics table\n\nOne row per (step, tensor): update norm, share of the total "
        "squared update, energy in the top-K singular directions, alignment with the final "
        "update. A `run` column names each run when they are compared."
    ),
    new_code_cell(
        "df = pd.concat([\n"
        '    opdlens.analyze(opd, ranks=(1, 4, 16)).assign(run="OPD"),\n'
        '    opdlens.analyze(rl, ranks=(1, 4, 16)).assign(run="RL"),\n'
        "], ignore_index=True)\n"
        "df.head()"
    ),
    new_code_cell(
        'final = df["step"].max()\n'
        'opdlens.summarize(df[df["step"] == final], by=("block",))'
        '[["run", "block", "update_share", "rel_update_norm", "energy_k4"]]'
    ),
    new_markdown_cell("## Module allocation: heatmaps"),
    new_code_cell("plots.allocation_heatmap_figure(df)"),
    new_code_cell('plots.allocation_strip_figure(df, run="OPD")'),
    new_code_cell("plots.block_norms(df).figure  # each plot returns its Axes"),
    new_markdown_cell(
        "## Drill into one layer\n\nThe layer that took the largest share of the OPD update at "
        "the final step, module by module."
    ),
    new_code_cell(
        'at_final = df[(df["step"] == final) & df["layer"].notna()]\n'
        'by_layer = at_final[at_final["run"] == "OPD"].groupby("layer")["update_share"].sum()\n'
        "layer = int(by_layer.idxmax())\n"
        'columns = ["run", "kind", "update_share", "energy_k4", "align_left_k4", '
        '"align_right_k4", "gap_k4"]\n'
        'at_final[at_final["layer"] == layer][columns].sort_values(["kind", "run"])'
    ),
    new_code_cell(
        "# Alignment of the top-4 subspaces with the final update, step by step, in that layer.\n"
        'plots.alignment_by_step(df[df["layer"] == layer]).figure'
    ),
    new_markdown_cell(
        "## One tensor's spectrum\n\nThe singular values of Δ_T for the matrix with the largest "
        "OPD update share, in both runs: a fast drop means a low-rank update."
    ),
    new_code_cell(
        "from opdlens.analysis import singular_values\n\n"
        'matrices = at_final[(at_final["run"] == "OPD") & at_final["stable_rank"].notna()]\n'
        'name = matrices.sort_values("update_share", ascending=False)["tensor"].iloc[0]\n'
        "sigma = {\n"
        '    f"OPD: {name}": singular_values(opd.delta(name, opd.final_step)).numpy(),\n'
        '    f"RL: {name}": singular_values(rl.delta(name, rl.final_step)).numpy(),\n'
        "}\n"
        "plots.spectra(sigma).figure"
    ),
    new_code_cell(
        "{label: float((s[:4] ** 2).sum() / (s**2).sum()) for label, s in sigma.items()}"
        "  # energy_k4, from the spectrum"
    ),
    new_markdown_cell(
        "## Groups of runs: every seed of each method\n\nThe full demo trains 3 seeds per "
        "method (the quick one, 1): each claim of the paper as one number per run, the mean ± sd "
        "per group, and OPD − RL with its 95 % bootstrap interval. A claim holds or does not "
        "hold only when that interval excludes 0; with one run per group it is inconclusive."
    ),
    new_code_cell(
        "from opdlens.analysis.findings import claim_lines, group_findings\n\n"
        'paths = {f"{method}-{i + 1}": path\n'
        '         for method, key in (("OPD", "opd"), ("RL", "rl"))\n'
        "         for i, path in enumerate(demo.replicates[key])}\n"
        'groups = {m: [label for label in paths if label.startswith(f"{m}-")] '
        'for m in ("OPD", "RL")}\n'
        "frames = {label: opdlens.analyze(opdlens.open_run(path), ranks=(1, 4)) "
        "for label, path in paths.items()}\n"
        "findings = group_findings(frames, groups)\n"
        'print("\\n".join(claim_lines(findings)))\n'
        "findings.table()"
    ),
    new_code_cell(
        "every = pd.concat([f.assign(run=label) for label, f in frames.items()], "
        "ignore_index=True)\n"
        "plots.group_alignment_by_step(every, groups).figure  # group means, ±1 sd band"
    ),
    *cleanup(),
]

EXTRAPOLATION = [
    new_markdown_cell(
        "# Extrapolating the update\n\n"
        "EffOPD's bet: the direction of the update is found early, so "
        "θ_pred = θ_t + α·(θ_t − θ_a) lands near a later checkpoint. This notebook measures "
        "that on the demo's OPD run offline: one-shot extrapolation with `evaluate=True` "
        "(relative error against every later saved step), then the EffOPD replay on the saved "
        "checkpoints with the demo's test accuracy as the score."
    ),
    new_code_cell(DEMO),
    new_code_cell(
        "import pandas as pd\n\n"
        "import opdlens\n"
        "from opdlens import plots\n"
        "from opdlens.demo import accuracy\n"
        "from opdlens.extrapolation import extrapolate, replay\n\n"
        "run = opdlens.open_run(demo.opd)\n"
        'work = Path(scratch.name) / "work"  # outputs, never in the run\n'
        "run.steps"
    ),
    new_markdown_cell(
        "## One-shot extrapolation, evaluated\n\nFrom step t with anchor a, for several α. "
        "`rel_error` < 1 means the prediction is closer to the later "
        "checkpoint than θ_t itself; `equivalent_step` is the saved step nearest to θ_pred."
    ),
    new_code_cell(
        "# A middle saved step, anchored at the last saved step at or before half of it.\n"
        "step = run.steps[len(run.steps) // 2]\n"
        "anchor = max([s for s in run.steps if s <= step // 2], default=0)\n"
        "frames = []\n"
        "for alpha in (0.5, 1.0, 2.0, 3.0):\n"
        "    path, errors = extrapolate(run, step, anchor=anchor, alpha=alpha, "
        'out=work / f"alpha-{alpha}", evaluate=True)\n'
        "    frames.append(errors)\n"
        "errors = pd.concat(frames, ignore_index=True)\n"
        'overall = errors[errors["scope"] == "overall"]\n'
        'overall.pivot(index="alpha", columns="target_step", values="rel_error")'
    ),
    new_code_cell('overall.groupby("alpha")["equivalent_step"].first()'),
    new_code_cell("plots.error_vs_alpha(overall).figure  # each plot returns its Axes"),
    new_markdown_cell(
        "Per block: which modules extrapolate well (the mean relative error of their tensors "
        "against the last saved step, at α = 1)."
    ),
    new_code_cell(
        "last = run.steps[-1]\n"
        'per_tensor = errors[(errors["scope"] == "tensor") & (errors["alpha"] == 1.0) '
        '& (errors["target_step"] == last)]\n'
        'per_tensor.groupby("block")["rel_error"].describe()'
    ),
    new_markdown_cell(
        "## The EffOPD replay\n\nAt the first saved step at or after each power of two, try "
        "candidates with growing α and keep each only while the score improves. Offline, "
        "training cannot continue from an accepted candidate: each step starts again from the "
        "checkpoint the run saved."
    ),
    new_code_cell(
        'result = replay(run, accuracy, out=work / "replay", max_candidates=3)\n'
        "print(result.note)\n"
        "result.history"
    ),
    new_code_cell('plots.replay_scores(result.history, score_label="test accuracy").figure'),
    new_code_cell(
        "# Prediction error of every candidate against the last saved step, against its α multiple.\n"
        'tried = result.history[result.history["candidate"] > 0]\n'
        'column = f"rel_error_{run.steps[-1]}"\n'
        'tried[["step", "candidate", "multiple", "score", "accepted", column]] '
        "if column in tried else tried"
    ),
    new_markdown_cell(
        "## How predictable is the run: `foresee`\n\nThe same rel_error for every saved step, "
        "anchor and later step at once, exactly, from the Gram matrix of the updates (no "
        "checkpoint written), with α* — the α that lands closest."
    ),
    new_code_cell(
        "fs = opdlens.foresee(run, alphas=(0.5, 1, 2, 4))\n"
        "print(plots.foresight_sentence(fs))\n"
        'fs[fs["scope"] == "overall"].head()'
    ),
    new_code_cell('plots.foresight_figure(fs.assign(run="OPD"))'),
    new_markdown_cell(
        "## What each block's update is worth: `ablate`\n\nThe final step's score without "
        "each block's update (drop), with only it (only), and with every matrix update cut to "
        "rank k; the score is the demo's held-out accuracy. Candidates are written, scored and "
        "deleted."
    ),
    new_code_cell(
        'table, curve = opdlens.ablate(run, run.final_step, accuracy, by="block", '
        "ranks=(1, 4))\n"
        "print(plots.ablation_sentence(table))\n"
        'table[["group", "update_share", "score_drop", "score_only", "utility"]]'
    ),
    new_code_cell('plots.ablation_figure({"OPD": table}, {"OPD": curve})'),
    *cleanup(),
]


def build(cells: list, path: Path) -> None:
    """Write one notebook, without outputs, with a Python 3 kernel."""
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{path.stem}-{i}"  # stable ids: rebuilding an unchanged notebook changes nothing
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main() -> None:
    """Write both notebooks next to this script."""
    build(EXPLORE, HERE / "explore_allocation.ipynb")
    build(EXTRAPOLATION, HERE / "extrapolation.ipynb")


if __name__ == "__main__":
    main()
