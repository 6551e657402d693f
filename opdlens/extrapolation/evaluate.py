"""How far a written prediction lands from every saved step: rel_error and equivalent_step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run

__all__ = ["ERRORS_FILE", "ErrorTracker", "sq_distance"]

ERRORS_FILE = "extrapolation_errors.csv"  # written beside the weights with evaluate=True
_CHUNK = 1 << 16


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


def sq_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖² of two float32 arrays, in 64 Ki pieces summed in float64."""
    x, y = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, x.size, _CHUNK):
        d = x[i : i + _CHUNK] - y[i : i + _CHUNK]
        total += float(np.dot(d, d))
    return total
