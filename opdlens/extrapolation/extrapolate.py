"""One-shot extrapolation θ_t + α·(θ_t − θ_a), streamed tensor by tensor into a new checkpoint."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import OpdlensError, OptionError
from ..io import dtypes
from ..io.layouts import detect
from ..io.paths import output_error
from ..io.weightfiles import read_weight_map
from ..io.writer import CheckpointWriter, TensorSpec, plan_like
from ..names import canonical_name
from ..progress import track
from ..run import Checkpoint, Run, open_run

if TYPE_CHECKING:
    import pandas as pd
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCKS",
    "ErrorTracker",
    "check_alpha",
    "extrapolate",
    "extrapolate_paths",
    "select_tensors",
    "write_checkpoint",
]

BLOCKS = ("attn", "mlp", "embed", "norm", "head", "other")
DEFAULT_MODULES = ("attn", "mlp")
SPAN = 1 << 18  # elements computed at a time: 1 MiB of float32 stays in cache
# Layouts whose files are written back as they were; every other one becomes dense HF safetensors.
_MIRRORED = ("hf-safetensors", "hf-safetensors-sharded")
_INDEX_FILES = {
    "hf-safetensors-sharded": "model.safetensors.index.json",
    "hf-bin-sharded": "pytorch_model.bin.index.json",
}


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return alpha as a float, refusing NaN and ±inf (negative values are legal)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise OptionError(f"The '{name}' parameter must be a real number. Got {alpha!r}.") from None
    if not math.isfinite(value):
        raise OptionError(
            f"The '{name}' parameter must be finite. Got {alpha!r}; pass a real number "
            "(a negative one interpolates back toward the anchor)."
        )
    return value


def select_tensors(
    run: Run, modules: Iterable[str] | None = DEFAULT_MODULES, tensors: Sequence[str] | None = None
) -> list[str]:
    """Floating-point tensors chosen by glob, or the weight matrices of the given blocks.

    `modules` holds block names (attn, mlp, embed, norm, head, other) or "all"; with `tensors`
    (globs) given, `modules` is ignored. Weight matrices are ≥2-D tensors named *weight and
    stacked expert parameters.
    """
    if tensors:
        chosen = run.select(tensors)
        bad = [n for n in chosen if not run.base.spec(n).is_float]
        if bad:
            raise OptionError(
                f"--tensors {list(tensors)} selects non-floating-point tensors {bad[:3]}, which "
                "cannot be extrapolated. Narrow the glob."
            )
        return chosen
    wanted = set(modules or DEFAULT_MODULES)
    unknown = wanted - set(BLOCKS) - {"all"}
    if unknown:
        raise OptionError(
            f"The 'modules' parameter takes blocks from {', '.join(BLOCKS)} or 'all'. "
            f"Got {sorted(unknown)}; e.g. --modules attn,mlp."
        )
    chosen = []
    for name in run.tensor_names:
        spec = run.base.spec(name)
        if not spec.is_float:
            continue
        if "all" in wanted:
            chosen.append(name)
            continue
        info = run.module(name)
        matrix = (name.endswith("weight") and len(spec.shape) >= 2) or info.stacked_experts
        if info.block in wanted and matrix:
            chosen.append(name)
    if not chosen:
        raise OpdlensError(
            f"No weight matrix of blocks {sorted(wanted)} in the run; names look like "
            f"'{run.tensor_names[0]}'. Pick other --modules or give --tensors GLOB."
        )
    return chosen


def _weight_map(ck: Checkpoint) -> dict[str, str] | None:
    """Canonical name → shard file of a sharded input, or None for a single file."""
    index_name = _INDEX_FILES.get(ck.layout.removeprefix("verl-"))
    if index_name is None:
        return None
    index = ck.files[0].parent / index_name
    return {canonical_name(k): v for k, v in read_weight_map(index).items()}


def _support_dir(ck: Checkpoint, fallback: Checkpoint) -> Path | None:
    """The directory holding config/tokenizer files to copy beside the output."""
    for c in (ck, fallback):
        found = detect(c.path).config_dir
        if found is not None:
            return found
    return None


def run_inputs(run: Run) -> list[Path]:
    """Every path of the run that an output must stay outside."""
    paths = [run.base.path, *(ck.path for ck in run.checkpoints.values())]
    if run.open_args.get("path"):
        paths.append(Path(str(run.open_args["path"])))
    return paths


def output_note(ck: Checkpoint) -> str | None:
    """A sentence saying how the output's layout differs from the input's, or None."""
    if ck.layout in _MIRRORED:
        return None
    return (
        f"the input {ck.path} is '{ck.layout}'; the output is a dense Hugging Face safetensors "
        "checkpoint"
    )


class FileBytes(NamedTuple):
    """A tensor to copy unchanged: its stored bytes start at `begin` in `path`."""

    path: Path
    begin: int


def unchanged(ck: Checkpoint, name: str) -> np.ndarray | FileBytes:
    """Tensor `name` of `ck` as it is stored: a byte range to copy when possible."""
    where = ck.byte_range(name)
    return ck.array(name) if where is None else FileBytes(where[0], where[1])


def write_checkpoint(
    run: Run,
    like: Checkpoint,
    out: Path,
    produce: Callable[[str], torch.Tensor | np.ndarray | FileBytes],
    *,
    metadata: dict[str, str],
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "writing",
    extra: Callable[[CheckpointWriter], None] | None = None,
) -> Path:
    """Write every tensor of `like`, as `produce(name)` returns it, in like's layout.

    `produce` must return each tensor in the stored dtype and shape of `like`, or a FileBytes.
    `extra(writer)` runs after the last tensor and may add files through `writer.extra_file`.
    """
    names = like.names()
    specs = [TensorSpec(n, tuple(like.spec(n).shape), like.spec(n).stored) for n in names]
    plan = plan_like(specs, _weight_map(like))
    note = output_note(like)
    meta = {
        **metadata,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "input_layout": like.layout,
    }
    if note:
        meta["output_layout_note"] = note
        logger.info("%s", note)
    writer = CheckpointWriter(
        Path(out), plan, metadata=meta, copy_from=_support_dir(like, run.base),
        protected=run_inputs(run), overwrite=overwrite,
    )  # fmt: skip
    with writer, ThreadPoolExecutor(max_workers=1) as pool:
        # The next tensor is read and computed while this one is written (numpy, torch and file
        # I/O release the GIL): one more tensor in memory, reading overlapped with writing.
        pending = pool.submit(produce, names[0]) if names else None
        for i, name in enumerate(track(names, len(names), desc, enabled=progress)):
            assert pending is not None
            tensor = pending.result()
            pending = pool.submit(produce, names[i + 1]) if i + 1 < len(names) else None
            if isinstance(tensor, FileBytes):
                writer.copy_bytes(name, tensor.path, tensor.begin)
            else:
                writer.write(name, tensor)
            del tensor
        if extra is not None:
            extra(writer)
    return writer.out_dir


@dataclass
class ErrorTracker:
    """Squared distances of a written prediction to every saved step, per tensor."""

    run: Run
    step: int
    pred: dict[str, dict[int, float]] = field(default_factory=dict)  # name → step → ‖θ_pred − θ_s‖²
    stay: dict[str, dict[int, float]] = field(default_factory=dict)  # name → step → ‖θ_t − θ_s‖²

    def add(
        self, name: str, pred: np.ndarray, current: np.ndarray, span: tuple[int, int] | None = None
    ) -> None:
        """Add the distances of a predicted tensor and of θ_t (float32) to every saved step.

        With `span`, the arrays are that flat span of the tensor and the sums accumulate.
        """
        pred_sq = self.pred.setdefault(name, {})
        stay_sq = self.stay.setdefault(name, {})
        for s in [0, *self.run.steps]:
            if s == self.step:
                w = current
            else:
                w = self.run.checkpoint(s).array(name, float32=True, span=span)
            pred_sq[s] = pred_sq.get(s, 0.0) + sq_distance(pred, w)
            stay_sq[s] = stay_sq.get(s, 0.0) + (0.0 if s == self.step else sq_distance(current, w))

    def equivalent_step(self) -> int:
        """The saved step whose weights are nearest to the prediction."""
        totals = {s: sum(d[s] for d in self.pred.values()) for s in [0, *self.run.steps]}
        return min(totals, key=lambda s: (totals[s], s))

    def rel_errors(self) -> dict[int, float]:
        """rel_error over all tracked tensors against every later saved step."""
        out = {}
        for s in (s for s in self.run.steps if s > self.step):
            num = sum(d[s] for d in self.pred.values())
            den = sum(d[s] for d in self.stay.values())
            out[s] = math.sqrt(num / den) if den > 0 else math.nan
        return out

    def verdict(self) -> dict[str, object]:
        """Whether the prediction beats standing still (rel_error < 1) against a later step, in words."""
        rel = {s: r for s, r in self.rel_errors().items() if not math.isnan(r)}
        if not rel:
            return {"beats_standing_still": None, "best_target_step": None, "best_rel_error": None,
                    "verdict": f"no later saved step differs from step {self.step}: nothing "
                    "to compare against"}  # fmt: skip
        best = min(rel, key=lambda s: (rel[s], s))
        where = f"best rel_error {rel[best]:.2f} at step {best}"
        beats = rel[best] < 1
        text = (f"the prediction beats standing still ({where})" if beats else "no saved step: "
                f"the prediction is farther from every later saved step than θ_t is ({where})")  # fmt: skip
        return {"beats_standing_still": beats, "best_target_step": best,
                "best_rel_error": rel[best], "verdict": text}  # fmt: skip

    def frame(self, **labels: object) -> pd.DataFrame:
        """Per-tensor and overall rel_error against every later saved step, as a DataFrame.

        attrs hold `equivalent_step` and the `verdict` fields: `beats_standing_still`,
        `best_target_step`, `best_rel_error` and a sentence saying whether any later step is
        nearer to the prediction than to θ_t.
        """
        import pandas as pd

        later = [s for s in self.run.steps if s > self.step]
        eq = self.equivalent_step() if self.pred else None
        rows = []
        for s in later:
            for name in self.pred:
                info = self.run.module(name)
                den = self.stay[name][s]
                rows.append({
                    "scope": "tensor", "tensor": name, "layer": info.layer, "block": info.block,
                    "target_step": s, "pred_distance": math.sqrt(self.pred[name][s]),
                    "stay_distance": math.sqrt(den),
                    "rel_error": math.sqrt(self.pred[name][s] / den) if den > 0 else math.nan,
                })  # fmt: skip
            rows.append({
                "scope": "overall", "tensor": None, "layer": None, "block": None, "target_step": s,
                "pred_distance": math.sqrt(sum(d[s] for d in self.pred.values())),
                "stay_distance": math.sqrt(sum(d[s] for d in self.stay.values())),
                "rel_error": self.rel_errors()[s],
            })  # fmt: skip
        df = pd.DataFrame(rows, columns=[
            "scope", "tensor", "layer", "block", "target_step", "pred_distance", "stay_distance",
            "rel_error",
        ])  # fmt: skip
        df = df.astype({"layer": "Int64", "target_step": "int64", "tensor": "string",
                        "block": "string", "scope": "string"})  # fmt: skip
        for i, (key, value) in enumerate(labels.items()):
            df.insert(i, key, value)
        df["equivalent_step"] = pd.array([eq] * len(df), dtype="Int64")
        df.attrs["equivalent_step"] = eq
        df.attrs.update(self.verdict())
        return df


_CHUNK = 1 << 16


def sq_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖² of two float32 arrays, in 64 Ki pieces summed in float64."""
    x, y = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, x.size, _CHUNK):
        d = x[i : i + _CHUNK] - y[i : i + _CHUNK]
        total += float(np.dot(d, d))
    return total


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
    """A `produce` for write_checkpoint: θ_t + α(θ_t − θ_a) on `selected`, θ_t elsewhere.

    `setting` names the knob in an overflow error (default "alpha <α>").
    """
    chosen = set(selected)
    setting = setting or f"alpha {alpha}"
    current, base = run.checkpoint(step), run.checkpoint(anchor)
    involved = [current, base, *([] if tracker is None else [run.base, *run.checkpoints.values()])]

    def produce(name: str) -> np.ndarray | FileBytes | torch.Tensor:
        if name not in chosen:
            return unchanged(current, name)
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


