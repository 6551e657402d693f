"""What `ablate` scores (groups, candidates of θ_0 + part of Δ_T, rank-k factors) and the scores saved."""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..devices import out_of_memory_as_error
from ..errors import OpdlensError, OptionError
from ..io.like import Produced, as_stored
from ..io.paths import output_error, write_text_atomic
from ..names import BLOCKS
from ..run import Run

if TYPE_CHECKING:
    import torch

__all__ = [
    "BY_CHOICES",
    "CANDIDATES_DIR",
    "Candidate",
    "Factors",
    "Group",
    "ScoreBook",
    "candidate_producer",
    "check_by",
    "group_tensors",
    "candidates_dir",
    "update_norms",
]

BY_CHOICES = ("block", "layer", "layer,block", "kind")
CANDIDATES_DIR = "candidates"


@dataclass(frozen=True)
class Group:
    """Tensors whose update is dropped or kept together; `layer`/`block` say where they sit."""

    name: str
    tensors: tuple[str, ...]
    layer: int | None
    block: str | None


@dataclass(frozen=True)
class Candidate:
    """One checkpoint to score: Δ_T kept on `kept` (θ_0 on the other grouped tensors), or rank-k."""

    key: str  # the scores file's key, e.g. "drop:block:attn" or "rank:4"
    dirname: str  # its directory name under --out/candidates with --keep
    label: str  # how errors and logs name it
    kept: frozenset[str] = frozenset()
    rank: int | None = None


def check_by(by: str | Sequence[str]) -> str:
    """Normalise the 'by' parameter to one of BY_CHOICES ("block,layer" is "layer,block")."""
    parts = [by] if isinstance(by, str) else list(by)
    items = sorted({p.strip() for part in parts for p in str(part).split(",") if p.strip()})
    text = ",".join(items)
    if text == "block,layer":
        text = "layer,block"
    if text not in BY_CHOICES:
        raise OptionError(
            f"The 'by' parameter of ablate (--by) must be one of {', '.join(BY_CHOICES)}. "
            f"Got {by!r} instead."
        )
    return text


def grouped_names(run: Run) -> list[str]:
    """Tensors with an update: floating-point tensors held by the base and every checkpoint."""
    return [n for n in run.tensor_names if run.base.spec(n).is_float]


def group_tensors(run: Run, by: str) -> list[Group]:
    """Partition the run's floating-point tensors by block, layer, layer and block, or kind.

    Tensors outside any layer (embeddings, the final norm, the head) form one group per block
    under --by layer and layer,block, named after the block. Groups are ordered embed, layers
    (by number, then block), then the rest by block.
    """
    by = check_by(by)
    members: dict[tuple[object, ...], list[str]] = {}
    where: dict[tuple[object, ...], tuple[int | None, str | None]] = {}
    for name in grouped_names(run):
        info = run.module(name)
        if by == "block":
            key: tuple[object, ...] = ("block", info.block)
            place: tuple[int | None, str | None] = (None, info.block)
        elif by == "kind":
            key, place = ("kind", info.block, info.kind), (None, info.block)
        elif info.layer is None:
            key, place = ("block", info.block), (None, info.block)
        elif by == "layer":
            key, place = ("layer", info.layer), (info.layer, None)
        else:
            key, place = ("layer", info.layer, info.block), (info.layer, info.block)
        members.setdefault(key, []).append(name)
        where[key] = place
    if not members:
        raise OpdlensError(
            f"The run at {run.base.path} has no floating-point tensor common to the base and "
            "every checkpoint, so there is no update to ablate. Check the run's checkpoints."
        )
    kinds = [k[2] for k in members if k[0] == "kind"]

    def label(key: tuple[object, ...]) -> str:
        if key[0] == "block":
            return str(key[1])
        if key[0] == "kind":  # a kind found in two blocks is told apart by its block
            return str(key[2]) if kinds.count(key[2]) == 1 else f"{key[1]}.{key[2]}"
        return f"layer {key[1]}" if len(key) == 2 else f"layer {key[1]} {key[2]}"

    def order(key: tuple[object, ...]) -> tuple[int, float, int, str]:
        layer, block = where[key]
        b = BLOCKS.index(block) if block in BLOCKS else len(BLOCKS)
        head = 0 if block == "embed" and layer is None else 1 if layer is not None else 2
        return (head, -1 if layer is None else layer, b, label(key))

    return [Group(label(k), tuple(members[k]), *where[k]) for k in sorted(members, key=order)]


