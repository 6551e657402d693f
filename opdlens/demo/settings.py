"""The demo's presets: the task, the model, and the SFT and post-training hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass

from opdlens.analysis.options import AnalyzeOptions
from opdlens.demo.model import ModelConfig
from opdlens.demo.task import VOCAB_SIZE, AdditionTask
from opdlens.demo.train import PostTrainSettings

# The runs are stored in float32, where nearly every weight changes; changed_frac and the
# seeds' overlap count changes as a bfloat16 checkpoint of the same weights would store them.
SPARSITY_DTYPE = "bfloat16"


def analyze_options(workers: int | None) -> AnalyzeOptions:
    """How the demo analyses its runs: run_demo's analysis, and watch's while they train."""
    return AnalyzeOptions(workers=workers, base_geometry=True, sparsity_dtype=SPARSITY_DTYPE)


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the demo's runs besides the seed."""

    task: AdditionTask
    arch: ModelConfig  # teacher and student share it; the student is less trained
    sft_steps: int  # cap; SFT stops once validation accuracy reaches teacher_target
    student_target: float  # the student is the first SFT snapshot at this validation accuracy
    teacher_target: float
    sft_lr: float
    sft_batch: int
    # A soft teacher: wrong tokens cost a few nats of reverse KL, as with an LLM teacher,
    # rather than the ~30 nats of a one-hot-trained toy model.
    label_smoothing: float
    post: PostTrainSettings
    eval_every: int  # test-accuracy resolution of the online comparison, in steps
    replicates: int = 1  # OPD and RL runs per method, each with its own post-training seed


def demo_settings(quick: bool, seed: int = 0) -> DemoSettings:
    """The full or quick preset. Both train the same teacher and student start; quick post-trains
    one seed per method for 40 steps, which are the first 40 steps of the full preset's first
    seed (a constant learning rate after the warm-up, the same seeds)."""
    task = AdditionTask(n_digits=2, reverse=True, n_val=256, n_test=512, split_seed=seed)
    width = 64
    arch = ModelConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=task.prompt_len + task.answer_len,
    )
    post = PostTrainSettings(
        steps=40 if quick else 120,
        save_every=10 if quick else 20,
        lr=3e-4,
        samples_per_step=128,
        group_size=8,
    )
    return DemoSettings(
        task=task,
        arch=arch,
        sft_steps=2000,
        # A student that solves a quarter of the problems: sampled groups then hold correct
        # answers often enough for RL to learn on every seed, as OPD does.
        student_target=0.25,
        teacher_target=0.97,
        sft_lr=3e-3,
        sft_batch=128,
        label_smoothing=0.1,
        post=post,
        eval_every=5,
        replicates=1 if quick else 3,
    )


def replicate_dir(kind: str, r: int) -> str:
    """Directory name of replicate r (0-based) of a method: opd, opd-2, opd-3, …"""
    return kind if r == 0 else f"{kind}-{r + 1}"


def replicate_seed(seed: int, r: int) -> int:
    """The post-training seed of replicate r; replicate 0 keeps the demo's seed."""
    return seed + 1000 * r
