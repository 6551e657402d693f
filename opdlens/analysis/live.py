"""Weight dynamics of a model while it trains: its update Δ = θ − θ_start measured in memory, on
the model's device, with `analyze`'s definitions (design.md), per block.

`WeightDynamics` holds one extra copy of the measured weights (the start), and per matrix the
top singular vectors of the previous measurement's update; `opdlens.integrations.transformers.
WeightDynamicsCallback` drives it from a Hugging Face Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..devices import ieee_float32
from ..errors import FusedSplitError, OptionError
from ..names import as_matrix, canonical_name, classify
from ..selection import DEFAULT_MODULES, in_blocks
from . import metrics as M
from .linalg import top_k_svd
from .sweep import piece, slices_of

__all__ = ["PREFIX", "Measurement", "WeightDynamics"]

PREFIX = "opdlens/"  # the logged scalars' names: opdlens/update_share/mlp, opdlens/alpha_star, …
ROW_COLUMNS = [
    "step", "tensor", "layer", "block", "kind", "expert", "part", "rows", "cols", "sq",
    "energy_k1", "gap_k1", "align_prev_left_k1", "align_prev_right_k1",
]  # fmt: skip


@dataclass
class Measurement:
    """One measurement: per-slice rows (`ROW_COLUMNS`; sq = ‖Δ‖_F²) and the scalars to log."""

    step: int
    rows: pd.DataFrame
    scalars: dict[str, float] = field(default_factory=dict)


@dataclass
class _Factors:
    u: torch.Tensor  # (rows,) top left singular vector of the slice's update
    v: torch.Tensor  # (cols,)


class WeightDynamics:
    """Measure a live model's update against its weights at `start` (design.md's metrics).

    Each `measure(model, step)` gives, per block (attn, mlp, embed, …): the update share
    Σ‖Δ‖² / Σ_all ‖Δ‖², energy_k1 = Σσ₁² / Σ‖Δ‖² over its matrices, and the top-1 alignment
    with the previous measurement's update ((align_left + align_right) / 2 of each matrix,
    ‖Δ‖²-weighted). Given `previous` (the weights of the previous measurement, by parameter
    name, e.g. read from its checkpoint), also α* and rel_error of θ_prev + α(θ_prev − θ_start)
    against the weights now, over the attention and MLP matrices, as `opdlens foresee
    --anchor base` computes them for those two steps.

    Memory: the start (each measured parameter in its own dtype and device) and two vectors per
    matrix; a measurement adds one float32 update of a single parameter at a time.
    """

    def __init__(self, select: Callable[[str, nn.Parameter], bool] | None = None) -> None:
        self._select = select
        self._start: dict[str, torch.Tensor] = {}
        self._prev: dict[tuple[str, str], _Factors] = {}
        self._prev_sq: dict[str, float] = {}
        self.start_step: int | None = None
        self.previous_step: int | None = None

    def selects(self, name: str, param: nn.Parameter) -> bool:
        """Whether `name` is measured: select= if given, else every trainable float parameter."""
        if self._select is not None:
            return bool(self._select(name, param))
        return param.dtype.is_floating_point and param.requires_grad

    @property
    def state_bytes(self) -> int:
        """Bytes held: the start copy and the previous measurement's vectors."""
        held = [*self._start.values(), *(t for f in self._prev.values() for t in (f.u, f.v))]
        return sum(t.numel() * t.element_size() for t in held)

    @torch.no_grad()
    def start(
        self, model: nn.Module, step: int = 0, weights: Callable[[str], torch.Tensor] | None = None
    ) -> None:
        """Keep the measured weights of `model` now as the start every update is measured from;
        `weights(name)`, if given, returns each parameter's start instead (e.g. read from the
        run's checkpoint-0 when training resumes)."""
        params = self._params(model)
        if weights is None:
            self._start = {n: p.detach().clone() for n, p in params.items()}
        else:
            self._start = {n: _like(p, weights(n), n) for n, p in params.items()}
        self._prev, self._prev_sq = {}, {}
        self.start_step, self.previous_step = step, None

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        chosen = {n: p for n, p in model.named_parameters() if self.selects(n, p)}
        if not chosen:
            raise OptionError(
                "WeightDynamics selected no parameter of the model: none is a trainable float "
                "tensor. Pass select=lambda name, param: ... to choose some."
            )
        return chosen

    @torch.no_grad()
    @ieee_float32()
    def measure(
        self,
        model: nn.Module,
        step: int,
        previous: Callable[[str], torch.Tensor] | None = None,
    ) -> Measurement:
        """The update now against the start; the scalars as `opdlens/<metric>/<block>`.

        `previous(name)` returns the weights of parameter `name` at the previous measurement
        (shape as the parameter), for α*; it may raise OSError or KeyError to leave α* out.
        """
        if not self._start:
            raise OptionError("WeightDynamics.measure was called before start(model).")
        params = self._params(model)
        if params.keys() != self._start.keys():
            raise OptionError(
                "The measured parameters changed since start(): "
                f"{sorted(params.keys() ^ self._start.keys())[:5]}. Call start(model) again."
            )
        config = _config(model)
        model_type = config.get("model_type") if config else None
        rows: list[dict[str, Any]] = []
        dots = _Dots()
        for name, p in params.items():
            canonical = canonical_name(name)
            info = classify(canonical, model_type=model_type)
            d = p.detach().float() - self._start[name].float()
            sq = M.frobenius_sq(d)
            prev_sq = self._prev_sq.get(name)
            extrapolated = in_blocks(canonical, info, p.dim(), DEFAULT_MODULES)
            if prev_sq is not None and previous is not None and dots.ok and extrapolated:
                dots.add(name, d, sq, self._start[name], previous, prev_sq)
            self._prev_sq[name] = sq
            rows += self._slice_rows(name, canonical, info, as_matrix(d, info), sq, config, step)
        frame = pd.DataFrame(rows, columns=ROW_COLUMNS).astype(
            {"layer": "Int64", "expert": "Int64"}
        )
        scalars = _scalars(rows)
        if dots.ok and dots.count and self.previous_step is not None:
            scalars.update(dots.scalars())
        self.previous_step = step
        return Measurement(step, frame, scalars)

    def _slice_rows(
        self, name: str, canonical: str, info: Any, d: torch.Tensor, sq: float,
        config: Mapping[str, Any], step: int,
    ) -> list[dict[str, Any]]:  # fmt: skip
        try:
            slices = slices_of(tuple(d.shape), info, dict(config), True)
        except FusedSplitError:
            slices = slices_of(tuple(d.shape), info, dict(config), False)
        rows = []
        for sl in slices:
            x = piece(d, sl, info)
            row: dict[str, Any] = {
                "step": step, "tensor": canonical, "layer": info.layer, "block": info.block,
                "kind": sl.kind, "expert": sl.expert, "part": sl.part,
                "rows": x.shape[0] if x.dim() == 2 else math.nan,
                "cols": x.shape[1] if x.dim() == 2 else math.nan,
                "sq": M.frobenius_sq(x) if len(slices) > 1 else sq,
                "energy_k1": math.nan, "gap_k1": math.nan,
                "align_prev_left_k1": math.nan, "align_prev_right_k1": math.nan,
            }  # fmt: skip
            key = (name, sl.key)
            if x.dim() == 2 and row["sq"] > 0 and math.isfinite(row["sq"]):
                top = top_k_svd(x, 1, total_sq=row["sq"])
                s1, s2 = float(top.S[0]), float(top.S[1])
                u, v = top.U[:, 0], top.V[:, 0]
                row["energy_k1"] = min(1.0, s1 * s1 / row["sq"])
                row["gap_k1"] = (s1 - s2) / s1 if s1 > 0 else 0.0
                prev = self._prev.get(key)
                if prev is not None:
                    row["align_prev_left_k1"] = float((prev.u @ u).double() ** 2)
                    row["align_prev_right_k1"] = float((prev.v @ v).double() ** 2)
                self._prev[key] = _Factors(u.clone(), v.clone())
            rows.append(row)
        return rows


