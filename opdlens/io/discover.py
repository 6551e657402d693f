"""Find the checkpoints of a run directory and the training step of each."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

# Step-directory names the supported trainers write, most specific first. Steps are ASCII
# digits only: `\d` would also read '٣' (Arabic-Indic three) as 3.
STEP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hf-trainer", re.compile(r"^checkpoint-([0-9]+)$")),
    ("verl", re.compile(r"^global_step_([0-9]+)$")),
    ("openrlhf-hf", re.compile(r"^global_step([0-9]+)_hf$")),
    ("named-step", re.compile(r"^(?:.+[-_])?step[-_]([0-9]+)$")),
    ("iter", re.compile(r"^iter_([0-9]+)$")),
)
# The same names with any Unicode digit, to warn about directories that only look like steps.
_LOOKALIKES = tuple(re.compile(p.pattern.replace("[0-9]", r"\d")) for _, p in STEP_PATTERNS)
MAX_STEP = 2**63 - 1  # steps are stored as int64 (DataFrames, Parquet, provenance)


def step_of(name: str) -> int | None:
    """The training step a directory name encodes, or None; ValueError beyond MAX_STEP."""
    for _, pattern in STEP_PATTERNS:
        m = pattern.fullmatch(name)  # not `match`: '$' also matches before a final newline
        if m:
            digits = m.group(1).lstrip("0") or "0"
            if len(digits) > len(str(MAX_STEP)) or int(digits) > MAX_STEP:
                shown = digits if len(digits) <= 30 else f"{digits[:12]}…({len(digits)} digits)"
                raise ValueError(f"step {shown} is larger than {MAX_STEP}")
            return int(digits)
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
        try:
            step = step_of(child.name)
        except ValueError as e:
            raise CheckpointError(
                f"{child}: {e}, the largest step opdlens can store; rename the directory or map "
                "it with --checkpoint STEP=PATH."
            ) from None
        if step is None:
            if any(p.fullmatch(child.name) for p in _LOOKALIKES):
                warnings.append(
                    f"{child}: ignored; its name looks like a step directory but the step is "
                    "not written in ASCII digits 0-9 (map it with --checkpoint STEP=PATH)."
                )
            continue
        if step in steps:
            raise CheckpointError(
                f"{run_dir}: step {step} appears twice ({steps[step].name} and {child.name}); "
                "remove one or map steps explicitly with --checkpoint STEP=PATH."
            )
        steps[step] = child
    latest = run_dir / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        text = latest.read_text(errors="replace").strip()
        if text.isascii() and text.isdigit() and len(text) < 20 and int(text) not in steps:
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
