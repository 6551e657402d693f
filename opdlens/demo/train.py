"""Training loops of the demo: SFT for the teacher and student start, then OPD and GRPO-style RL.

metrics.csv columns, one row per saved step (all describe the saved weights θ_step):
`accuracy` — greedy exact-match on the held-out test set (as opdlens.demo.accuracy computes
it from the saved checkpoint); `loss` — the run's own objective
on a batch sampled from θ_step (OPD: mean per-token reverse-KL estimate log p_s − log p_t;
RL: 1 − mean exact-match reward); `reward` and `reverse_kl` — both diagnostics for both runs.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from opdlens.demo.model import TinyLlama, load_model, save_checkpoint
from opdlens.demo.task import AdditionTask, TrainSampler
from opdlens.io.paths import atomic_file
from opdlens.progress import Progress
from opdlens.schedule import is_power_of_two

METRIC_COLUMNS = ("step", "accuracy", "loss", "reward", "reverse_kl")


@dataclass(frozen=True)
class PostTrainSettings:
    """Hyperparameters shared by the OPD and RL runs (same optimiser, same lr schedule)."""

    steps: int
    save_every: int
    lr: float
    samples_per_step: int  # completions sampled per step, by both runs
    group_size: int  # RL: completions per prompt; OPD samples one completion per prompt
    warmup: int = 10
    normalize_advantage: bool = True

    def __post_init__(self) -> None:
        if self.samples_per_step % self.group_size:
            raise ValueError(
                f"samples_per_step ({self.samples_per_step}) must be a multiple of "
                f"group_size ({self.group_size})."
            )


@torch.no_grad()
def sample(
    model: torch.nn.Module, prompts: torch.Tensor, answer_len: int, gen: torch.Generator | None
) -> torch.Tensor:
    """Complete prompts token by token (greedy when gen is None). Shape: (B, P) → (B, P + A)."""
    seq = prompts
    for _ in range(answer_len):
        logits = model(seq)[:, -1]  # (B, V)
        if gen is None:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


def answer_logprobs(model: TinyLlama, seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Log-probability of each answer token given its prefix. Shape: (B, P + A) → (B, A)."""
    logits = model(seq[:, :-1])[:, prompt_len - 1 :]  # (B, A, V)
    return logits.log_softmax(-1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1)


def greedy_accuracy(model: torch.nn.Module, prompts: torch.Tensor, answers: torch.Tensor) -> float:
    """Fraction of prompts whose greedy completion equals the answer exactly."""
    out = sample(model, prompts, answers.shape[1], None)[:, prompts.shape[1] :]
    return (out == answers).all(dim=1).float().mean().item()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread with deterministic algorithms inside the block, restoring both
    after: faster for these tiny matrices, and no number depends on the core count."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def accuracy(checkpoint_dir: str | Path) -> float:
    """Held-out test accuracy (greedy, exact match) of a demo checkpoint directory."""
    model, demo = load_model(Path(checkpoint_dir))
    prompts, answers = AdditionTask.from_dict(demo["task"]).split("test")
    with single_thread():
        return greedy_accuracy(model, prompts, answers)


