"""EffOPDCallback and SaveAtPowersOfTwo inside the real Trainer and TRL's on-policy distillation."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from checkpoints import tiny_model
from safetensors.torch import load_file
from torch import nn
from transformers import (
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)

import opdlens
from opdlens.errors import OptionError
from opdlens.extrapolation.callback import CANDIDATE_COLUMNS, EffOPD
from opdlens.integrations.transformers import (
    CSV_NAME,
    EffOPDCallback,
    SaveAtPowersOfTwo,
    save_base,
)

VOCAB = 32
LETTERS = "abcdefghijklmnopqrstuvwxyz.,"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 32-token word-level tokenizer (4 specials + 28 one-character words), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: 4 + i for i, c in enumerate(LETTERS)})
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Snapshot(TrainerCallback):
    """Weights (and Adam's first moments) at every step end, where it sits in the callback list."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.moments: dict[int, list[torch.Tensor]] = {}
        self.micro_batches: dict[int, int] = {}
        self._micro = 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = _params(model)

    def on_substep_end(self, args, state, control, **kw):
        self._micro += 1

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self._micro += 1
        self.weights[state.global_step] = _params(model)
        self.micro_batches[state.global_step] = self._micro
        self.moments[state.global_step] = [
            s["exp_avg"].clone() for s in optimizer.state.values() if "exp_avg" in s
        ]


def scripted(scores: list[float]) -> Callable[[nn.Module], float]:
    """A score function returning `scores` in order; fails if called more often."""
    it: Iterator[float] = iter(scores)
    return lambda model: next(it)


def replay_with_effopd(
    before: Snapshot, after: Snapshot, score_fn: Callable[[nn.Module], float], **kw: Any
) -> list[dict[str, Any]]:
    """Feed the trainer's pre-decision weights to a plain EffOPD; check it lands on the same weights."""
    model = tiny_model("llama", vocab_size=VOCAB)
    ref = EffOPD(**kw)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before.start[n])
    ref.start(model)
    for step in sorted(before.weights):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before.weights[step][n])
        ref.after_step(model.eval(), step, score_fn)
        for n, p in model.named_parameters():
            assert torch.equal(p, after.weights[step][n]), (step, n)
    return ref.candidate_rows()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _as_csv(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: str(row[k]) for k in CANDIDATE_COLUMNS} for row in rows]


# Step 1: two accepted, the third rejected; step 2: the first rejected; step 4: one accepted.
SCORES = [0.0, 1.0, 2.0, 1.5, 0.0, -1.0, 0.0, 1.0, 0.5]


@pytest.mark.slow
def test_trl_on_policy_distillation_with_accumulation(tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="TRL is a test extra; a leaner environment skips this")
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    student = tiny_model("llama", seed=0, vocab_size=VOCAB)
    teacher = tiny_model("llama", seed=1, vocab_size=VOCAB)
    prompts = [" ".join(LETTERS[(i + j) % 8] for j in range(4)) for i in range(16)]
    before, after = Snapshot(), Snapshot()
    out = tmp_path / "run"
    args = DistillationConfig(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_completion_length=4,
        learning_rate=1e-2,
        save_strategy="no",
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tiny_tokenizer(),
        callbacks=[before, EffOPDCallback(scripted(SCORES)), after, SaveAtPowersOfTwo()],
    )
    trainer.train()

    # global_step counts optimiser steps: each decision came after 2 micro-batches per step.
    assert before.micro_batches == {1: 2, 2: 4, 3: 6, 4: 8}
    rows = replay_with_effopd(before, after, scripted(SCORES))
    assert [(r["step"], r["accepted"]) for r in rows] == [
        (1, True), (1, True), (1, False), (2, False), (4, True), (4, False)
    ]  # fmt: skip
    assert [r["alpha"] for r in rows] == pytest.approx([2, 2 / 3, 2 / 5, 2, 2, 2 / 3])
    assert read_csv(out / CSV_NAME) == _as_csv(rows)
    logged = [h for h in trainer.state.log_history if "effopd/candidate" in h]
    assert [(h["step"], h["effopd/score"], h["effopd/accepted"]) for h in logged] == [
        (r["step"], r["score"], int(r["accepted"])) for r in rows
    ]
    # Weights only: Adam's moments are the same before and after a jump that moved the weights.
    for step in (1, 4):
        assert any(
            not torch.equal(before.weights[step][n], after.weights[step][n]) for n in after.start
        )
        for m0, m1 in zip(before.moments[step], after.moments[step], strict=True):
            assert torch.equal(m0, m1)

    run = opdlens.open_run(out)
    assert run.base.path == out / "checkpoint-0" and run.steps == [1, 2, 4]
    for n in run.base.names():
        assert torch.equal(run.base.tensor(n), before.start[n]), n
    saved = run.checkpoint(4)  # saved after the decision: the weights EffOPD kept
    for n in saved.names():
        assert torch.equal(saved.tensor(n), after.weights[4][n]), n
    frame = opdlens.analyze(run, workers=1, ranks=(1,))
    assert sorted(frame["step"].unique()) == [1, 2, 4]


