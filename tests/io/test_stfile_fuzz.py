"""Random safetensors files: opdlens reads exactly what the safetensors library reads, or refuses.

Every example is written to disk and opened with `SafetensorsFile` (every tensor read) and with
`opdlens.open_run`. The only outcomes allowed are a read equal to the library's or a
CheckpointError; any other exception fails. opdlens may refuse a file the library accepts only
for one of its documented stricter rules (STRICTER).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

import opdlens
from opdlens.io import dtypes
from opdlens.io.stfile import SafetensorsFile

# Refusals of files the library accepts, each on purpose (see test_hostile_headers.py).
STRICTER = (
    "appears twice",  # duplicate keys: json would keep the last silently
    "a safetensors dtype opdlens cannot read",  # F4, C64, ...
    "not a safetensors dtype",  # a dtype written as {"F32": null}, which serde accepts
    "starting with '{'",  # leading whitespace
    "must be an object with dtype",  # an entry written as ["F32", [1], [0, 4]]
)
BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16,
        "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
        "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
        "C64": 64}  # fmt: skip
FLOATS = ("F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64")

names = st.sampled_from(["w", "b", "model.layers.0.mlp.up_proj.weight", "module.w", "", "é",
                         "a\nb", "\u0663"])  # fmt: skip
odd_names = st.sampled_from(["__metadata__", "\ud800", "x\udc00"])  # the library refuses surrogates
ours = st.sampled_from([d for d in BITS if dtypes.known(d)])
odd_dtypes = st.sampled_from([d for d in BITS if not dtypes.known(d)] + ["F33", "f32", ""])
# JSON number-ish tokens that a hostile header may put where a whole number belongs.
odd_numbers = st.sampled_from(["-1", "-0", "1.0", "1e2", "true", "null", '"4"', "Infinity", "NaN",
                               "1e999", str(2**64), str(2**64 - 1), "9" * 30])  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
# Ignored fields the library still refuses: out-of-range numbers, too deep, lone surrogates.
library_refuses = st.sampled_from(["Infinity", "-Infinity", "NaN", "1e400", "9" * 5000,
                                   "[" * 130 + "]" * 130, '"\\ud800"', "-"])  # fmt: skip
DAMAGE = ["shape", "offset", "shift", "dtype", "form", "extra", "missing", "name"]


@st.composite
def entry_texts(draw: st.DrawFn, name: str, at: int, damage: str) -> tuple[str, int]:
    """One `"name": {...}` entry starting at data offset `at`, maybe damaged; and its end."""
    dtype = draw(odd_dtypes if damage == "dtype" else ours)
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    nbits = math.prod(shape) * BITS.get(dtype, 32)
    end = at + nbits // 8
    key = json.dumps(draw(odd_names) if damage == "name" else name)
    shape_t, dtype_t, offs_t = json.dumps(shape), json.dumps(dtype), json.dumps([at, end])
    if damage == "shape" and shape:
        shape_t = "[" + ",".join([draw(odd_numbers), *map(str, shape[1:])]) + "]"
    elif damage == "offset":
        bad = draw(odd_numbers)
        offs_t = f"[{at},{bad}]" if draw(st.booleans()) else f"[{bad},{end}]"
    elif damage == "shift":
        d = draw(st.integers(-3, 3))
        offs_t = json.dumps([at + d, end + d])
    elif damage == "dtype" and draw(st.booleans()):
        dtype_t = draw(st.sampled_from(['{"F32":null}', "5", "null", '["F32"]']))
    elif damage == "form":
        return f"{key}:[{dtype_t},{shape_t},{offs_t}]", end
    elif damage == "extra":
        extra = draw(st.builds(json.dumps, json_values) | library_refuses)
        return (f'{key}:{{"dtype":{dtype_t},"x":{extra},"shape":{shape_t},'
                f'"data_offsets":{offs_t}}}', end)  # fmt: skip
    elif damage == "missing":
        return f'{key}:{{"dtype":{dtype_t},"shape":{shape_t}}}', end
    return f'{key}:{{"dtype":{dtype_t},"shape":{shape_t},"data_offsets":{offs_t}}}', end


FILE_DAMAGE = ["metadata", "duplicate", "lead", "trailing", "length", "truncate"]


@st.composite
def structured_files(draw: st.DrawFn) -> bytes:
    """Headers shaped like real ones: half intact, half with one fault (in an entry or the file)."""
    fault = draw(st.sampled_from(["none"] * 10 + DAMAGE + FILE_DAMAGE))
    keys = draw(st.lists(names, min_size=fault in DAMAGE, max_size=4, unique=True))
    faulty = draw(st.integers(0, len(keys) - 1)) if fault in DAMAGE else -1
    pieces, at = [], 0
    for i, name in enumerate(keys):
        text, at = draw(entry_texts(name, at, fault if i == faulty else "none"))
        pieces.append(text)
    if draw(st.booleans()) or fault == "metadata":
        good = ["null", "{}", '{"format":"pt"}']
        bad = ['{"a":1}', "1", "[]", '{"a":"1","a":"2"}', '{"a":["b"]}', '{"\\udc00":"x"}']
        meta = draw(st.sampled_from(bad if fault == "metadata" else good))
        pieces.insert(draw(st.integers(0, len(pieces))), f'"__metadata__":{meta}')
    if fault == "duplicate" and pieces:
        pieces.append(draw(st.sampled_from(pieces)))
    pieces = draw(st.permutations(pieces))
    lead = draw(st.sampled_from([" ", "\n", "\t"])) if fault == "lead" else ""
    text = lead + "{" + ",".join(pieces) + "}" + " " * draw(st.integers(0, 7))  # padding
    header = text.encode("utf-8", "surrogatepass")
    data = draw(st.binary(min_size=at, max_size=at))
    if fault == "trailing":
        data += draw(st.binary(min_size=1, max_size=4))
    n = len(header)
    if fault == "length":
        n += draw(st.sampled_from([-1, 1, 10**12, 2**63]))
    blob = struct.pack("<Q", n % 2**64) + header + data
    if fault == "truncate":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    return blob


def json_files() -> st.SearchStrategy[bytes]:
    """Any JSON at all as the header, with a little data."""
    return st.builds(
        lambda v, data: _frame(json.dumps(v).encode(), data), json_values, st.binary(max_size=16)
    )


def _frame(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


random_files = st.binary(max_size=64) | st.builds(
    _frame, st.binary(max_size=48), st.binary(max_size=16)
)


def _library(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), "np"):
            pass
    except Exception:
        return None
    try:
        return load_file(str(path))
    except Exception:  # dtypes torch cannot hold (F4, F6, C64, ...): opdlens refuses them
        return {}


def _check(blob: bytes, root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    step0 = root / "checkpoint-0"
    step0.mkdir(parents=True)
    path = step0 / "model.safetensors"
    path.write_bytes(blob)
    expected = _library(path)
    try:
        f = SafetensorsFile(path)
        keys = f.keys()
        got = {k: (f.entries[k], f.read_array(k)) for k in keys}
        floats = {k: f.read_float32(k) for k in keys if f.entries[k].stored in FLOATS}
    except opdlens.CheckpointError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
        if expected is not None:
            assert any(s in message for s in STRICTER), f"library accepts, opdlens: {message}"
        event("refused by opdlens only" if expected is not None else "refused by both")
        with pytest.raises(opdlens.CheckpointError):
            _open_run(root)
        return
    assert expected is not None, "opdlens read a file the safetensors library refuses"
    assert set(got) == set(expected)
    event(f"read, {min(len(got), 2)}+ tensors")
    for k, (entry, raw) in got.items():
        want = expected[k]
        assert entry.shape == tuple(want.shape) and entry.stored == dtypes.from_torch(want.dtype)
        assert raw.tobytes() == want.reshape(-1).view(torch.uint8).numpy().tobytes()
        if k in floats:
            np.testing.assert_array_equal(floats[k], want.float().numpy())
    try:
        run = _open_run(root)
    except opdlens.CheckpointError:
        return  # e.g. 'w' and 'module.w' name the same parameter; or no tensor to compare
    for name in run.tensor_names:
        run.checkpoint(1).tensor(name)


def _open_run(root: Path) -> opdlens.Run:
    step1 = root / "checkpoint-1"
    if not step1.exists():
        shutil.copytree(root / "checkpoint-0", step1)
    return opdlens.open_run(root)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(blob=structured_files())
def test_structured_headers(tmp_path_factory, blob):
    _check(blob, tmp_path_factory.getbasetemp() / "fuzz-structured")


@settings(FUZZ, max_examples=100)
@given(blob=json_files())
def test_any_json_header(tmp_path_factory, blob):
    _check(blob, tmp_path_factory.getbasetemp() / "fuzz-json")


@settings(FUZZ, max_examples=100)
@given(blob=random_files)
def test_random_bytes(tmp_path_factory, blob):
    _check(blob, tmp_path_factory.getbasetemp() / "fuzz-bytes")