def _update(model: TinyLlama, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One optimiser step on `loss` at learning rate `lr`, gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def sft(
    model: TinyLlama,
    sampler: TrainSampler,
    *,
    steps: int,
    lr: float,
    batch: int,
    stop: Callable[[TinyLlama], bool] | None = None,
    check_every: int = 10,
    label_smoothing: float = 0.0,
    bar: Progress | None = None,
) -> int:
    """Cross-entropy on answer tokens; returns the steps taken (fewer if stop() said so)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    prompt_len = sampler.task.prompt_len
    for step in range(1, steps + 1):
        prompts, answers = sampler.batch(batch)
        seq = torch.cat([prompts, answers], dim=1)
        logits = model(seq[:, :-1])[:, prompt_len - 1 :]  # (B, A, V)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            answers.reshape(-1),
            label_smoothing=label_smoothing,
        )
        _update(model, opt, loss, lr * min(1.0, step / 50))  # short warm-up
        if bar is not None:
            bar.update()
        if stop is not None and step % check_every == 0:
            model.eval()
            done = stop(model)
            model.train()
            if done:
                return step
    return steps


def saved_steps(total: int, save_every: int) -> list[int]:
    """Step 0, every power of two, every save_every steps, and the last step."""
    steps = {0, total} | {s for s in range(1, total + 1) if is_power_of_two(s)}
    steps |= set(range(save_every, total + 1, save_every))
    return sorted(steps)


def _objective(
    kind: str,
    student: TinyLlama,
    teacher: TinyLlama,
    sampler: TrainSampler,
    settings: PostTrainSettings,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The surrogate loss to differentiate and the batch diagnostics for one step."""
    task = sampler.task
    group = settings.group_size if kind == "rl" else 1
    prompts, answers = sampler.batch(settings.samples_per_step // group)
    prompts = prompts.repeat_interleave(group, dim=0)
    answers = answers.repeat_interleave(group, dim=0)
    student.eval()
    seq = sample(student, prompts, task.answer_len, gen)  # (B, P + A)
    student.train()
    logp_s = answer_logprobs(student, seq, task.prompt_len)  # (B, A)
    with torch.no_grad():
        logp_t = answer_logprobs(teacher, seq, task.prompt_len)
    reward = (seq[:, task.prompt_len :] == answers).all(dim=1).float()  # (B,)
    reverse_kl = logp_s.detach() - logp_t  # (B, A) per-token estimate
    if kind == "opd":
        advantage = -reverse_kl
        loss_value = reverse_kl.mean().item()
    else:
        grouped = reward.view(-1, settings.group_size)
        adv = grouped - grouped.mean(dim=1, keepdim=True)
        if settings.normalize_advantage:
            adv = adv / (grouped.std(dim=1, keepdim=True) + 1e-4)
        advantage = adv.reshape(-1, 1).expand_as(logp_s)
        loss_value = 1.0 - reward.mean().item()
    surrogate = -(advantage * logp_s).mean()
    stats = {
        "loss": loss_value,
        "reward": reward.mean().item(),
        "reverse_kl": reverse_kl.mean().item(),
    }
    return surrogate, stats


def post_train(
    kind: str,
    start: TinyLlama,
    teacher: TinyLlama,
    task: AdditionTask,
    settings: PostTrainSettings,
    *,
    seed: int,
    run_dir: Path | None = None,
    demo: dict[str, Any] | None = None,
    on_step: Callable[[TinyLlama, int], None] | None = None,
    bar: Progress | None = None,
) -> TinyLlama:
    """One OPD or RL run from a copy of start; saves checkpoints and metrics.csv into run_dir.

    on_step(model, step) runs after every optimiser step (the EffOPD callback, an evaluation).
    With run_dir None nothing is written. Returns the trained copy.
    """
    if kind not in ("opd", "rl"):
        raise ValueError(f"kind must be 'opd' or 'rl'; got {kind!r}.")
    student = copy.deepcopy(start).train()
    test_prompts, test_answers = task.split("test")
    sampler = task.sampler(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.Adam(student.parameters(), lr=settings.lr, betas=(0.9, 0.98))
    keep = set(saved_steps(settings.steps, settings.save_every)) if run_dir is not None else set()
    rows: list[dict[str, float]] = []
    for step in range(settings.steps + 1):
        surrogate, stats = _objective(kind, student, teacher, sampler, settings, gen)
        if run_dir is not None and step in keep:
            student.eval()
            acc = greedy_accuracy(student, test_prompts, test_answers)
            student.train()
            rows.append({"step": step, "accuracy": acc, **stats})
            meta = {**(demo or {}), "run": kind, "step": step}
            save_checkpoint(student, run_dir / f"checkpoint-{step}", meta)
        if step == settings.steps:
            break
        _update(student, opt, surrogate, settings.lr * min(1.0, (step + 1) / settings.warmup))
        if on_step is not None:
            student.eval()
            on_step(student, step + 1)
            student.train()
        if bar is not None:
            bar.update()
    if run_dir is not None:
        _write_metrics(run_dir / "metrics.csv", rows)
    return student.eval()


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