@pytest.mark.slow
def test_plain_trainer_decisions_equal_effopd_on_a_real_score(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = torch.randint(4, VOCAB, (32, 8))
    held_out = torch.randint(4, VOCAB, (4, 8))

    def score(model: nn.Module) -> float:
        assert not model.training and not torch.is_grad_enabled()
        return -float(model(input_ids=held_out, labels=held_out).loss)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": data[i], "labels": data[i]}

    before, after = Snapshot(), Snapshot()
    out = tmp_path / "run"
    args = _lm_args(out, 8)
    callbacks = [before, EffOPDCallback(score, max_candidates=3), after, SaveAtPowersOfTwo()]
    model = tiny_model("llama", seed=0, vocab_size=VOCAB).train()
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=callbacks).train()

    rows = replay_with_effopd(before, after, score, max_candidates=3)
    assert {r["step"] for r in rows} == {1, 2, 4, 8}
    assert {r["accepted"] for r in rows} == {True, False}  # the run both jumped and rolled back
    assert read_csv(out / CSV_NAME) == _as_csv(rows)
    # Powers of two, the usual every-3 interval, the end, and the base.
    run = opdlens.open_run(out)
    assert run.base.path == out / "checkpoint-0" and run.steps == [1, 2, 3, 4, 6, 8]


def test_save_at_powers_of_two_refuses_a_checkpoint_limit(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), save_total_limit=2, report_to=[])
    with pytest.raises(OptionError, match="save_total_limit=2 .*save_total_limit=None"):
        SaveAtPowersOfTwo().on_train_begin(args, TrainerState(), None, model=nn.Linear(2, 2))


def test_save_base_replaces_only_its_own_checkpoint_0(tmp_path: Path) -> None:
    model = tiny_model("llama", vocab_size=VOCAB)
    first = save_base(model, tmp_path)
    assert (first / "model.safetensors").is_file() and (first / ".opdlens").is_file()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_base(model, tmp_path)  # ours: replaced
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-0"]
    saved = load_file(first / "model.safetensors")["lm_head.weight"]
    assert torch.equal(saved, model.lm_head.weight.detach())
    theirs = tmp_path / "other"
    (theirs / "checkpoint-0").mkdir(parents=True)
    with pytest.raises(OptionError, match="opdlens did not write it.*save_base=False"):
        save_base(model, theirs)
    assert list((theirs / "checkpoint-0").iterdir()) == []
    # A symlink named checkpoint-0 is never replaced, not even one to a base opdlens wrote.
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoint-0").symlink_to(first)
    with pytest.raises(OptionError, match="opdlens did not write it"):
        save_base(model, linked)
    assert (linked / "checkpoint-0").is_symlink() and (first / "model.safetensors").is_file()
    assert sorted(p.name for p in linked.iterdir()) == ["checkpoint-0"]
    with pytest.raises(OptionError, match="has no save_pretrained.*base="):
        save_base(nn.Linear(2, 2), tmp_path / "plain")


