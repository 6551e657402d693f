"""Hostile index files, symlinks, FIFOs and pickles: one fast line naming the file, exit 2."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from checkpoints import save_model, tiny_model, write_verl_run
from cli_errors import scan_fails

import opdlens

INDEX = "model.safetensors.index.json"


def _scan_subprocess(run: Path) -> str:
    """`python -m opdlens scan` in a child, so that a hang fails the test instead of stalling it."""
    proc = subprocess.run([sys.executable, "-m", "opdlens", "scan", str(run)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A run of two sharded safetensors checkpoints, to copy and break."""
    root = tmp_path_factory.mktemp("sharded")
    model = tiny_model("llama")
    for step in (0, 1):
        save_model(model, root / f"checkpoint-{step}", "sharded")
    return root


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """A run of two pytorch_model.bin checkpoints, to copy and break."""
    root = tmp_path_factory.mktemp("bins")
    model = tiny_model("llama")
    for step in (0, 1):
        save_model(model, root / f"checkpoint-{step}", "bin")
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "run", symlinks=True))


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
    run = _copy(sharded, tmp_path)
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
    run = _copy(sharded, tmp_path)
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
    line = _scan_subprocess(run)
    assert str(rank) in line and "is a FIFO (named pipe)" in line, line


# -- pickles -----------------------------------------------------------------------------------


def _torch_zip(path: Path, data_pkl: bytes) -> None:
    """Pack a data.pkl the way torch.save does (torch's own zip writer)."""
    w = torch._C.PyTorchFileWriter(str(path))
    w.write_record("data.pkl", data_pkl, len(data_pkl))
    w.write_record(".format_version", "1", 1)
    w.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    w.write_end_of_file()


def _dict_with_key(key_ops: bytes, value_ops: bytes = pickle.NONE) -> bytes:
    """A pickle of {key: value} from raw opcodes (building the dict in Python would hash key)."""
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + key_ops + value_ops + pickle.SETITEM
            + pickle.STOP)  # fmt: skip


def _shared_tuple_key() -> bytes:
    t: tuple = ()
    for _ in range(60):
        t = (t, t)  # 2**60 nodes when walked, 60 memo entries when pickled
    return _dict_with_key(pickle.dumps(t, protocol=2)[2:-1])


def _bin(run: Path) -> Path:
    return run / "checkpoint-1" / "pytorch_model.bin"


def test_memo_shared_tuple_key_is_refused_fast(bins, tmp_path):
    run = _copy(bins, tmp_path)
    _torch_zip(_bin(run), _shared_tuple_key())
    assert _bin(run).stat().st_size < 2000
    line = _scan_subprocess(run)  # hashed the key for ever before
    assert str(_bin(run)) in line and "memo-shared" in line, line
    start = time.perf_counter()
    with pytest.raises(opdlens.CheckpointError, match=r"refused without loading: expanding its "
                       r"memo-shared objects would walk more than"):  # fmt: skip
        opdlens.open_run(run)
    assert time.perf_counter() - start < 5


BAD_PICKLES = {
    "deep-key": (lambda: _dict_with_key(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 100_000),
                 "refused without loading: it nests containers more than 256 deep"),
    "int-key": (lambda: _dict_with_key(pickle.BININT1 + b"\x07"),
                "it has a dictionary key that is a number or object, not a string"),
    "dict-from-arguments": (
        lambda: (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"collections\nOrderedDict\n"
                 + pickle.EMPTY_LIST + pickle.MARK + (pickle.BININT1 + b"\x01" + pickle.NONE
                 + pickle.TUPLE2) * 3 + pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE
                 + pickle.STOP),
        "it builds a dict or set from arguments, which hashes them"),
    "cut-short": (lambda: _dict_with_key(pickle.BINUNICODE + b"\xff\xff\x00\x00ab")[:-2],
                  "the file is truncated or still being written"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_hostile_pickle(bins, tmp_path, case):
    make, needle = BAD_PICKLES[case]
    run = _copy(bins, tmp_path)
    _torch_zip(_bin(run), make())
    start = time.perf_counter()
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(run)
    assert time.perf_counter() - start < 5
    assert str(_bin(run)) in str(e.value) and needle in str(e.value), str(e.value)
    scan_fails([run], str(_bin(run)), needle)


def test_random_bytes_are_not_a_pytorch_file(bins, tmp_path):
    run = _copy(bins, tmp_path)
    _bin(run).write_bytes(bytes(range(256)) * 8)
    for trust in (False, True):
        with pytest.raises(opdlens.CheckpointError, match=r"not a PyTorch file: .* this file "
                           r"starts 00 01 02 03 04 05 06 07"):  # fmt: skip
            opdlens.open_run(run, trust_pickle=trust)
    scan_fails([run], str(_bin(run)), "not a PyTorch file")
    # torch.save's legacy (pre-zip) format is still a PyTorch file.
    state = tiny_model("llama").state_dict()
    torch.save(state, _bin(run), _use_new_zipfile_serialization=False)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(opdlens.open_run(run).checkpoint(1).tensor(name), state[name])


def test_state_dict_entries_must_be_tensors(bins, tmp_path):
    run = _copy(bins, tmp_path)
    state = dict(tiny_model("llama").state_dict())
    state["provenance"] = {"made by": "a custom trainer"}
    torch.save(state, _bin(run))
    for trust in (False, True):  # skipped silently before
        with pytest.raises(opdlens.CheckpointError, match=r"entry 'provenance' is not a tensor "
                           r"\(found dict\)"):  # fmt: skip
            opdlens.open_run(run, trust_pickle=trust)
    scan_fails([run], str(_bin(run)), "entry 'provenance' is not a tensor")
