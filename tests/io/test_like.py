"""io.like.write_like: a new checkpoint in an input's shards, with its config files and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import st_state, write_state_dir
from safetensors import safe_open

from opdlens import OpdlensError, open_run
from opdlens.io.like import FileBytes, as_stored, output_note, write_like


def _state(scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=g) * scale,
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g) * scale,
        "model.norm.weight": torch.ones(4) * scale,
        "model.step": torch.tensor([int(scale)], dtype=torch.int64),
    }


def _open(tmp_path: Path, layout: str, config: dict[str, object] | None):
    base = write_state_dir(tmp_path / "base", _state(1.0), layout, {"model_type": "llama"})
    ck = write_state_dir(tmp_path / "ck", _state(2.0), layout, config)
    return open_run(checkpoints={0: base, 1: ck})


def test_a_bin_sharded_input_is_written_in_its_shards_as_safetensors(tmp_path: Path) -> None:
    run = _open(tmp_path, "bin-sharded", {"model_type": "llama", "marker": "ck"})
    like = run.checkpoint(1)
    assert like.weight_map is not None and like.config_dir == tmp_path / "ck"
    out = write_like(like, tmp_path / "out", lambda n: like.tensor(n) * 1, metadata={"k": "v"})
    # pytorch_model-00001-of-00004.bin → model-00001-of-00004.safetensors, same tensors in each
    want_map = {
        n: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        for n, v in like.weight_map.items()
    }
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == want_map and len(set(want_map.values())) > 1
    assert {p.name for p in out.glob("*.safetensors")} == set(want_map.values())
    got, want = st_state(out), _state(2.0)
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    assert json.loads((out / "config.json").read_text())["marker"] == "ck"
    provenance = json.loads((out / "opdlens_provenance.json").read_text())
    assert provenance["k"] == "v" and provenance["input_layout"] == "hf-bin-sharded"
    assert provenance["output_layout_note"] == output_note(like)


def test_config_files_come_from_config_dir_when_the_input_has_none(tmp_path: Path) -> None:
    run = _open(tmp_path, "safetensors", None)
    like = run.checkpoint(1)
    assert like.config_dir is None and output_note(like) is None
    out = write_like(like, tmp_path / "out", lambda n: as_stored(like, n), metadata={},
                     config_dir=run.base.config_dir)  # fmt: skip
    assert json.loads((out / "config.json").read_text()) == {"model_type": "llama"}
    # as_stored hands over byte ranges: the tensors are copied bit for bit
    assert isinstance(as_stored(like, "model.norm.weight"), FileBytes)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("model.step"), _state(2.0)["model.step"])


def test_an_output_inside_a_protected_path_is_refused(tmp_path: Path) -> None:
    run = _open(tmp_path, "safetensors", None)
    like = run.checkpoint(1)
    with pytest.raises(OpdlensError, match="overlaps the input"):
        write_like(like, like.path / "pred", lambda n: as_stored(like, n), metadata={},
                   protected=run.input_paths)  # fmt: skip
    assert not (like.path / "pred").exists()
