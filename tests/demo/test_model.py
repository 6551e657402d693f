"""demo.model: Llama names, and checkpoints written through the checkpoint writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo.names import llama_names
from opdlens.demo.model import ModelConfig, TinyLlama, load_model, save_checkpoint
from opdlens.errors import CheckpointError
from opdlens.io.paths import read_marker


def test_model_state_dict_uses_llama_names() -> None:
    cfg = ModelConfig(12, 16, 32, 3, 2, 2, 9)
    assert set(TinyLlama(cfg).state_dict()) == llama_names(3)


def test_save_checkpoint_writes_atomically_through_the_checkpoint_writer(tmp_path: Path) -> None:
    model = TinyLlama(ModelConfig(12, 16, 32, 3, 2, 2, 9))
    out = save_checkpoint(model, tmp_path / "checkpoint-1", {"role": "test"})
    assert read_marker(out) is not None  # published by CheckpointWriter, marker written last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no temp left
    loaded, demo = load_model(out)
    assert demo == {"role": "test"}
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(model, out, {"role": "test"})
