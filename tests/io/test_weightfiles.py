"""Tests for io/weightfiles.py: hostile index files, symlinks and FIFOs get one fast line naming the
file (exit 2); Hugging Face hub snapshots, whose files are symlinks, are read."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from checkpoints import copy_run, same_weights_run, save_model, tiny_model, write_verl_run
from cli_errors import scan_fails, scan_fails_in_child

import opdlens

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A run of two sharded safetensors checkpoints, to copy and break."""
    return same_weights_run(tmp_path_factory.mktemp("sharded"), "sharded")


# -- index files -------------------------------------------------------------------------------


def _first_shard(ck: Path) -> str:
    return sorted(json.loads((ck / INDEX).read_text())["weight_map"].values())[0]


def _set_value(value: object) -> Callable[[dict], dict]:
    def edit(index: dict) -> dict:
        key = sorted(index["weight_map"])[0]
        index["weight_map"][key] = value
        return index

    return edit


BAD_INDEXES = {
    "dot-dot": (_set_value("../../../../../../etc/passwd"), "is '../../../../../../etc/passwd', "
                "expected a plain file name in the checkpoint directory"),
    "absolute": (_set_value("/etc/passwd"), "is '/etc/passwd', expected a plain file name"),
    "subdirectory": (_set_value("sub/model.safetensors"), "expected a plain file name"),
    "parent": (_set_value(".."), "is '..', expected a plain file name"),
    "number": (_set_value(7), "is 7, expected a file name string"),
    "null": (_set_value(None), "is null, expected a file name string"),
    "other-kind": (_set_value("pytorch_model.bin"),
                   "the weight_map names 'pytorch_model.bin', expected .safetensors shard files"),
    "map-is-list": (lambda i: {**i, "weight_map": list(i["weight_map"])},
                    "with a 'weight_map' object; found 'weight_map' as list"),
    "top-level-list": (lambda i: [i], "found a list"),
    "deep-json": (lambda i: "[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_bad_index(sharded, tmp_path, case):
    edit, needle = BAD_INDEXES[case]
    run = copy_run(sharded, tmp_path)
    index = run / "checkpoint-1" / INDEX
    new = edit(json.loads(index.read_text()))
    index.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(run)
    assert str(index) in str(e.value) and needle in str(e.value), str(e.value)
    scan_fails([run], str(index), needle)


def _shard_is(kind: str) -> Callable[[Path, Path], None]:
    def make(shard: Path, outside: Path) -> None:
        shutil.copy(shard, outside)
        shard.unlink()
        if kind == "symlink-outside":
            shard.symlink_to(outside)
        elif kind == "directory":
            shard.mkdir()
        elif kind == "fifo":
            os.mkfifo(shard)

    return make


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("symlink-outside", "outside the checkpoint directory"),
        ("directory", "is a directory, expected a regular weight file"),
        ("fifo", "is a FIFO (named pipe), expected a regular weight file"),
    ],
)
def test_index_shard_not_a_file_inside(sharded, tmp_path, kind, needle):
    run = copy_run(sharded, tmp_path)
    shard = run / "checkpoint-1" / _first_shard(run / "checkpoint-1")
    _shard_is(kind)(shard, tmp_path / "outside.safetensors")
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(run)
    assert str(e.value).startswith(f"{shard}: ") and needle in str(e.value), str(e.value)
    scan_fails([run], str(shard), needle)


def _hub_snapshot(hub: Path, rev: str, src: Path) -> Path:
    """Lay ``src``'s files out as the Hugging Face hub cache does: symlinks into ../../blobs/."""
    snap = hub / "snapshots" / rev
    snap.mkdir(parents=True)
    (hub / "blobs").mkdir(exist_ok=True)
    for f in sorted(src.iterdir()):
        blob = hub / "blobs" / f"{rev}-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snap


@pytest.mark.parametrize("layout", ["safetensors", "sharded"])
def test_hub_snapshot_symlinks_are_followed(tmp_path, layout):
    hub = tmp_path / "models--org--tiny"
    snaps = []
    for step in (0, 1):
        src = save_model(tiny_model("llama", seed=step), tmp_path / f"src-{step}", layout)
        snaps.append(_hub_snapshot(hub, f"rev{step}", src))
    assert all(p.is_symlink() for p in snaps[1].iterdir())
    run = opdlens.open_run(checkpoints={1: snaps[1]}, base=snaps[0])
    name = "model.layers.1.mlp.down_proj.weight"
    want = tiny_model("llama", seed=1).state_dict()[name]
    assert torch.equal(run.checkpoint(1).tensor(name), want)


# -- FIFOs found by name -----------------------------------------------------------------------


def test_fifo_rank_file_is_not_opened(tmp_path):
    run = write_verl_run(tmp_path / "run", "llama", steps=(0, 2), weights="plain")
    rank = run / "global_step_2" / "actor" / "model_world_size_2_rank_1.pt"
    rank.unlink()
    os.mkfifo(rank)  # opening it would block forever
    line = scan_fails_in_child(run)
    assert str(rank) in line and "is a FIFO (named pipe)" in line, line
