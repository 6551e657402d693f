"""EffOPD and power-of-two checkpoints as Hugging Face Trainer callbacks (TRL trainers too).

Both hook `on_step_end`, which the Trainer calls once per optimiser step, after the step, the
learning-rate update and `zero_grad`, with `state.global_step` already counting it: under
gradient accumulation that is once per accumulated batch, so step N is N optimiser steps.
The Trainer saves (when told to) right after `on_step_end`, so a checkpoint at a power-of-two
step holds the weights after EffOPD's decision at that step.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.live import Measurement, WeightDynamics
from ..checkpoint import open_checkpoint
from ..errors import OpdlensError, OptionError
from ..extrapolation.callback import CANDIDATE_COLUMNS, EffOPD, candidate_rows, write_candidates_csv
from ..io.paths import MARKER, is_opdlens_dir, move_into_place, temp_name, write_marker
from ..names import canonical_name
from ..schedule import EffOPDSchedule, is_power_of_two
from ..selection import DEFAULT_MODULES

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:
    raise OpdlensError(
        "opdlens.integrations.transformers needs transformers, which is not installed; install "
        "it with `pip install 'opdlens[hf]'` (transformers and trl)."
    ) from None

__all__ = ["CSV_NAME", "EffOPDCallback", "SaveAtPowersOfTwo", "WeightDynamicsCallback"]

logger = logging.getLogger(__name__)

CSV_NAME = "effopd_candidates.csv"
_PREFIX = "effopd/"
BASE_CHECKPOINT = "checkpoint-0"


def _require_one_process(args: TrainingArguments, who: str) -> None:
    """Refuse set-ups where the callback's in-place edit would not reach every replica/shard."""
    if args.world_size > 1 or args.fsdp or args.deepspeed:
        raise OptionError(
            f"{who} runs in a single training process on an unsharded model; this Trainer has "
            f"world_size={args.world_size}, fsdp={args.fsdp!r}, deepspeed={args.deepspeed!r}. "
            "Train in one process without FSDP/DeepSpeed, or replay EffOPD offline on the saved "
            "checkpoints (`opdlens replay`)."
        )


class EffOPDCallback(TrainerCallback):
    """EffOPD inside a `transformers.Trainer` (or a TRL trainer): `opdlens.EffOPD` at every step.

    At global steps 1, 2, 4, 8, … `opdlens.EffOPD` decides, on the trainer's model in place,
    exactly as in a plain loop: the same candidates θ + α·(θ − θ_anchor), the same acceptance
    rule (keep a candidate only if score_fn strictly improves), the rejected candidate's
    weights restored bit-exactly. score_fn(model) -> float (higher is better) runs without
    gradients and with the model in eval mode; training mode is restored afterwards.

    Optimiser state: EffOPD changes the weights only, as the method does. Adam's moments and
    step counts, and the learning-rate schedule, carry on unchanged after a jump; the optimiser
    holds the same parameter tensors, whose values were overwritten in place.

    Each candidate (step, anchor_step, candidate, alpha, base_score, score, accepted) becomes one
    `effopd/…` record in `state.log_history` (so also in every checkpoint's trainer_state.json;
    `accepted` is 1 or 0) and one row of a CSV at `csv_path` (default: `<output_dir>/
    effopd_candidates.csv`), rewritten atomically after every decision from the log history,
    so a resumed run's CSV matches its checkpoint. Records are not sent to `report_to` loggers.

    One process only (no DDP, FSDP or DeepSpeed). Resuming from a checkpoint continues
    exactly when the output directory holds the checkpoint of the previous power-of-two step
    (`SaveAtPowersOfTwo` saves it): its weights are the anchor. Without it, the resumed
    weights are, with a warning and the `anchor_step` column saying so.
    """

    def __init__(
        self,
        score_fn: Callable[[nn.Module], float],
        alpha0: float = 2.0,
        max_candidates: int = 5,
        modules: Sequence[str] = DEFAULT_MODULES,
        *,
        select: Callable[[str, nn.Parameter], bool] | None = None,
        csv_path: str | Path | None = None,
    ) -> None:
        if not callable(score_fn):
            raise OptionError(
                f"The 'score_fn' parameter of EffOPDCallback must be a callable model -> float. "
                f"Got {score_fn!r}; e.g. score_fn=lambda model: -eval_loss(model)."
            )
        self.effopd = EffOPD(alpha0, max_candidates, modules, select)
        self.score_fn = score_fn
        self.csv_path = None if csv_path is None else Path(csv_path)
        self._csv: Path | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Anchor at the weights training starts (or resumes) from."""
        _require_one_process(args, "EffOPDCallback")
        assert model is not None, "the Trainer passes its model to every callback event"
        self._csv = self.csv_path or Path(args.output_dir or ".") / CSV_NAME
        if state.is_world_process_zero:
            _check_csv(self._csv)
        step = state.global_step
        if step == 0 or is_power_of_two(step):  # the weights now are the anchor
            self.effopd.start(model, step)
            return
        prior = EffOPDSchedule.previous_power_of_two(step)
        saved = Path(args.output_dir or ".") / f"checkpoint-{prior}"
        if saved.is_dir():
            checkpoint = open_checkpoint(saved, prior, trust_pickle=False)
            self.effopd.start(model, prior, lambda name: checkpoint.tensor(canonical_name(name)))
            logger.info("EffOPDCallback: resumed at step %d, anchored at %s", step, saved)
            return
        self.effopd.start(model, step)
        message = (
            f"EffOPDCallback: training resumes at step {step} and {saved} (the weights of the "
            f"previous power-of-two step) is missing, so the weights of step {step} are the "
            "anchor of the next power-of-two step (the 'anchor_step' column shows it). Save "
            "with SaveAtPowersOfTwo to resume exactly."
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Run EffOPD's decision when the optimiser step just completed is a power of two."""
        assert model is not None, "the Trainer passes its model to every callback event"
        if not is_power_of_two(state.global_step):
            self.effopd.after_step(model, state.global_step, self.score_fn)  # anchors if unset
            return
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            record = self.effopd.after_step(model, state.global_step, self.score_fn)
        finally:
            for module, training in modes.items():
                module.training = training
        if not record["extrapolated"]:
            return
        for row in candidate_rows(record):
            entry = {f"{_PREFIX}{k}": v for k, v in row.items() if k != "step"}
            entry[f"{_PREFIX}accepted"] = int(row["accepted"])
            state.log_history.append({**entry, "step": row["step"]})
        if state.is_world_process_zero and self._csv is not None:
            write_candidates_csv(_history_rows(state.log_history), self._csv)


