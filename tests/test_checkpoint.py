"""Checkpoint: what detection found (weight map, index, config directory) and per-tensor access."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import small_state, write_state_dir
from safetensors.torch import save_file

import opdlens
from opdlens.checkpoint import is_lora, open_checkpoint
from opdlens.errors import UnknownTensorError


def test_tied_embeddings_counted_once(hf_run):
    # safetensors drops the tied lm_head; torch.save keeps it as the embedding's storage.
    for layout in ("safetensors", "bin"):
        for arch, emb in (
            ("gpt2", "transformer.wte.weight"),
            ("gemma", "model.embed_tokens.weight"),
        ):
            run = opdlens.open_run(hf_run(arch, layout))
            assert "lm_head.weight" not in run.tensor_names and emb in run.tensor_names
            assert run.missing == {}
            ck = run.checkpoint(2)
            n_params = sum(p.numel() for n, p in _params(arch).items())
            assert ck.num_params == n_params, (arch, layout)


def _params(arch: str) -> dict[str, torch.Tensor]:
    from checkpoints import tiny_model

    return dict(tiny_model(arch).named_parameters())  # tied parameters once


def test_checkpoint_keeps_what_detection_found(tmp_path, hf_run):
    root = hf_run("llama", "sharded")
    run = opdlens.open_run(root)
    ck = run.checkpoint(2)
    assert ck.config_dir == root / "checkpoint-2" and ck.index_file is not None
    index = json.loads((root / "checkpoint-2" / "model.safetensors.index.json").read_text())
    assert ck.weight_map == index["weight_map"] and set(ck.weight_map) >= set(run.tensor_names)
    write_state_dir(tmp_path / "checkpoint-0", small_state(0), layout="bin-sharded")
    write_state_dir(tmp_path / "checkpoint-1", small_state(1), config={"model_type": "llama"})
    run = opdlens.open_run(tmp_path)
    assert run.base.index_file == tmp_path / "checkpoint-0" / "pytorch_model.bin.index.json"
    assert sorted(set(run.base.weight_map.values())) == [f.name for f in run.base.files]
    assert run.base.config_dir is None  # no config.json beside the base
    single = run.checkpoint(1)
    assert single.weight_map is None and single.index_file is None
    assert single.config_dir == tmp_path / "checkpoint-1"


def test_reads_one_tensor_as_stored_converted_as_numpy_or_as_bytes(tmp_path):
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6).to(torch.bfloat16)
    state = {"model.layers.0.mlp.down_proj.weight": w, "model.norm.weight": torch.ones(4)}
    ck_dir = tmp_path / "checkpoint-3"
    ck_dir.mkdir()
    save_file(state, ck_dir / "model.safetensors", metadata={"format": "pt"})
    ck = open_checkpoint(ck_dir, 3, trust_pickle=False)
    name = "model.layers.0.mlp.down_proj.weight"
    assert (ck.step, ck.layout, sorted(ck.names())) == (3, "hf-safetensors", sorted(state))
    assert not is_lora(ck.source)
    assert ck.spec(name).shape == (4, 6)
    assert ck.tensor(name).dtype == torch.bfloat16 and torch.equal(ck.tensor(name), w)
    assert torch.equal(ck.tensor(name, torch.float64), w.double())
    np.testing.assert_array_equal(ck.array(name, float32=True), w.float().numpy())
    assert ck.array(name, float32=True, span=(7, 10)).tolist() == [7.0, 8.0, 9.0]
    np.testing.assert_array_equal(
        ck.array(name).view(np.uint16), w.view(torch.int16).numpy().view(np.uint16)
    )
    file, begin, end = ck.byte_range(name)
    assert file == ck_dir / "model.safetensors" and end - begin == 24 * 2
    assert file.read_bytes()[begin:end] == w.view(torch.uint8).numpy().tobytes()
    assert ck.files == [file] and ck.bytes_on_disk == file.stat().st_size
    assert ck.num_params == 28 and ck.dtype == "bfloat16"  # 24 bf16 against 4 float32
    for read in (ck.tensor, ck.array):
        with pytest.raises(
            UnknownTensorError, match=r"checkpoint-3: no tensor named 'lm_head\.weight'"
        ):
            read("lm_head.weight")
