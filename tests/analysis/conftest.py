"""Fixtures for the analysis tests: runs with planted updates in real trainer layouts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import planted` from any test directory

import checkpoints  # noqa: E402
from planted import SMALL_CONFIG, STEPS, planted, small_states, write_state_run  # noqa: E402


@pytest.fixture(scope="session")
def planted_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """planted_runs(kind) → run root; kinds: llama-bf16, llama-f32, phi3, moe, lora."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind in made:
            return made[kind]
        root = tmp_path_factory.mktemp(kind)
        if kind in ("llama-bf16", "llama-f32", "phi3"):
            arch = "phi3" if kind == "phi3" else "llama"
            dtype = torch.bfloat16 if kind == "llama-bf16" else torch.float32
            checkpoints.write_hf_run(root, arch, STEPS, dtype=dtype, update=planted,
                                     trainer_files=False)  # fmt: skip
        elif kind == "moe":
            # Stacked (experts, out, in) tensors as transformers holds them in memory.
            model = checkpoints.tiny_model("qwen3_moe")
            base = {k: v.detach().clone() for k, v in model.state_dict().items()}
            states = {s: {n: planted(n, w, s) for n, w in base.items()} for s in STEPS}
            write_state_run(root, states, checkpoints.tiny_config("qwen3_moe").to_dict())
        elif kind == "lora":
            base_dir = make("llama-f32") / "checkpoint-0"
            checkpoints.write_peft_run(root, base_dir, STEPS[1:], r=4, lora_alpha=8)
        else:
            raise ValueError(kind)
        made[kind] = root
        return root

    return make


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small llama-named run (planted.small_states) saved at planted.STEPS."""
    return write_state_run(tmp_path_factory.mktemp("small"), small_states(), SMALL_CONFIG)
