"""One-shot extrapolation θ_t + α·(θ_t − θ_a), streamed tensor by tensor into a new checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OpdlensError, OptionError
from ..io import dtypes
from ..io.like import FileBytes, as_stored, write_like
from ..io.paths import output_error
from ..io.writer import CheckpointWriter
from ..provenance import checkpoint_record
from ..run import Checkpoint, Run, open_run
from ..schedule import check_alpha
from ..selection import DEFAULT_MODULES, select_tensors
from .evaluate import ERRORS_FILE, ErrorTracker

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "ERRORS_FILE",
    "extrapolate",
    "extrapolate_paths",
    "extrapolation_producer",
]

SPAN = 1 << 18  # elements computed at a time: 1 MiB of float32 stays in cache


def extrapolation_producer(
    run: Run,
    step: int,
    anchor: int,
    alpha: float,
    selected: Iterable[str],
    tracker: ErrorTracker | None = None,
    *,
    setting: str | None = None,
) -> Callable[[str], np.ndarray | FileBytes | torch.Tensor]:
    """A `produce` for io.like.write_like: θ_t + α(θ_t − θ_a) on `selected`, θ_t elsewhere.

    `setting` names the knob in an overflow error (default "alpha <α>").
    """
    chosen = set(selected)
    setting = setting or f"alpha {alpha}"
    current, base = run.checkpoint(step), run.checkpoint(anchor)
    involved = [current, base, *([] if tracker is None else [run.base, *run.checkpoints.values()])]

    def produce(name: str) -> np.ndarray | FileBytes | torch.Tensor:
        if name not in chosen:
            return as_stored(current, name)
        spec = current.spec(name)
        if spec.stored not in dtypes.NUMPY_FLOATS:  # float8: torch rounds it, whole
            theta = current.array(name, float32=True)
            whole = _round_float8(
                _predict(name, theta, base.array(name, float32=True)), spec.stored
            )
            if tracker is not None:
                tracker.add(name, whole.float().numpy(), theta)
            return whole
        # Cache-sized spans: 3× faster than whole tensors, and only the output is held whole.
        # Sources without byte ranges (.bin, FSDP, LoRA) read whole tensors: one span.
        ranged = all(ck.byte_range(name) is not None for ck in involved)
        step = SPAN if ranged else max(spec.numel, 1)
        wide = spec.stored == "F64"  # float64 stays float64; the rest is float32
        out = np.empty(spec.numel, dtype=dtypes.storage(spec.stored))
        for start in range(0, max(spec.numel, 1), step):
            span = (start, min(spec.numel, start + step))
            theta = current.array(name, float32=not wide, span=span)
            pred = _predict(name, theta, base.array(name, float32=not wide, span=span))
            rounded = _round(pred, spec.stored)
            if spec.stored in ("F16", "BF16") and dtypes.overflowed(rounded, spec.stored):
                raise _non_finite(name, current, base, setting)  # rounded past the dtype's max
            out[span[0] : span[1]] = rounded
            if tracker is not None:
                if rounded is not pred:
                    dtypes.decode_float32(rounded, spec.stored, pred)  # the prediction as written
                tracker.add(name, pred, theta, span)
        return out.reshape(spec.shape)

    def _predict(name: str, theta: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """θ_t + α(θ_t − θ_a), computed in the anchor's buffer."""
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
            np.subtract(theta, anchor, out=anchor)
            anchor *= alpha
            anchor += theta
        if not np.isfinite(anchor).all():  # NaN and ±inf in either input always end up here
            raise _non_finite(name, current, base, setting)
        return anchor

    return produce


def _non_finite(name: str, current: Checkpoint, anchor: Checkpoint, setting: str) -> OpdlensError:
    """The error for a prediction with NaN or ±inf values, naming the input that holds them."""
    for ck in (current, anchor):
        if not np.isfinite(ck.array(name, float32=True)).all():
            where = ck.byte_range(name)
            return OpdlensError(
                f"{where[0] if where else ck.path}: tensor '{name}' holds NaN or Inf values; "
                "extrapolating it would spread them. Check the run, or leave the tensor out "
                "(--tensors / --modules)."
            )
    return OpdlensError(
        f"{current.path}: tensor '{name}' overflows its dtype "
        f"({dtypes.torch_name(current.spec(name).stored)}) at {setting}; choose a smaller one."
    )


