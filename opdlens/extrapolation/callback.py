"""Online EffOPD: extrapolate attention/MLP weights at power-of-two steps of a live training loop."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OptionError
from ..io.paths import write_text_atomic
from ..names import BLOCKS, canonical_name, classify
from ..schedule import EffOPDSchedule, is_power_of_two
from ..selection import DEFAULT_MODULES, in_blocks

logger = logging.getLogger(__name__)

# One row per candidate EffOPD tried (`candidate_rows`), in this order in its CSV.
CANDIDATE_COLUMNS = (
    "step",
    "anchor_step",
    "candidate",
    "alpha",
    "base_score",
    "score",
    "accepted",
)


def candidate_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate of an `EffOPD.after_step` record (none on a step without a decision).

    Candidates count from 1; `accepted` says whether the weights kept that candidate.
    """
    accepted = record["accepted"]
    return [
        {
            "step": record["step"],
            "anchor_step": record["anchor_step"],
            "candidate": i,
            "alpha": alpha,
            "base_score": record["base_score"],
            "score": score,
            "accepted": i <= accepted,
        }
        for i, (alpha, score) in enumerate(
            zip(record["alphas"], record["candidate_scores"], strict=True), start=1
        )
    ]


def write_candidates_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write candidate rows (`CANDIDATE_COLUMNS`) to a CSV file, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CANDIDATE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in CANDIDATE_COLUMNS} for row in rows)
    write_text_atomic(path, buffer.getvalue())


