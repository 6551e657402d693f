"""Hostile safetensors headers: each refused in one line naming the file (and tensor), never read.

Every case states whether the safetensors library itself refuses the same bytes; where it does
not, opdlens is deliberately stricter (duplicate keys, dtypes it cannot read, non-canonical
encodings of an entry) and says why.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from cli_errors import scan_fails
from safetensors import safe_open
from safetensors.numpy import save_file
from typer.testing import CliRunner

import opdlens
from opdlens.cli import app
from opdlens.io.stfile import MAX_TENSORS, SafetensorsFile

# ruff: noqa: UP031  (%-formatting keeps the braces of these JSON headers readable)

W = '"dtype":"F32","shape":[1],"data_offsets":[0,4]'
DEEP = 100_000

# name: (header JSON text, data bytes, words in the message, the library refuses it too: None
# where the safetensors releases opdlens supports differ)
# fmt: off
CASES: dict[str, tuple[str, int, list[str], bool | None]] = {
    "metadata-int": ('{"__metadata__":1,"w":{%s}}' % W, 4, ["__metadata__", "1"], True),
    "metadata-list": ('{"__metadata__":["a"],"w":{%s}}' % W, 4, ["__metadata__"], True),
    "metadata-value": ('{"__metadata__":{"a":1},"w":{%s}}' % W, 4, ["__metadata__"], True),
    "offsets-negative": ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', 4,
                         ["'w'", "[-4, 0]"], True),
    "offsets-overlap": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                        '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8,
                        ["'b'", "overlaps"], True),
    "offsets-gap": ('{"a":{%s},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' % W, 12,
                    ["'b'", "gap after 4"], True),
    "data-not-covered": ('{"w":{%s}}' % W, 8, ["4 bytes after the last tensor"], True),
    "offsets-strings": ('{"w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}', 4,
                        ["'w'", '["0", "4"]'], True),
    "offsets-floats": ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4.0]}}', 4,
                       ["'w'", "[0.0, 4.0]"], True),
    "offsets-bools": ('{"w":{"dtype":"F32","shape":[0],"data_offsets":[false,false]}}', 0,
                      ["'w'", "[false, false]"], True),
    "offsets-infinity": ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}}', 4,
                         ["'w'", "Infinity"], True),
    "offsets-5000-digits": ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,%s]}}' % ("9" * 5000),
                            4, ["not valid JSON"], True),
    "shape-floats": ('{"w":{"dtype":"F32","shape":[64.9,32.2],"data_offsets":[0,8192]}}', 8192,
                     ["'w'", "[64.9, 32.2]"], True),
    "shape-bools": ('{"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', 4,
                    ["'w'", "[true]"], True),
    "shape-negative": ('{"w":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}}', 16,
                       ["'w'", "[-2, -2]"], True),
    "shape-overflow": ('{"w":{"dtype":"U8","shape":[4611686018427387904,8,0],"data_offsets":[0,0]}}',
                       0, ["'w'", "too large"], True),
    "dtype-unknown": ('{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}', 4,
                      ["'w'", '"F33"', "not a safetensors dtype"], True),
    "deep-nesting": ('{"w":{%s,"x":%s}}' % (W, "[" * DEEP + "]" * DEEP), 4, ["not valid JSON"],
                     True),
    "duplicate-key": ('{"w":{%s},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' % W, 8,
                      ["'w' appears twice"], True),
    "not-an-object": ("[]", 0, ["starting with '{'"], True),
    "lone-surrogate": ('{"\\ud800":{%s}}' % W, 4, ["the safetensors library refuses it"], True),
    # opdlens is stricter than the library in the cases below, on purpose.
    "duplicate-key-identical": ('{"w":{%s},"w":{%s}}' % (W, W), 4, ["'w' appears twice"], False),
    "duplicate-metadata-key": ('{"__metadata__":{"a":"1","a":"2"},"w":{%s}}' % W, 4,
                               ["'a' appears twice"], False),
    "leading-space": (' {"w":{%s}}' % W, 4, ["starting with '{'"], False),
    "dtype-library-only": ('{"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', 8,
                           ["'w'", '"C64"', "opdlens cannot read"], None),  # 0.4.3 refuses C64
    "dtype-as-object": ('{"w":{"dtype":{"F32":null},"shape":[1],"data_offsets":[0,4]}}', 4,
                        ["'w'", "not a safetensors dtype"], False),
    "entry-as-array": ('{"w":["F32",[1],[0,4]]}', 4, ["'w'", "must be an object"], False),
}
# fmt: on


def write_raw(path: Path, header: str | bytes, data: bytes | int = b"") -> Path:
    """A safetensors file with exactly this header text and data section."""
    h = header.encode() if isinstance(header, str) else header
    body = bytes(data) if isinstance(data, int) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)
    return path


def library_refuses(path: Path) -> bool:
    try:
        with safe_open(str(path), "np"):
            return False
    except Exception:
        return True


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("base") / "checkpoint-0"
    d.mkdir()
    save_file({"w": np.ones(1, dtype=np.float32)}, str(d / "model.safetensors"))
    return d


def _run_with(base: Path, tmp_path: Path, header: str | bytes, data: bytes | int) -> Path:
    run = tmp_path / "run"
    (run / "checkpoint-0").mkdir(parents=True)
    (run / "checkpoint-0" / "model.safetensors").write_bytes(
        (base / "model.safetensors").read_bytes()
    )
    return write_raw(run / "checkpoint-1" / "model.safetensors", header, data)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_header_is_refused_in_one_line(base, tmp_path, case):
    header, data, words, library_too = CASES[case]
    path = _run_with(base, tmp_path, header, data)
    if library_too is not None:  # None: the safetensors releases opdlens supports differ
        assert library_refuses(path) == library_too
    with pytest.raises(opdlens.CheckpointError) as e:
        SafetensorsFile(path)
    message = str(e.value)
    assert "\n" not in message
    for w in [str(path), *words]:
        assert w in message, message
    with pytest.raises(opdlens.CheckpointError, match="corrupt|dtype|truncated"):
        opdlens.open_run(path.parent.parent)
    scan_fails(path.parent.parent, str(path), *words)


def test_header_above_the_library_limit_is_refused_unread(tmp_path):
    # 100,000,001 header bytes (sparse: zeros on disk) with room for them in the file.
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001 + 8)
    assert library_refuses(path)
    with pytest.raises(opdlens.CheckpointError, match=r"header length 100000001 bytes is above the "
                       r"100000000 bytes safetensors allows"):  # fmt: skip
        SafetensorsFile(path)


def test_header_with_too_many_values_is_refused_before_parsing(tmp_path):
    # One legal tensor and a 6 MB array of zeros beside it: millions of JSON values to build.
    header = '{"w":{%s,"x":[%s0]}}' % (W, "0," * (16 * MAX_TENSORS))
    path = write_raw(tmp_path / "model.safetensors", header, 4)
    start = time.perf_counter()
    with pytest.raises(
        opdlens.CheckpointError,
        match=rf"{re.escape(str(path))}: .*more than the {16 * MAX_TENSORS}",
    ):
        SafetensorsFile(path)
    assert time.perf_counter() - start < 1.0  # a count of bytes, no parse


def _empty_entries(n: int) -> str:
    e = '"dtype":"F32","shape":[0],"data_offsets":[0,0]'
    return "{" + ",".join(f'"t{i}":{{{e}}}' for i in range(n)) + "}"


@pytest.mark.slow
def test_more_tensors_than_the_limit_are_refused(tmp_path):
    path = write_raw(tmp_path / "model.safetensors", _empty_entries(MAX_TENSORS + 1))
    assert not library_refuses(path)  # legal, but no real file holds that many
    with pytest.raises(opdlens.CheckpointError, match=rf"{MAX_TENSORS + 1} tensors in one "
                       rf"safetensors file, more than the {MAX_TENSORS}"):  # fmt: skip
        SafetensorsFile(path)


@pytest.mark.slow
def test_largest_legal_header_parses_in_linear_time(tmp_path):
    path = write_raw(tmp_path / "model.safetensors", _empty_entries(MAX_TENSORS))
    start = time.perf_counter()
    f = SafetensorsFile(path)
    took = time.perf_counter() - start
    assert len(f.keys()) == MAX_TENSORS and f.entries["t7"].shape == (0,)
    # About 3 s on one busy core; quadratic work in the entry count would take minutes.
    assert took < 30, took


def test_extra_tensors_give_one_warning_line(base, tmp_path):
    extra = {f"extra.{i}.weight": np.zeros(0, dtype=np.float32) for i in range(3000)}
    run = tmp_path / "run"
    for step in (0, 1):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / "checkpoint-0" / "model.safetensors").write_bytes(
        (base / "model.safetensors").read_bytes()
    )
    save_file({"w": np.ones(1, dtype=np.float32), **extra},
              str(run / "checkpoint-1" / "model.safetensors"))  # fmt: skip
    r = opdlens.open_run(run)
    assert len(r.missing) == 3000
    assert len(r.warnings) == 1, r.warnings
    assert r.warnings[0].startswith("3000 tensors are missing at some steps and left out of the "
                                    "analysis, e.g. 'extra.")  # fmt: skip
    result = CliRunner().invoke(app, ["scan", str(run)])
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "3000 tensors are missing" in warned[0], result.stderr


def test_metadata_null_and_padding_are_accepted(tmp_path):
    # What safetensors writers produce: no metadata (null) and a space-padded header.
    path = write_raw(tmp_path / "m.safetensors", '{"__metadata__":null,"w":{%s}}   ' % W,
                     struct.pack("<f", 1.5))  # fmt: skip
    f = SafetensorsFile(path)
    assert f.metadata == {} and f.read_array("w").tolist() == [1.5]
