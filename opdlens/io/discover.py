"""Find the checkpoints of a run directory and the training step of each."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

# Step-directory names the supported trainers write, most specific first.
STEP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hf-trainer", re.compile(r"^checkpoint-(\d+)$")),
    ("verl", re.compile(r"^global_step_(\d+)$")),
    ("openrlhf-hf", re.compile(r"^global_step(\d+)_hf$")),
    ("named-step", re.compile(r"^(?:.+[-_])?step[-_](\d+)$")),
    ("iter", re.compile(r"^iter_(\d+)$")),
)


def step_of(name: str) -> int | None:
    """The training step a directory name encodes, or None."""
    for _, pattern in STEP_PATTERNS:
        m = pattern.match(name)
        if m:
            return int(m.group(1))
    return None


def discover(run_dir: Path) -> tuple[dict[int, Path], list[str]]:
    """Map step → checkpoint directory under ``run_dir``; returns it with warnings."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such directory.")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: expected a run directory, got a file.")
    steps: dict[int, Path] = {}
    warnings: list[str] = []
    for child in sorted(run_dir.iterdir()):
        if not child.is_dir():
            continue
        step = step_of(child.name)
        if step is None:
            continue
        if step in steps:
            raise CheckpointError(
                f"{run_dir}: step {step} appears twice ({steps[step].name} and {child.name}); "
                "remove one or map steps explicitly with --checkpoint STEP=PATH."
            )
        steps[step] = child
    latest = run_dir / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        text = latest.read_text().strip()
        if text.isdigit() and int(text) not in steps:
            warnings.append(
                f"{latest}: names step {text}, which has no global_step_{text} directory."
            )
    if not steps:
        entries = sorted(p.name for p in run_dir.iterdir())
        what = "it is empty" if not entries else f"it holds {', '.join(entries[:6])}"
        raise CheckpointError(
            f"{run_dir}: no checkpoints found ({what}); expected directories such as "
            "checkpoint-<N>, global_step_<N>, global_step<N>_hf, step_<N> or iter_<N>, "
            "or map them explicitly with --checkpoint STEP=PATH."
        )
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (run_dir / name).is_file():
            warnings.append(
                f"{run_dir}: holds {name} beside its checkpoints (a trainer's final save); it "
                "has no step and is not used — add it with --checkpoint STEP=PATH if you want it."
            )
            break
    return steps, warnings