class EffOPD:
    """EffOPD as a training-loop callback (design.md, "Extrapolation").

    Call `start(model)` before the first optimiser step (or the first `after_step` call
    anchors instead), then `after_step(model, step, score_fn)` after every optimiser step.
    At steps 1, 2, 4, 8, … it scores the model, tries θ ← θ + α·(θ − θ_anchor) on the
    selected tensors with α = alpha0, then α ← α/(1 + α) applied to the current candidate's
    distance from the anchor after every accepted candidate (each accepted candidate moves a
    further alpha0·(θ − θ_anchor)), at most max_candidates, and stops at the first candidate
    whose score does not strictly improve, restoring the last accepted weights bit-exactly.
    The anchor for the next power-of-two step is the weights after this step's decision.

    Memory: the anchor and one backup of the selected tensors, in their own dtype, and
    nothing more (one float32 temporary of a single tensor while a candidate is built).
    Arithmetic is float32 (float64 for float64 parameters); low-precision parameters are cast
    back after each candidate.
    score_fn(model) -> float, higher is better; it should put the model in eval mode itself
    if the model has dropout. EffOPD changes weights only, in place: the optimiser's state
    (Adam's moments and step counts) and the learning-rate schedule carry on unchanged.
    `candidate_rows()` / `write_csv(path)` list every candidate tried. In a Hugging Face or
    TRL trainer use `opdlens.integrations.transformers.EffOPDCallback`, which drives this.
    """

    def __init__(
        self,
        alpha0: float = 2.0,
        max_candidates: int = 5,
        modules: Sequence[str] = DEFAULT_MODULES,
        select: Callable[[str, nn.Parameter], bool] | None = None,
    ) -> None:
        schedule = EffOPDSchedule(alpha0, max_candidates)
        unknown = sorted(set(modules) - set(BLOCKS) - {"all"})
        if unknown or not modules:
            raise OptionError(
                f"The 'modules' parameter of EffOPD takes blocks from {', '.join(BLOCKS)} or "
                f"'all'. Got {tuple(modules)!r}; e.g. modules=('attn', 'mlp'), or pass select=."
            )
        self.schedule = schedule
        self.modules = tuple(modules)
        self._select = select
        self._anchor: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] = {}
        self.anchor_step: int | None = None
        self.history: list[dict[str, Any]] = []

    @property
    def alpha0(self) -> float:
        """α of the first candidate at each decision (`schedule.alpha0`)."""
        return self.schedule.alpha0

    @property
    def max_candidates(self) -> int:
        """Candidates tried at most per decision (`schedule.max_candidates`)."""
        return self.schedule.max_candidates

    def selects(self, name: str, param: nn.Parameter) -> bool:
        """Whether `name` is extrapolated: select= if given, else select_tensors' offline rule
        restricted to trainable parameters (a frozen one never moves from its anchor)."""
        if self._select is not None:
            return bool(self._select(name, param))
        if not param.dtype.is_floating_point or not param.requires_grad:
            return False
        return in_blocks(name, classify(canonical_name(name)), param.dim(), self.modules)

    def _selected(self, model: nn.Module) -> dict[str, nn.Parameter]:
        chosen = {n: p for n, p in model.named_parameters() if self.selects(n, p)}
        if not chosen:
            lora = any("lora_" in n and p.requires_grad for n, p in model.named_parameters())
            hint = (
                " The model trains LoRA adapters only; EffOPD extrapolates full weight "
                "matrices: merge the adapters, or pass select=lambda name, param: "
                "param.requires_grad to extrapolate each LoRA factor on its own."
                if lora
                else ""
            )
            raise OptionError(
                f"EffOPD selected no parameters of the model: no trainable weight matrix of the "
                f"blocks {self.modules}. Pass other modules= or select=lambda name, param: ... ."
                f"{hint}"
            )
        return chosen

    @property
    def state_bytes(self) -> int:
        """Bytes held by the callback: the anchor and the backup."""
        tensors = [*self._anchor.values(), *self._backup.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def start(
        self,
        model: nn.Module,
        step: int = 0,
        anchor: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        """Record the selected weights as the anchor of the first power-of-two step.

        `anchor(name)`, if given, returns the anchor weights of each selected parameter instead
        (e.g. read from the checkpoint of step `step` when training resumes after it).
        Shape: each as its parameter.
        """
        params = self._selected(model)
        if anchor is None:
            self._anchor = {n: p.detach().clone() for n, p in params.items()}
        else:
            self._anchor = {n: self._anchor_of(n, p, anchor(n)) for n, p in params.items()}
        self._backup = {n: torch.empty_like(p) for n, p in params.items()}
        self.anchor_step = step

    @staticmethod
    def _anchor_of(name: str, param: nn.Parameter, value: torch.Tensor) -> torch.Tensor:
        if value.shape != param.shape:
            raise OptionError(
                f"EffOPD's anchor for {name} has shape {tuple(value.shape)}, the parameter "
                f"{tuple(param.shape)}. Give the anchor weights of this model."
            )
        return value.detach().to(device=param.device, dtype=param.dtype, copy=True)

    def after_step(
        self, model: nn.Module, step: int, score_fn: Callable[[nn.Module], float]
    ) -> dict[str, Any]:
        """Run the EffOPD decision if step is a power of two; return what happened.

        Returns a dict with step, extrapolated, anchor_step, base_score, candidate_scores,
        alphas, accepted and final_score (scores are None on steps that are not extrapolated).
        """
        record: dict[str, Any] = {
            "step": step,
            "extrapolated": False,
            "anchor_step": self.anchor_step,
            "base_score": None,
            "candidate_scores": [],
            "alphas": [],
            "accepted": 0,
            "final_score": None,
        }
        if not self._anchor:
            logger.warning(
                "EffOPD.after_step was called at step %d before start(model); the weights of "
                "this step become the anchor and nothing is extrapolated now.",
                step,
            )
            self.start(model, step)
            record["anchor_step"] = step
            return record
        if not is_power_of_two(step):
            return record
        self._decide(model, step, score_fn, record)
        self.history.append(record)
        return record

    @torch.no_grad()
    def _decide(
        self,
        model: nn.Module,
        step: int,
        score_fn: Callable[[nn.Module], float],
        record: dict[str, Any],
    ) -> None:
        params = self._selected(model)
        if params.keys() != self._anchor.keys():
            raise OptionError(
                "EffOPD's selected tensors changed since start(): "
                f"{sorted(params.keys() ^ self._anchor.keys())[:5]}. Call start(model) again."
            )
        best = float(score_fn(model))
        record.update(extrapolated=True, base_score=best)
        self._copy(params, into=self._backup)
        for alpha, _ in self.schedule.alphas():
            for name, p in params.items():
                wide = torch.promote_types(p.dtype, torch.float32)
                cur = p.to(wide)
                p.copy_(cur + alpha * (cur - self._anchor[name].to(wide)))
            try:
                score = float(score_fn(model))
            except BaseException:
                self._restore(params)  # the last accepted weights, not a half-tried candidate
                raise
            record["alphas"].append(alpha)
            record["candidate_scores"].append(score)
            if not score > best:  # also rejects a NaN score
                self._restore(params)
                break
            best = score
            record["accepted"] += 1
            self._copy(params, into=self._backup)
        record["final_score"] = best
        self._copy(params, into=self._anchor)
        self.anchor_step = step
        logger.info(
            "EffOPD step %d: base %.4g, candidates %s, accepted %d",
            step,
            record["base_score"],
            record["candidate_scores"],
            record["accepted"],
        )

    def candidate_rows(self) -> list[dict[str, Any]]:
        """Every candidate tried so far, one row each (`CANDIDATE_COLUMNS`)."""
        return [row for record in self.history for row in candidate_rows(record)]

    def write_csv(self, path: str | Path) -> None:
        """Write `candidate_rows()` to a CSV file, atomically."""
        write_candidates_csv(self.candidate_rows(), path)

    @staticmethod
    def _copy(params: dict[str, nn.Parameter], into: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            into[name].copy_(p)

    def _restore(self, params: dict[str, nn.Parameter]) -> None:
        for name, p in params.items():
            p.copy_(self._backup[name])