def test_scoring_runs_in_eval_mode_and_restores_each_module_mode(tmp_path: Path) -> None:
    model = tiny_model("llama", vocab_size=VOCAB).train()
    model.model.layers[0].eval()  # a user's choice the callback must keep
    seen: list[bool] = []
    cb = EffOPDCallback(lambda m: seen.append(m.training) or 0.0, max_candidates=1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    cb.on_train_begin(args, TrainerState(), None, model=model)
    cb.on_step_end(args, TrainerState(global_step=1), None, model=model)
    assert seen == [False, False]  # the base and one candidate, both scored in eval mode
    assert model.training and not model.model.layers[0].training
    assert model.model.layers[1].training
    (tmp_path / CSV_NAME).unlink()
    cb.on_step_end(args, TrainerState(global_step=3), None, model=model)
    assert seen == [False, False] and not (tmp_path / CSV_NAME).exists()  # no decision at 3


def test_effopd_callback_refuses_a_foreign_csv(tmp_path: Path) -> None:
    mine = tmp_path / "notes.csv"
    mine.write_text("a,b\n1,2\n")
    cb = EffOPDCallback(lambda m: 0.0, csv_path=mine)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(OptionError, match="notes.csv, exists and is not a candidates CSV"):
        cb.on_train_begin(args, TrainerState(), None, model=tiny_model("llama"))
    assert mine.read_text() == "a,b\n1,2\n"


def test_effopd_callback_refuses_several_processes_and_bad_score_fn() -> None:
    args = SimpleNamespace(world_size=2, fsdp=None, deepspeed=None, output_dir=".")
    with pytest.raises(OptionError, match="single training process.*world_size=2"):
        EffOPDCallback(lambda m: 0.0).on_train_begin(
            args, TrainerState(), None, model=nn.Linear(2, 2)
        )
    with pytest.raises(OptionError, match="'score_fn'.*callable"):
        EffOPDCallback(0.5)


@pytest.mark.parametrize(
    ("alpha0", "n", "needle"),
    [
        (0.0, 5, "The 'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (-1.0, 5, "Got -1.0 instead"),
        (2.0, 0, "The 'max_candidates' parameter (--max-candidates) of EffOPD's schedule"),
    ],
)  # fmt: skip
def test_effopd_callback_refuses_alpha0_at_most_zero_and_no_candidates(alpha0, n, needle) -> None:
    """The same EffOPDSchedule rule as replay and foresee, before any training starts."""
    with pytest.raises(OptionError) as e:
        EffOPDCallback(lambda m: 0.0, alpha0=alpha0, max_candidates=n)
    assert needle in str(e.value)
    cb = EffOPDCallback(lambda m: 0.0, alpha0=0.5, max_candidates=3)
    assert (cb.effopd.schedule.alpha0, cb.effopd.schedule.max_candidates) == (0.5, 3)


def test_resuming_without_the_prior_power_of_two_checkpoint_warns(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    cb = EffOPDCallback(lambda m: 0.0)
    with pytest.warns(UserWarning, match="resumes at step 5 and .*checkpoint-4 .* is missing"):
        cb.on_train_begin(args, TrainerState(global_step=5), None, model=tiny_model("llama"))
    assert cb.effopd.anchor_step == 5
    cb.on_train_begin(args, TrainerState(global_step=4), None, model=tiny_model("llama"))
    assert cb.effopd.anchor_step == 4  # resumed at a power of two: its weights are the anchor


def _lm_args(out: Path, max_steps: int) -> TrainingArguments:
    """CPU, batch 4, a fast learning rate, saves every 3 steps, no loggers, seed 0."""
    return TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        save_strategy="steps",
        save_steps=3,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )


def _lm_trainer(
    out: Path, callbacks: list[TrainerCallback], max_steps: int, processing_class: Any = None
) -> Trainer:
    """A plain Trainer on a tiny Llama, causal LM loss on fixed random tokens."""
    data = torch.randint(4, VOCAB, (32, 8), generator=torch.Generator().manual_seed(0))
    args = _lm_args(out, max_steps)
    rows = [{"input_ids": x, "labels": x} for x in data]
    model = tiny_model("llama", seed=0, vocab_size=VOCAB).train()
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks,
                   processing_class=processing_class)  # fmt: skip


_WEIGHTS_AND_STATE = {"model.safetensors", "config.json", "generation_config.json", ".opdlens",
                      "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                      "training_args.bin", "scaler.pt"}  # fmt: skip


def _support_files(checkpoint: Path) -> dict[str, bytes]:
    """A checkpoint's files other than weights, config and training state (the tokenizer's)."""
    return {p.name: p.read_bytes() for p in checkpoint.iterdir()
            if p.is_file() and p.name not in _WEIGHTS_AND_STATE}  # fmt: skip


def test_checkpoint_0_has_the_tokenizer_files_of_the_trainers_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _lm_trainer(out, [SaveAtPowersOfTwo()], 1, processing_class=tiny_tokenizer()).train()
    base, first = _support_files(out / "checkpoint-0"), _support_files(out / "checkpoint-1")
    assert "tokenizer.json" in first and "tokenizer_config.json" in first
    assert base == first  # the same files, byte for byte
    loaded = PreTrainedTokenizerFast.from_pretrained(out / "checkpoint-0")
    assert loaded("a b .")["input_ids"] == [4, 5, 30]
    assert (out / "checkpoint-0" / "model.safetensors").is_file()
    # No tokenizer given to the Trainer: neither has tokenizer files.
    bare = tmp_path / "bare"
    _lm_trainer(bare, [SaveAtPowersOfTwo()], 1).train()
    assert _support_files(bare / "checkpoint-0") == _support_files(bare / "checkpoint-1") == {}


@pytest.mark.slow
def test_resuming_anchors_at_the_saved_power_of_two_step(tmp_path: Path) -> None:
    # Every decision: base 0, first candidate 1 (kept), second 0.5 (rolled back).
    def score() -> Callable[[nn.Module], float]:
        return scripted([0.0, 1.0, 0.5] * 4)

    whole = _lm_trainer(tmp_path / "whole", [EffOPDCallback(score(), max_candidates=2)], 6)
    whole.callback_handler.add_callback(SaveAtPowersOfTwo())
    whole.train()
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed_dir)
    for step in (4, 6):
        shutil.rmtree(resumed_dir / f"checkpoint-{step}")
    resumed = _lm_trainer(resumed_dir, [EffOPDCallback(score(), max_candidates=2)], 6)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-3"))

    rows = read_csv(resumed_dir / CSV_NAME)
    assert rows == read_csv(tmp_path / "whole" / CSV_NAME)
    assert [(r["step"], r["anchor_step"]) for r in rows][-2:] == [("4", "2"), ("4", "2")]
    # The jump at step 4 went from step 2's weights, so the resumed run ends where the whole did.
    final = dict(resumed.model.named_parameters())
    for n, p in whole.model.named_parameters():
        torch.testing.assert_close(final[n], p, rtol=0, atol=1e-6)


def test_without_transformers_the_import_says_how_to_install() -> None:
    code = (
        "import sys\nsys.modules['transformers'] = None\n"
        "try:\n    import opdlens.integrations.transformers\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("OpdlensError") and "pip install 'opdlens[hf]'" in out.stdout
