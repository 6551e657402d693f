"""Tests for the atomic, streaming safetensors checkpoint writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from opdlens.errors import CheckpointError, OpdlensError
from opdlens.io import dtypes
from opdlens.io.plan import safetensors_dtype
from opdlens.io.writer import (
    INDEX_FILE,
    MARKER,
    PROVENANCE_FILE,
    TEMP_MARKER,
    CheckpointWriter,
    TensorSpec,
    is_temp_dir,
)


def _library_writes(dtype: torch.dtype) -> bool:
    """Whether save_file can write the reference: safetensors 0.4.3 has no uint16/32/64."""
    try:
        save({"t": torch.zeros(1, dtype=dtype)})
    except KeyError:  # 0.4.3 looks the dtype up in its table; any other error is a failure
        return False
    return True


_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint32,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]
ALL_DTYPES = [d for d in _DTYPES if _library_writes(d)]


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, 100, shape, generator=gen).to(dtype)


def _tensors() -> dict[str, torch.Tensor]:
    tensors = {
        f"t.{i}.{d}".replace("torch.", ""): _random((3, 5), d, i) for i, d in enumerate(ALL_DTYPES)
    }
    tensors["model.embed_tokens.weight"] = _random((64, 16), torch.bfloat16, 99)
    tensors["model.norm.weight"] = _random((16,), torch.float32, 98)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    return tensors


def _specs(tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(-1).view(torch.uint8), b[name].view(-1).view(torch.uint8))


def test_single_file_is_byte_identical_to_save_file(tmp_path: Path) -> None:
    tensors = _tensors()
    out = tmp_path / "out"
    with CheckpointWriter(out, _specs(tensors)) as writer:
        for name in reversed(list(tensors)):  # any order
            writer.write(name, tensors[name])
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.safetensors", PROVENANCE_FILE]
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    _assert_same(load_file(out / "model.safetensors"), tensors)


def _begin(path: Path, name: str) -> int:
    """Absolute offset of a tensor's bytes in a safetensors file, from its header."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    return 8 + header_len + json.loads(data[8 : 8 + header_len])[name]["data_offsets"][0]