def _round(values: np.ndarray, stored: str) -> np.ndarray:
    """Round computed values once to a stored dtype numpy holds (F16/BF16 as their bytes)."""
    if stored in ("F32", "F64"):
        return values
    return dtypes.encode_float32(values, stored, finite=True)


def _round_float8(values: np.ndarray, stored: str) -> torch.Tensor:
    """Round computed values once to a float8 dtype, which only torch holds."""
    import torch

    return torch.from_numpy(values).to(dtypes.to_torch(stored))


def extrapolate(
    run: Run,
    step: int,
    *,
    anchor: int | None = None,
    from_base: bool = False,
    alpha: float,
    out: str | Path,
    modules: Iterable[str] | None = DEFAULT_MODULES,
    tensors: Sequence[str] | None = None,
    evaluate: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, pd.DataFrame | None]:
    """Write θ_t + α(θ_t − θ_a) for the chosen tensors (θ_t elsewhere) as a new checkpoint.

    Returns:
        The written directory and, with `evaluate`, rel_error per tensor and overall against
        every later saved step plus `equivalent_step` (None without `evaluate`); the same
        table is saved as `extrapolation_errors.csv` in the written directory.

    Raises:
        OptionError: a non-finite alpha, an unknown step, module or anchor, an anchor not before
            the step, an output overlapping an input (also a ValueError).
    """
    alpha = check_alpha(alpha)
    if (anchor is None) == (not from_base):
        raise OptionError(
            "extrapolate needs exactly one of anchor=STEP (--anchor) or from_base=True "
            "(--from-base) to say what θ_a is."
        )
    a = 0 if from_base else int(anchor)  # type: ignore[arg-type]
    if step == 0 or step not in run.steps:
        raise OptionError(
            f"Step {step} is not a saved step of the run; saved steps are {run.steps}."
        )
    run.checkpoint(a)
    if a >= step:
        raise OptionError(
            f"The anchor must be saved before the step: got anchor {a} and step {step}. "
            "Pick an earlier --anchor, or --from-base."
        )
    selected = select_tensors(run, modules, tensors)
    tracker = ErrorTracker(run, step) if evaluate else None
    metadata = checkpoint_record(
        "extrapolate", alpha=repr(alpha), step=step, anchor=a, source=run.checkpoint(step).path,
        anchor_source=run.checkpoint(a).path, extrapolated_tensors=len(selected),
        formula="theta_t + alpha * (theta_t - theta_anchor)",
    )  # fmt: skip
    produce = extrapolation_producer(run, step, a, alpha, selected, tracker)
    frames: list[pd.DataFrame] = []

    def write_errors(writer: CheckpointWriter) -> None:
        """The errors table goes in with the weights, before the checkpoint is published."""
        assert tracker is not None
        frames.append(tracker.frame(step=step, anchor=a, alpha=alpha))
        # Known only now: it goes into opdlens_provenance.json (the headers are already laid out).
        writer.metadata["equivalent_step"] = str(frames[0].attrs["equivalent_step"])
        writer.metadata["evaluation"] = str(frames[0].attrs["verdict"])
        target = writer.extra_file(ERRORS_FILE)
        try:
            frames[0].to_csv(target, index=False)
        except OSError as e:
            raise output_error(target, e) from None

    current = run.checkpoint(step)
    path = write_like(
        current, Path(out), produce, metadata=metadata, protected=run.input_paths,
        config_dir=run.base.config_dir, overwrite=overwrite, progress=progress,
        desc=f"extrapolate step {step}", extra=None if tracker is None else write_errors,
    )  # fmt: skip
    # No DataFrame without evaluate: the write path never imports pandas.
    return path, frames[0] if frames else None


def extrapolate_paths(
    current: str | Path,
    anchor_path: str | Path,
    *,
    alpha: float,
    out: str | Path,
    modules: Iterable[str] | None = DEFAULT_MODULES,
    tensors: Sequence[str] | None = None,
    overwrite: bool = False,
    trust_pickle: bool = False,
    progress: bool = False,
) -> Path:
    """Write θ + α(θ − θ_a) from two checkpoint directories (current, anchor)."""
    run = open_run(checkpoints={0: anchor_path, 1: current}, trust_pickle=trust_pickle)
    path, _ = extrapolate(
        run, 1, anchor=0, alpha=alpha, out=out, modules=modules, tensors=tensors,
        overwrite=overwrite, progress=progress,
    )  # fmt: skip
    return path
