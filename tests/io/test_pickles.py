"""Tests for io/pickles.py: hostile PyTorch pickles are refused fast with one line naming the file."""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoints import copy_run, same_weights_run, tiny_model
from cli_errors import scan_fails, scan_fails_in_child

import opdlens


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """A run of two pytorch_model.bin checkpoints, to copy and break."""
    return same_weights_run(tmp_path_factory.mktemp("bins"), "bin")


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
    run = copy_run(bins, tmp_path)
    _torch_zip(_bin(run), _shared_tuple_key())
    assert _bin(run).stat().st_size < 2000
    line = scan_fails_in_child(run)  # hashed the key for ever before
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
    run = copy_run(bins, tmp_path)
    _torch_zip(_bin(run), make())
    start = time.perf_counter()
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(run)
    assert time.perf_counter() - start < 5
    assert str(_bin(run)) in str(e.value) and needle in str(e.value), str(e.value)
    scan_fails([run], str(_bin(run)), needle)


def test_random_bytes_are_not_a_pytorch_file(bins, tmp_path):
    run = copy_run(bins, tmp_path)
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
    run = copy_run(bins, tmp_path)
    state = dict(tiny_model("llama").state_dict())
    state["provenance"] = {"made by": "a custom trainer"}
    torch.save(state, _bin(run))
    for trust in (False, True):  # skipped silently before
        with pytest.raises(opdlens.CheckpointError, match=r"entry 'provenance' is not a tensor "
                           r"\(found dict\)"):  # fmt: skip
            opdlens.open_run(run, trust_pickle=trust)
    scan_fails([run], str(_bin(run)), "entry 'provenance' is not a tensor")