def test_numpy_arrays_and_byte_copies_write_the_same_file(tmp_path: Path) -> None:
    """Stored bytes given as numpy arrays, or copied from another file, match save_file."""
    tensors = _tensors()
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with CheckpointWriter(out, _specs(tensors)) as writer:
        for i, (name, t) in enumerate(tensors.items()):
            if i % 2:
                stored = dtypes.from_torch(t.dtype)
                raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                writer.write(name, raw.view(dtypes.storage(stored)).reshape(t.shape))
            else:
                writer.copy_bytes(
                    name, tmp_path / "ref.safetensors", _begin(tmp_path / "ref.safetensors", name)
                )
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_copy_bytes_from_a_short_file_names_it(tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(b"\0" * 10)
    writer = CheckpointWriter(tmp_path / "out", [TensorSpec("w", (4,), "F32")])
    short = r"short.bin: tensor 'w' is cut short \(6 of 16"
    with pytest.raises(CheckpointError, match=short), writer:
        writer.copy_bytes("w", src, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.bin"]


def test_metadata_and_provenance(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(4, 4)}
    meta = {"opdlens_version": "0.1.0", "command": "opdlens extrapolate --alpha 2.0"}
    with CheckpointWriter(tmp_path / "out", _specs(tensors), metadata=meta) as writer:
        writer.write("w", tensors["w"])
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.metadata() == {**meta, "format": "pt"}
        assert torch.equal(f.get_tensor("w"), tensors["w"])
    provenance = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    assert provenance == {**meta, "format": "pt"}


def test_non_str_metadata_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'metadata' parameter .* must map str to str"):
        CheckpointWriter(tmp_path / "out", [], metadata={"alpha": 2.0})  # type: ignore[dict-item]


def test_explicit_shards_write_index(tmp_path: Path) -> None:
    tensors = _tensors()
    names = list(tensors)
    plan = {
        "model-00001-of-00002.safetensors": _specs({n: tensors[n] for n in names[:7]}),
        "model-00002-of-00002.safetensors": _specs({n: tensors[n] for n in names[7:]}),
    }
    out = tmp_path / "sharded"
    with CheckpointWriter(out, plan) as writer:
        for name in names[::2] + names[1::2]:
            writer.write(name, tensors[name])
    index = json.loads((out / INDEX_FILE).read_text())
    expected_map = {s.name: file for file, specs in plan.items() for s in specs}
    assert index["weight_map"] == expected_map
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    loaded = {}
    for file in plan:
        loaded.update(load_file(out / file))
    _assert_same(loaded, tensors)


def test_max_shard_bytes_splits_with_hf_names(tmp_path: Path) -> None:
    tensors = {f"layer.{i}.weight": torch.randn(8, 8) for i in range(5)}  # 256 bytes each
    out = tmp_path / "out"
    with CheckpointWriter(out, _specs(tensors), max_shard_bytes=600) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    weight_map = json.loads((out / INDEX_FILE).read_text())["weight_map"]
    assert [weight_map[n][:11] for n in tensors] == ["model-00001"] * 2 + ["model-00002"] * 2 + [
        "model-00003"
    ]
    loaded = {}
    for file in files:
        loaded.update(load_file(out / file))
    _assert_same(loaded, tensors)


def test_one_shard_under_cap_is_single_file(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(2, 2)}
    with CheckpointWriter(tmp_path / "o", _specs(tensors), max_shard_bytes=10**9) as writer:
        writer.write("w", tensors["w"])
    assert (tmp_path / "o" / "model.safetensors").exists()
    assert not (tmp_path / "o" / INDEX_FILE).exists()


def _write(out: Path, specs: list[TensorSpec], *items: tuple[str, torch.Tensor]) -> None:
    with CheckpointWriter(out, specs) as writer:
        for name, tensor in items:
            writer.write(name, tensor)


def test_write_checks_plan(tmp_path: Path) -> None:
    specs = [TensorSpec("w", (2, 3), torch.bfloat16)]
    bf16 = torch.bfloat16
    with pytest.raises(ValueError, match=r"planned as shape \(2, 3\) bfloat16, got shape \(3, 2\)"):
        _write(tmp_path / "a", specs, ("w", torch.zeros(3, 2, dtype=bf16)))
    with pytest.raises(ValueError, match=r"bfloat16, got shape \(2, 3\) float32"):
        _write(tmp_path / "b", specs, ("w", torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"bfloat16, got shape \(2, 3\) numpy float32"):
        _write(tmp_path / "b", specs, ("w", np.zeros((2, 3), np.float32)))
    with pytest.raises(ValueError, match="Tensor 'v' is not in the plan"):
        _write(tmp_path / "c", specs, ("v", torch.zeros(2, 3, dtype=bf16)))
    with pytest.raises(ValueError, match="'w' was already written"):
        _write(tmp_path / "c", specs, *[("w", torch.zeros(2, 3, dtype=bf16))] * 2)
    with pytest.raises(ValueError, match="appears twice in the plan"):
        CheckpointWriter(tmp_path / "d", specs + specs)
    with pytest.raises(ValueError, match="cannot store dtype torch.complex64"):
        safetensors_dtype(torch.complex64)
    assert not any(tmp_path.iterdir())


def test_missing_tensor_at_close_leaves_nothing(tmp_path: Path) -> None:
    specs = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (2,), torch.float32)]
    with pytest.raises(OpdlensError, match=r"1 planned tensors were never written .* \['b'\]"):
        _write(tmp_path / "out", specs, ("a", torch.ones(2)))
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_removes_temp_dir(tmp_path: Path) -> None:
    specs = [TensorSpec("a", (2,), torch.float32)]
    with pytest.raises(KeyboardInterrupt), CheckpointWriter(tmp_path / "out", specs) as writer:
        assert writer._tmp is not None and is_temp_dir(writer._tmp)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_and_protected(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "model.safetensors").write_bytes(b"precious")
    specs = [TensorSpec("a", (2,), torch.float32)]
    with pytest.raises(
        OpdlensError, match=r"already exists and opdlens did not write it \(no \.opdlens"
    ):
        CheckpointWriter(inp, specs)
    for out in (inp, inp / "sub", tmp_path):
        with pytest.raises(OpdlensError, match=f"overlaps the input {inp}"):
            CheckpointWriter(out, specs, protected=[inp], overwrite=True)
    assert (inp / "model.safetensors").read_bytes() == b"precious"


def test_overwrite_replaces_unprotected_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with CheckpointWriter(out, [TensorSpec("b", (1,), torch.float32)]) as w:
        w.write("b", torch.ones(1))
    (out / "stale.txt").write_text("old")  # a directory opdlens wrote: its marker says so
    with CheckpointWriter(out, [TensorSpec("a", (2,), torch.float32)], overwrite=True) as w:
        w.write("a", torch.ones(2))
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.safetensors", PROVENANCE_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_copy_from_copies_only_support_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    support = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "added_tokens.json",
    ]
    other = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
        "rng_state.pth",
    ]
    for name in support + other:
        (src / name).write_text(name)
    with CheckpointWriter(tmp_path / "out", [], copy_from=src, protected=[src]):
        pass
    got = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert got == sorted([*support, MARKER, "model.safetensors", PROVENANCE_FILE])
    assert (tmp_path / "out" / "config.json").read_text() == "config.json"
    assert load_file(tmp_path / "out" / "model.safetensors") == {}