ERRORS_FILE = "extrapolation_errors.csv"  # written beside the weights with evaluate=True


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
        OpdlensError: unknown step or anchor, anchor not before step, output overlapping an input.
        OptionError: a non-finite alpha, an unknown module (also a ValueError).
    """
    alpha = check_alpha(alpha)
    if (anchor is None) == (not from_base):
        raise OptionError(
            "extrapolate needs exactly one of anchor=STEP (--anchor) or from_base=True "
            "(--from-base) to say what θ_a is."
        )
    a = 0 if from_base else int(anchor)  # type: ignore[arg-type]
    if step == 0 or step not in run.steps:
        raise OpdlensError(
            f"Step {step} is not a saved step of the run; saved steps are {run.steps}."
        )
    run.checkpoint(a)
    if a >= step:
        raise OpdlensError(
            f"The anchor must be saved before the step: got anchor {a} and step {step}. "
            "Pick an earlier --anchor, or --from-base."
        )
    selected = select_tensors(run, modules, tensors)
    tracker = ErrorTracker(run, step) if evaluate else None
    metadata = {
        "opdlens_operation": "extrapolate", "opdlens_version": _version(), "alpha": repr(alpha),
        "step": str(step), "anchor": str(a), "source": str(run.checkpoint(step).path),
        "anchor_source": str(run.checkpoint(a).path), "extrapolated_tensors": str(len(selected)),
        "formula": "theta_t + alpha * (theta_t - theta_anchor)",
    }  # fmt: skip
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

    path = write_checkpoint(
        run, run.checkpoint(step), Path(out), produce, metadata=metadata, overwrite=overwrite,
        progress=progress, desc=f"extrapolate step {step}",
        extra=None if tracker is None else write_errors,
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


def _version() -> str:
    from .. import __version__

    return __version__
