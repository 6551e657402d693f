"""Tensor sources read one checkpoint's tensors by canonical name, whatever its files hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opdlens.errors import CheckpointError, IncompleteCheckpointError
from opdlens.io.sources import FsdpSource, PickleSource, SafetensorsSource

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIED = {"tie_word_embeddings": True}


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def test_safetensors_names_are_canonical_and_reads_are_exact(tmp_path: Path) -> None:
    w = torch.randn(6, 4).to(torch.bfloat16)
    f = _save(
        tmp_path / "model.safetensors", {"module._orig_mod.model.layers.0.mlp.up_proj.weight": w}
    )
    src = SafetensorsSource([f], {})
    name = "model.layers.0.mlp.up_proj.weight"
    assert src.names() == [name] and src.specs[name].shape == (6, 4)
    assert src.specs[name].stored == "BF16" and src.specs[name].is_float
    assert torch.equal(src.read(name), w)
    np.testing.assert_array_equal(src.read_float32(name), w.float().numpy())
    np.testing.assert_array_equal(
        src.read_float32(name, (5, 9)), w.float().reshape(-1)[5:9].numpy()
    )
    path, begin, end = src.byte_range(name)
    assert path == f and f.read_bytes()[begin:end] == w.view(torch.uint8).numpy().tobytes()


def test_the_same_parameter_twice_is_refused(tmp_path: Path) -> None:
    twice = {"model.norm.weight": torch.ones(3), "module.model.norm.weight": torch.ones(3)}
    with pytest.raises(CheckpointError, match=r"tensors 'model\.norm\.weight' and 'module\.model\."
                       r"norm\.weight' both map to 'model\.norm\.weight'"):  # fmt: skip
        SafetensorsSource([_save(tmp_path / "one.safetensors", twice)], {})
    a = _save(tmp_path / "a.safetensors", {"model.norm.weight": torch.ones(3)})
    b = _save(tmp_path / "b.safetensors", {"model.norm.weight": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"b\.safetensors: tensor 'model\.norm\.weight' is "
                       r"also in a\.safetensors"):  # fmt: skip
        SafetensorsSource([a, b], {})


@pytest.mark.parametrize("config", [TIED, {}])
def test_a_tied_head_is_counted_once_only_when_the_config_ties_it(tmp_path: Path, config) -> None:
    f = _save(tmp_path / "m.safetensors", {EMB: torch.ones(10, 4), HEAD: torch.ones(10, 4)})
    src = SafetensorsSource([f], config)
    assert (HEAD in src.specs, src.tied) == ((False, [HEAD]) if config else (True, []))


def test_a_pickle_keeps_a_tied_head_as_one_storage(tmp_path: Path) -> None:
    emb = torch.randn(10, 4)
    torch.save({EMB: emb, HEAD: emb, "model.norm.weight": torch.ones(4)}, tmp_path / "m.bin")
    src = PickleSource([tmp_path / "m.bin"], {}, trust_pickle=False)  # no config needed
    assert src.tied == [HEAD] and sorted(src.names()) == [EMB, "model.norm.weight"]
    got = src.read(EMB)
    got.add_(1)  # a copy: the source's tensor is not changed through it
    assert torch.equal(src.read(EMB), emb)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            torch.eye(3).to_sparse(),
            r"'w' is a torch\.sparse_coo tensor on cpu; opdlens reads dense",
        ),
        (torch.ones(2, dtype=torch.complex64), r"'w': .*cannot store dtype torch\.complex64"),
    ],
)
def test_tensors_opdlens_cannot_read_are_refused_naming_them(tmp_path: Path, tensor, message):
    torch.save({"w": tensor}, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match=r"m\.bin: tensor " + message):
        PickleSource([tmp_path / "m.bin"], {}, trust_pickle=False)


def test_fsdp_rows_are_joined_and_replicated_buffers_read_once(tmp_path: Path) -> None:
    w, buf = torch.randn(6, 4), torch.arange(5.0)
    for rank in (0, 1):
        torch.save({"model.layers.0.mlp.up_proj.weight": w[3 * rank : 3 * rank + 3], "rope": buf},
                   tmp_path / f"model_world_size_2_rank_{rank}.pt")  # fmt: skip
    files = sorted(tmp_path.glob("*.pt"), reverse=True)  # any order: sorted by rank
    src = FsdpSource(files, {}, trust_pickle=False)
    assert src.files == sorted(files) and src.specs["rope"].shape == (5,)
    assert torch.equal(src.read("model.layers.0.mlp.up_proj.weight"), w)
    assert torch.equal(src.read("rope"), buf)


def test_fsdp_rank_files_must_make_one_whole_world(tmp_path: Path) -> None:
    for name in ("model_world_size_2_rank_0.pt", "model_world_size_3_rank_1.pt"):
        torch.save({"w": torch.ones(2)}, tmp_path / name)
    files = sorted(tmp_path.glob("*.pt"))
    with pytest.raises(CheckpointError, match=r"rank files of different world sizes \(2, 3\)"):
        FsdpSource(files, {}, trust_pickle=False)
    with pytest.raises(IncompleteCheckpointError, match=r"FSDP world size 2 but rank file\(s\) "
                       r"\[1\] are missing; the checkpoint is incomplete"):  # fmt: skip
        FsdpSource(files[:1], {}, trust_pickle=False)