def _history_rows(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidate rows EffOPDCallback put into a Trainer's log history, in order."""
    rows = []
    for entry in log_history:
        if f"{_PREFIX}candidate" not in entry:
            continue
        row = {k: entry.get(f"{_PREFIX}{k}") for k in CANDIDATE_COLUMNS}
        row["step"] = entry["step"]
        row["accepted"] = bool(row["accepted"])
        rows.append(row)
    return rows


def _check_csv(path: Path) -> None:
    """Refuse a CSV path that holds something other than a candidates CSV opdlens wrote."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    header = None
    if stat.S_ISREG(st.st_mode):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), None)
    if header != list(CANDIDATE_COLUMNS):
        raise OptionError(
            f"The 'csv_path' of EffOPDCallback, {path}, exists and is not a candidates CSV "
            f"opdlens wrote (expected the header {','.join(CANDIDATE_COLUMNS)}); it is left "
            "untouched. Pass another csv_path=, or remove the file yourself."
        )


class SaveAtPowersOfTwo(TrainerCallback):
    """Make the Trainer also save at global steps 1, 2, 4, 8, … (its own interval still applies).

    With `save_base` (the default) it also saves the starting weights as `checkpoint-0` in the
    output directory, with the tokenizer (the Trainer's `processing_class`) beside them as in the
    Trainer's own checkpoints, so `opdlens.open_run(output_dir)` finds the run's base; skip it and pass
    `open_run(output_dir, base=...)` instead when the base is a model directory you have.
    `save_total_limit` must be None: the Trainer would delete the older power-of-two checkpoints.
    """

    def __init__(self, save_base: bool = True) -> None:
        self.save_base = save_base

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the save settings; save the base as checkpoint-0 on a fresh start."""
        if args.save_total_limit is not None:
            raise OptionError(
                f"SaveAtPowersOfTwo: save_total_limit={args.save_total_limit} makes the Trainer "
                "delete older checkpoints, the power-of-two ones among them. Set "
                "save_total_limit=None in the training arguments."
            )
        if self.save_base and state.global_step == 0 and state.is_world_process_zero:
            assert model is not None, "the Trainer passes its model to every callback event"
            # transformers < 4.46 passed the tokenizer as `tokenizer`.
            processor = kwargs.get("processing_class", kwargs.get("tokenizer"))
            save_base(model, Path(args.output_dir or "."), processor)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Ask for a save at power-of-two steps."""
        if is_power_of_two(state.global_step):
            control.should_save = True


def save_base(model: nn.Module, output_dir: Path, processing_class: Any = None) -> Path:
    """Save `model` (`save_pretrained`) as `<output_dir>/checkpoint-0`, atomically; return it.

    `processing_class` (a tokenizer or processor), when given, is saved beside the weights with
    its own `save_pretrained`, as the Trainer does in its checkpoints. An existing checkpoint-0 is
    replaced only if opdlens wrote it (its `.opdlens` marker).
    """
    target = output_dir / BASE_CHECKPOINT
    if os.path.lexists(target) and not is_opdlens_dir(target):
        raise OptionError(
            f"SaveAtPowersOfTwo: {target} exists and opdlens did not write it (no {MARKER} "
            "marker inside), so the base is not saved over it. Use a new output_dir, remove "
            "it yourself, or pass SaveAtPowersOfTwo(save_base=False)."
        )
    save_pretrained = getattr(model, "save_pretrained", None)
    if not callable(save_pretrained):
        raise OptionError(
            f"SaveAtPowersOfTwo: the model ({type(model).__name__}) has no save_pretrained, so "
            "the base cannot be saved as checkpoint-0. Pass SaveAtPowersOfTwo(save_base=False) "
            "and give opdlens.open_run(..., base=<the model directory you started from>)."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / temp_name(BASE_CHECKPOINT)
    try:
        with torch.no_grad():
            save_pretrained(tmp)
        if processing_class is not None:
            processing_class.save_pretrained(tmp)
        write_marker(tmp, "SaveAtPowersOfTwo")
        move_into_place(tmp, target)  # an existing target was checked above: opdlens wrote it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved the base weights as %s", target)
    return target


class WeightDynamicsCallback(TrainerCallback):
    """Weight dynamics in the Trainer's own logs: `opdlens/…` scalars beside the loss.

    At each save (or every `every_steps` optimiser steps) it measures the weights in memory,
    on the model's device, against the weights training started from (`opdlens.analysis.live.
    WeightDynamics`): per block the update share, energy_k1 and the top-1 alignment with the
    previous measurement; and α* with its rel_error: how far θ_prev + α(θ_prev − θ_start)
    best lands on the weights now, over the attention and MLP matrices (`opdlens foresee
    --anchor base`), with θ_prev read from the previous measurement's checkpoint when the
    output directory still holds it (so only when measuring at saves).

    The scalars go through `trainer.log`, so every `report_to` logger (W&B, TensorBoard,
    MLflow) shows them, and `state.log_history` keeps them: add the callback with
    `WeightDynamicsCallback().attach(trainer)`. It holds one extra copy of the measured weights
    (the start). On resuming, the start is read from `<output_dir>/checkpoint-0` when it is there
    (`SaveAtPowersOfTwo` or `save_base` writes it), else the resumed weights are, with a warning.
    One process only (no DDP, FSDP or DeepSpeed), like EffOPDCallback.
    """

    def __init__(
        self,
        every_steps: int | None = None,
        *,
        select: Callable[[str, nn.Parameter], bool] | None = None,
    ) -> None:
        if every_steps is not None and (
            isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1
        ):
            raise OptionError(
                "The 'every_steps' parameter of WeightDynamicsCallback must be a whole number "
                f"≥ 1, or None to measure at each save. Got {every_steps!r} instead."
            )
        self.every_steps = every_steps
        self.dynamics = WeightDynamics(select)
        self.history: list[Measurement] = []  # every measurement: per-slice rows, scalars
        self._trainer: Any = None
        self._output: Path | None = None

    @property
    def measurements(self) -> list[dict[str, float]]:
        """The logged scalars of each measurement, with its "step"."""
        return [{**m.scalars, "step": m.step} for m in self.history]

    def attach(self, trainer: Any) -> WeightDynamicsCallback:
        """Add this callback to `trainer` (once) and log through its `log`; returns self."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self._trainer = trainer
        return self

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the weights training starts (or resumes) from as the start."""
        _require_one_process(args, "WeightDynamicsCallback")
        if self._trainer is None:
            raise OptionError(
                "WeightDynamicsCallback logs through the Trainer, which a callback is not given: "
                "add it with WeightDynamicsCallback(...).attach(trainer) instead of callbacks=[…]."
            )
        assert model is not None, "the Trainer passes its model to every callback event"
        self._output = Path(args.output_dir or ".")
        base = self._output / BASE_CHECKPOINT
        if state.global_step == 0 or not base.is_dir():
            if state.global_step:
                logger.warning("WeightDynamicsCallback: training resumes at step %d and %s is "
                               "missing, so updates are measured from the resumed weights.",
                               state.global_step, base)  # fmt: skip
            self.dynamics.start(model, state.global_step)
            return
        checkpoint = open_checkpoint(base, 0, trust_pickle=False)  # resumed: the run's start
        self.dynamics.start(model, 0, lambda name: checkpoint.tensor(canonical_name(name)))

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Measure at a save (decided by the callbacks before this one) or every every_steps."""
        step = state.global_step
        due = control.should_save if self.every_steps is None else step % self.every_steps == 0
        if not due or step == 0:
            return
        assert model is not None, "the Trainer passes its model to every callback event"
        result = self.dynamics.measure(model, step, self._previous())
        self.history.append(result)
        self._trainer.log(dict(result.scalars))

    def _previous(self) -> Callable[[str], torch.Tensor] | None:
        """The previous measurement's weights, by parameter name, from its checkpoint if saved."""
        prev = self.dynamics.previous_step
        saved = (
            None if prev is None or self._output is None else self._output / f"checkpoint-{prev}"
        )
        if saved is None or not saved.is_dir():
            return None
        try:
            checkpoint = open_checkpoint(saved, prev, trust_pickle=False)
        except OpdlensError as e:
            logger.warning("WeightDynamicsCallback: no α* at this step: %s", e)
            return None

        def read(name: str) -> torch.Tensor:
            try:
                return checkpoint.tensor(canonical_name(name))
            except OpdlensError as e:
                raise KeyError(name) from e

        return read