def test_sigkill_leaves_only_marked_temp_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from opdlens.io.writer import CheckpointWriter, TensorSpec
        specs = [TensorSpec("a", (256, 256), torch.float32), TensorSpec("b", (4,), torch.float32)]
        with CheckpointWriter({str(out)!r}, specs) as writer:
            writer.write("a", torch.ones(256, 256))
            print("ready", flush=True)
            time.sleep(60)
            writer.write("b", torch.ones(4))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(f"out{TEMP_MARKER}{proc.pid}-")
    assert is_temp_dir(leftovers[0])


def test_peak_memory_is_about_one_tensor(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from opdlens.io.writer import CheckpointWriter, TensorSpec
        shape = (2048, 4096)  # bf16: 16 MiB each, 128 MiB in all
        specs = [TensorSpec(f"w.{i}", shape, torch.bfloat16) for i in range(8)]
        torch.full(shape, 0.0, dtype=torch.bfloat16)  # warm the allocator once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with CheckpointWriter(sys.argv[1], specs) as writer:
            for i, spec in enumerate(specs):
                writer.write(spec.name, torch.full(shape, float(i), dtype=torch.bfloat16))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    # A fixed mmap threshold stops glibc from keeping freed tensors, so RSS measures the writer.
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    }
    out = tmp_path / "big"
    run = subprocess.run(
        [sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    growth_mib = int(run.stdout) / 1024
    assert growth_mib < 3 * 16, f"peak RSS grew by {growth_mib:.0f} MiB writing 128 MiB"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_slice("w.7")[0, :2].tolist() == [7.0, 7.0]


def test_background_flushes_keep_the_file_exact(tmp_path: Path, monkeypatch) -> None:
    import opdlens.io.writer as writer_module

    flushed: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(writer_module, "_FLUSH_EVERY", 1024)
    monkeypatch.setattr(writer_module.os, "fdatasync", lambda fd: (flushed.append(fd), real(fd)))
    tensors = _tensors()
    with CheckpointWriter(tmp_path / "out", _specs(tensors), max_shard_bytes=600) as writer:
        for name, t in tensors.items():
            writer.write(name, t)
    assert flushed  # the threshold was crossed, so data went to disk while writing went on
    got = {}
    for f in sorted((tmp_path / "out").glob("*.safetensors")):
        got |= load_file(f)
    _assert_same(got, tensors)


def test_a_failed_background_flush_fails_the_write(tmp_path: Path, monkeypatch) -> None:
    import opdlens.io.writer as writer_module

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer_module, "_FLUSH_EVERY", 8)
    monkeypatch.setattr(writer_module.os, "fdatasync", broken)
    tensors = {"a": torch.ones(64), "b": torch.ones(64)}
    writer = CheckpointWriter(tmp_path / "out", _specs(tensors))
    with pytest.raises(OSError, match="Input/output error"), writer:
        for name, t in tensors.items():
            writer.write(name, t)
    assert list(tmp_path.iterdir()) == []


def test_byte_copies_fall_back_to_reads_where_the_kernel_cannot(
    tmp_path: Path, monkeypatch
) -> None:
    import errno

    import opdlens.io.fileops as fileops

    def cross_device(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fileops.os, "copy_file_range", cross_device)
    monkeypatch.setattr(fileops, "_PIECE", 7)  # many partial reads
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(10, dtype=torch.int64)}
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    with CheckpointWriter(tmp_path / "out", _specs(tensors)) as writer:
        for name in tensors:
            writer.copy_bytes(
                name, tmp_path / "ref.safetensors", _begin(tmp_path / "ref.safetensors", name)
            )
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "ref.safetensors"
    ).read_bytes()