class _Dots:
    """Σ⟨Δ_now, Δ_prev⟩, Σ‖Δ_prev‖², Σ‖Δ_now‖² over the attention and MLP matrices, float64."""

    def __init__(self) -> None:
        self.cross = self.prev_sq = self.now_sq = 0.0
        self.count = 0
        self.ok = True

    def add(
        self, name: str, d: torch.Tensor, sq: float, start: torch.Tensor,
        previous: Callable[[str], torch.Tensor], prev_sq: float,
    ) -> None:  # fmt: skip
        try:
            before = previous(name)
        except (OSError, KeyError):
            self.ok = False
            return
        d_prev = before.to(device=d.device, dtype=torch.float32) - start.float()
        self.cross += float(torch.sum(d.double() * d_prev.double()))
        self.prev_sq += prev_sq
        self.now_sq += sq
        self.count += 1

    def scalars(self) -> dict[str, float]:
        """α* = −⟨e, d⟩ / ‖d‖² with d = Δ_prev, e = Δ_prev − Δ_now; rel_error at α*."""
        ed = self.prev_sq - self.cross  # ⟨Δ_prev − Δ_now, Δ_prev⟩
        ee = self.prev_sq - 2 * self.cross + self.now_sq
        if self.prev_sq <= 0:
            return {f"{PREFIX}alpha_star": 0.0, f"{PREFIX}alpha_rel_error": 1.0}
        alpha = -ed / self.prev_sq
        rel = math.sqrt(max(0.0, 1 - ed * ed / (ee * self.prev_sq))) if ee > 0 else math.nan
        return {f"{PREFIX}alpha_star": alpha, f"{PREFIX}alpha_rel_error": rel}


def _like(param: nn.Parameter, value: torch.Tensor, name: str) -> torch.Tensor:
    if tuple(value.shape) != tuple(param.shape):
        raise OptionError(
            f"The start weights given for {name} have shape {tuple(value.shape)}, the parameter "
            f"{tuple(param.shape)}. Give the start of this model."
        )
    return value.detach().to(device=param.device, dtype=param.dtype, copy=True)


def _config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else {}


def _scalars(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per block: update_share, energy_k1, align_prev_k1; and the whole update's norm."""
    sums: dict[str, list[float]] = {}  # block → [Σsq, Σsq·energy, Σsq (matrices), Σsq·align, Σsq]
    for r in rows:
        acc = sums.setdefault(r["block"], [0.0] * 5)
        sq = r["sq"]
        acc[0] += sq
        if not math.isnan(r["energy_k1"]):
            acc[1] += sq * r["energy_k1"]
            acc[2] += sq
        if not math.isnan(r["align_prev_left_k1"]):
            acc[3] += sq * (r["align_prev_left_k1"] + r["align_prev_right_k1"]) / 2
            acc[4] += sq
    total = sum(acc[0] for acc in sums.values())
    out: dict[str, float] = {f"{PREFIX}update_norm": math.sqrt(total)}
    for block, (sq, energy, mats, align, aligned) in sums.items():
        out[f"{PREFIX}update_share/{block}"] = sq / total if total > 0 else 0.0
        if mats > 0:
            out[f"{PREFIX}energy_k1/{block}"] = energy / mats
        if aligned > 0:
            out[f"{PREFIX}align_prev_k1/{block}"] = align / aligned
    return out