def update_norms(run: Run, step: int, names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """‖Δ_T‖_F² and ‖W_0‖_F² per tensor, in float64 from the stored values."""
    import torch

    out = {}
    current = run.checkpoint(step)
    for name in names:
        w0 = run.base.tensor(name, torch.float64)
        delta = current.tensor(name, torch.float64) - w0
        out[name] = (float(delta.square().sum()), float(w0.square().sum()))
    return out


class Factors:
    """Top-k singular factors of every matrix of every update Δ_T (`analysis.matrices`), float64.

    Computed once with the largest k asked for, by the exact method of analysis.linalg
    (eigh of the float64 Gram matrix): rank-k(Δ) is then accurate to float64 round-off. The
    SVDs run on `device`; the factors are kept on the CPU. Vectors have no factors.
    """

    def __init__(
        self, run: Run, step: int, names: Iterable[str], kmax: int, device: str = "cpu"
    ) -> None:
        import torch

        from ..analysis.linalg import TopK, top_k_svd
        from ..analysis.matrices import as_matrices, matrix_shape

        dims = {
            n: matrix_shape(run.base.spec(n).shape, run.module(n).stacked_experts) for n in names
        }
        self.shapes = {n: d for n, d in dims.items() if d is not None}
        # A rank past every matrix's full rank keeps each update whole: no longer lists than that.
        self.kmax = kmax = max(
            1, min(kmax, max((min(d[1:]) for d in self.shapes.values()), default=1))
        )
        self.matrices: dict[str, list[TopK]] = {}
        self.energy: dict[str, tuple[list[float], float]] = {}  # name → (Σ_{i≤k} σ² per k, ‖Δ‖²)
        current = run.checkpoint(step)
        for name, (_, rows, cols) in self.shapes.items():
            delta = current.tensor(name, torch.float64) - run.base.tensor(name, torch.float64)
            tops = []
            # Σ_{i≤k} σ² for k = 1 … (the largest rank a matrix can have); beyond it, ‖Δ‖².
            sq = [0.0] * min(kmax, rows, cols)
            for d in as_matrices(delta, run.module(name).stacked_experts):
                k = min(kmax, rows, cols)
                with out_of_memory_as_error(f"tensor '{name}'"):
                    top = top_k_svd(d.to(device), k, method="exact")
                top = TopK(top.U.cpu(), top.S[:k].cpu(), top.V.cpu(), top.method, top.iterations)
                tops.append(top)
                cum = torch.cumsum(top.S.square(), 0).tolist()
                for i in range(len(sq)):
                    sq[i] += cum[i] if i + 1 < min(rows, cols) else float(d.square().sum())
            self.matrices[name] = tops
            self.energy[name] = (sq, float(delta.square().sum()))

    def energy_k(self, k: int) -> float:
        """Σ over the matrix updates of Σ_{i≤k} σ_i², over Σ ‖Δ‖² (the ‖Δ‖²-weighted energy)."""
        top = sum(v[0][min(k, len(v[0])) - 1] if v[0] else v[1] for v in self.energy.values())
        total = sum(v[1] for v in self.energy.values())
        return top / total if total > 0 else math.nan

    def truncated(self, name: str, k: int, delta: torch.Tensor) -> torch.Tensor:
        """rank-k(Δ) of one tensor, per matrix (`analysis.matrices`); `delta` is its float64 Δ_T."""
        import torch

        from ..analysis.matrices import from_factors

        mats = delta.reshape(self.shapes[name])  # (count, rows, cols), as matrix_shape says
        parts = [from_factors(d, top, k) for d, top in zip(mats, self.matrices[name], strict=True)]
        return torch.stack(parts).reshape(delta.shape)


def candidate_producer(
    run: Run, step: int, grouped: set[str], candidate: Candidate, factors: Factors | None
) -> Callable[[str], Produced]:
    """A `produce` for io.like.write_like: the candidate's weights, written like step T."""
    import torch

    current, base = run.checkpoint(step), run.base

    def produce(name: str) -> Produced:
        if name not in grouped:  # no update defined (integer buffers, tensors the base lacks)
            return as_stored(current, name)
        if candidate.rank is not None:
            if factors is None or name not in factors.matrices:
                return as_stored(current, name)  # vectors keep their whole update
            w0 = base.tensor(name, torch.float64)
            delta = current.tensor(name, torch.float64) - w0
            out = (w0 + factors.truncated(name, candidate.rank, delta)).to(current.spec(name).dtype)
            if not bool(out.isfinite().all()):
                raise OpdlensError(
                    f"{current.path}: tensor '{name}' is not finite in {out.dtype} after the "
                    f"rank-{candidate.rank} truncation (NaN or Inf in the run, or beyond the "
                    "dtype's range); check the run's checkpoints."
                )
            return out
        if name in candidate.kept:
            return as_stored(current, name)
        if base.spec(name).stored == current.spec(name).stored:
            return as_stored(base, name)
        return base.tensor(name).to(current.spec(name).dtype)  # θ_0 in the dtype step T stores

    return produce


def _bad_score(scores: object) -> str | None:
    """What is wrong with a saved "scores" object (a map of names to finite numbers), or None."""
    if not isinstance(scores, dict):
        return (
            f'"scores" is {type(scores).__name__} {str(scores)[:40]}, not a map of names to numbers'
        )
    for key, value in scores.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            return f"the score of {key!r} is {str(value)[:40]}, not a finite number"
    return None


class ScoreBook:
    """Scores of one (run, step, scorer), rewritten atomically after each new one."""

    def __init__(self, path: Path | None, identity: dict[str, object]) -> None:
        self.path, self.identity = path, identity
        self.scores: dict[str, float] = {}
        self.reused: set[str] = set()
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        if path is None or not path.is_file():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            self.warnings.append(f"{path} could not be read ({e}); every candidate is scored anew.")
            return
        if not isinstance(saved, dict) or saved.get("identity") != identity:
            self.warnings.append(
                f"{path} holds scores of another run, step or scorer; they are not reused and "
                "the file is replaced."
            )
            return
        scores = saved.get("scores", {})
        bad = _bad_score(scores)
        if bad is not None:
            self.warnings.append(
                f"{path} is not a file of scores opdlens wrote ({bad}); none is reused, every "
                "candidate is scored anew and the file is replaced."
            )
            return
        self.scores = {k: float(v) for k, v in scores.items()}

    def get(self, key: str) -> float | None:
        """The saved score of candidate `key` (counted as reused), or None."""
        with self._lock:
            value = self.scores.get(key)
            if value is not None:
                self.reused.add(key)
            return value

    def has(self, key: str) -> bool:
        """Whether candidate `key` has a score (without counting it as reused)."""
        with self._lock:
            return key in self.scores

    def put(self, key: str, value: float) -> None:
        """Record a new score and rewrite the file at once, so a kill loses no finished score."""
        with self._lock:
            self.scores[key] = value
            if self.path is not None:
                payload = {"identity": self.identity, "scores": self.scores}
                write_text_atomic(self.path, json.dumps(payload, indent=2) + "\n")


def candidates_dir(out_dir: Path) -> Path:
    """`out_dir/candidates`, created if absent; refused unless a real directory (no symlink)."""
    path = out_dir / CANDIDATES_DIR
    try:
        path.mkdir()
    except FileExistsError:
        pass
    except OSError as e:
        raise output_error(path, e) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):  # a symlink (to a directory or not), a file, …
        raise OpdlensError(
            f"{path} is not a real directory (a symbolic link or a file); opdlens keeps "
            "candidates only in a directory of its own, never through a link. Remove it, or "
            "choose another --out."
        )
    return path
