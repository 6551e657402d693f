"""Which checkpoints of a run are completely written: real trainer layouts, cut, grown, rotated."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import checkpoints
import pytest
import torch
from safetensors.torch import save_file

import opdlens.io.complete as complete
from opdlens.checkpoint import open_checkpoint
from opdlens.errors import CheckpointError
from opdlens.io.complete import Settling, complete_steps, incomplete_reason, snapshot

STRING_OFFSET = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}}'


def _claimed_size(path: Path) -> int:
    """8 + header length + the largest data_offsets end, read independently of opdlens."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return 8 + n + max(e["data_offsets"][1] for e in header.values())


def _poll_twice(run: Path) -> tuple[dict[int, Path], dict[int, str]]:
    settling = Settling()
    complete_steps(run, settling)
    return complete_steps(run, settling)


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """checkpoint-1 of two safetensors shards plus index, as save_pretrained names them."""
    checkpoints.write_state_dir(tmp_path / "run" / "checkpoint-1", checkpoints.small_state(0),
                                "sharded", {"model_type": "llama"})  # fmt: skip
    return tmp_path / "run"


def test_a_complete_sharded_checkpoint_settles_on_the_second_poll(sharded: Path) -> None:
    ck = sharded / "checkpoint-1"
    assert incomplete_reason(ck) is None
    settling = Settling()
    done, pending = complete_steps(sharded, settling)
    assert done == {} and "hold still" in pending[1]
    assert complete_steps(sharded, settling) == ({1: ck}, {})


def test_a_missing_shard_is_named(sharded: Path) -> None:
    (sharded / "checkpoint-1" / "model-00002-of-00002.safetensors").unlink()
    reason = incomplete_reason(sharded / "checkpoint-1")
    assert reason is not None and "model-00002-of-00002.safetensors" in reason
    assert _poll_twice(sharded) == ({}, {1: reason})


def test_shards_without_their_index_are_pending(sharded: Path) -> None:
    (sharded / "checkpoint-1" / "model.safetensors.index.json").unlink()
    reason = incomplete_reason(sharded / "checkpoint-1")
    assert reason is not None and "model.safetensors.index.json" in reason


def test_a_truncated_shard_gives_its_size_and_the_size_its_header_claims(sharded: Path) -> None:
    shard = sharded / "checkpoint-1" / "model-00002-of-00002.safetensors"
    claim = _claimed_size(shard)
    assert claim == shard.stat().st_size
    os.truncate(shard, claim - 7)
    reason = incomplete_reason(sharded / "checkpoint-1")
    assert reason is not None
    assert reason.startswith("checkpoint-1/model-00002-of-00002.safetensors")
    assert f"{claim - 7} bytes on disk" in reason and f"needs {claim}" in reason
    assert _poll_twice(sharded) == ({}, {1: reason})


def test_a_growing_shard_settles_only_once_it_stops(tmp_path: Path) -> None:
    ck = tmp_path / "run" / "checkpoint-3"
    ck.mkdir(parents=True)
    full = tmp_path / "full.safetensors"
    save_file({"model.norm.weight": torch.randn(4000)}, full)
    data = full.read_bytes()
    target = ck / "model.safetensors"
    settling = Settling()
    target.write_bytes(data[:5000])  # header written, tensor data still arriving
    done, pending = complete_steps(tmp_path / "run", settling)
    assert done == {} and "5000 bytes on disk" in pending[3]
    assert settling.settled(ck) is False  # first snapshot
    with open(target, "ab") as f:
        f.write(data[5000:12000])
    assert settling.settled(ck) is False  # it grew
    with open(target, "ab") as f:
        f.write(data[12000:])
    assert settling.settled(ck) is False  # it grew to full size: a change still
    assert settling.settled(ck) is True  # unchanged since the last call
    settling.forget(ck)
    assert settling.settled(ck) is False
    complete_steps(tmp_path / "run", settling)
    assert complete_steps(tmp_path / "run", settling) == ({3: ck}, {})


def test_a_rewrite_of_the_same_size_is_a_change(sharded: Path) -> None:
    ck = sharded / "checkpoint-1"
    settling = Settling()
    assert not settling.settled(ck)
    shard = ck / "model-00001-of-00002.safetensors"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not settling.settled(ck)
    assert settling.settled(ck)
    assert snapshot(ck)["model-00001-of-00002.safetensors"] == (
        st.st_size, st.st_mtime_ns + 1_000_000
    )  # fmt: skip


def test_a_trainer_checkpoint_waits_for_trainer_state(
    hf_run: Callable[..., Path], tmp_path: Path
) -> None:
    run = checkpoints.copy_run(hf_run("llama", "safetensors", steps=(0, 1)), tmp_path)
    state = (run / "checkpoint-1" / "trainer_state.json").read_bytes()
    (run / "checkpoint-1" / "trainer_state.json").unlink()
    settling = Settling()
    for _ in range(3):
        done, pending = complete_steps(run, settling)
        assert list(done) in ([], [0]) and "checkpoint-1/trainer_state.json" in pending[1]
    assert list(done) == [0]
    (run / "checkpoint-1" / "trainer_state.json").write_bytes(b"")  # opened, not yet written
    assert "trainer_state.json" in complete_steps(run, settling)[1][1]
    (run / "checkpoint-1" / "trainer_state.json").write_bytes(state)
    assert complete_steps(run, settling)[0] == {0: run / "checkpoint-0"}  # settling
    assert complete_steps(run, settling) == ({0: run / "checkpoint-0", 1: run / "checkpoint-1"}, {})


def test_a_checkpoint_dir_written_by_something_else_is_not_waited_on(sharded: Path) -> None:
    """No training_args.bin: not a Trainer's, so no trainer_state.json is expected."""
    assert not (sharded / "checkpoint-1" / "training_args.bin").exists()
    assert _poll_twice(sharded) == ({1: sharded / "checkpoint-1"}, {})


@pytest.fixture(scope="module")
def verl_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verl run of plain rank files (world 2) at steps 0 and 2."""
    root = tmp_path_factory.mktemp("verl-plain")
    return checkpoints.write_verl_run(root, steps=(0, 2), weights="plain")


def test_verl_steps_wait_for_latest_checkpointed_iteration(
    verl_plain: Path, tmp_path: Path
) -> None:
    run = checkpoints.copy_run(verl_plain, tmp_path)
    latest = run / "latest_checkpointed_iteration.txt"
    latest.unlink()
    done, pending = _poll_twice(run)
    assert done == {} and all("latest_checkpointed_iteration.txt" in r for r in pending.values())
    latest.write_text("0\n")
    done, pending = _poll_twice(run)
    assert done == {0: run / "global_step_0"}
    assert "names step 0, so step 2 is not done" in pending[2]
    latest.write_text("")  # opened, not yet written
    assert "not a step number" in str(incomplete_reason(run / "global_step_2"))
    latest.write_text("2")
    assert _poll_twice(run) == ({0: run / "global_step_0", 2: run / "global_step_2"}, {})
    assert incomplete_reason(run / "global_step_2", run_dir=run) is None


def test_a_missing_or_cut_verl_rank_file_is_named(verl_plain: Path, tmp_path: Path) -> None:
    run = checkpoints.copy_run(verl_plain, tmp_path)
    rank1 = run / "global_step_2" / "actor" / "model_world_size_2_rank_1.pt"
    data = rank1.read_bytes()
    rank1.unlink()
    assert "[1] are missing" in str(incomplete_reason(run / "global_step_2"))
    rank1.write_bytes(data[: len(data) // 2])
    reason = incomplete_reason(run / "global_step_2")
    assert reason is not None and "model_world_size_2_rank_1.pt" in reason
    assert "cut short or still being written" in reason
    rank1.write_bytes(data[:2])
    assert "not yet a torch.save file" in str(incomplete_reason(run / "global_step_2"))


def test_a_cut_pytorch_bin_is_pending(hf_run: Callable[..., Path], tmp_path: Path) -> None:
    run = checkpoints.copy_run(hf_run("llama", "bin-sharded", steps=(0, 1)), tmp_path)
    ck = run / "checkpoint-1"
    shard = sorted(ck.glob("pytorch_model-*.bin"))[-1]
    os.truncate(shard, shard.stat().st_size - 100)
    reason = incomplete_reason(ck)
    assert reason is not None and reason.startswith(f"checkpoint-1/{shard.name}")


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter per step on a tiny llama, as Trainer + peft save them."""
    root = tmp_path_factory.mktemp("peft")
    base = checkpoints.save_model(checkpoints.tiny_model("llama"), root / "base")
    return checkpoints.write_peft_run(root / "run", base, steps=(1, 2))


def test_a_lora_adapter_checkpoint(peft_run: Path, tmp_path: Path) -> None:
    run = checkpoints.copy_run(peft_run, tmp_path)
    assert _poll_twice(run) == ({1: run / "checkpoint-1", 2: run / "checkpoint-2"}, {})
    adapter = run / "checkpoint-2" / "adapter_model.safetensors"
    claim = _claimed_size(adapter)
    os.truncate(adapter, claim // 2)
    reason = incomplete_reason(run / "checkpoint-2")
    assert reason is not None and "adapter_model.safetensors" in reason
    assert f"needs {claim}" in reason
    (run / "checkpoint-1" / "adapter_config.json").unlink()  # peft writes it after the weights
    assert "no model weights found" in str(incomplete_reason(run / "checkpoint-1"))


def test_a_checkpoint_deleted_after_discover_gives_a_reason(
    sharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints.write_state_dir(sharded / "checkpoint-2", checkpoints.small_state(1), "sharded")
    real_discover = complete.discover

    def discover_then_rotate(run: Path) -> tuple[dict[int, Path], list[str]]:
        found = real_discover(run)
        shutil.rmtree(run / "checkpoint-1")  # save_total_limit rotation
        return found

    monkeypatch.setattr(complete, "discover", discover_then_rotate)
    settling = Settling()
    done, pending = complete_steps(sharded, settling)
    assert done == {} and "checkpoint-1: no such file or directory" in pending[1]
    assert "hold still" in pending[2]


def test_a_shard_deleted_mid_check_gives_a_reason(
    sharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = complete.SafetensorsFile

    def rotate_then_read(path: Path) -> object:
        shutil.rmtree(sharded / "checkpoint-1")
        return real(path)

    monkeypatch.setattr(complete, "SafetensorsFile", rotate_then_read)
    reason = incomplete_reason(sharded / "checkpoint-1")
    assert reason is not None and "model-00001-of-00002.safetensors" in reason
    assert snapshot(sharded / "checkpoint-1") == {}
    assert Settling().settled(sharded / "checkpoint-1") is False


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (struct.pack("<Q", 2**63) + b"{}", "header length 9223372036854775808"),
        (struct.pack("<Q", 10) + b"{not json}", "not valid JSON"),
        (struct.pack("<Q", 10) + b"not json!!", "expected a JSON object"),
        (struct.pack("<Q", 2**20) + b'{"w":', "header length 1048576 bytes, file 13 bytes"),
        (struct.pack("<Q", len(STRING_OFFSET)) + STRING_OFFSET + bytes(4), "data_offsets [0, \"4\"]"),
        (b"\x01\x02", "shorter than the 8-byte header"),
    ],
    ids=["huge-length", "not-json", "not-an-object", "length-past-end", "offset-string", "tiny"],
)  # fmt: skip
def test_a_hostile_header_gives_a_reason(tmp_path: Path, raw: bytes, words: str) -> None:
    ck = tmp_path / "run" / "step_5"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(raw)
    reason = incomplete_reason(ck)
    assert reason is not None and "step_5/model.safetensors" in reason and words in reason
    assert _poll_twice(tmp_path / "run") == ({}, {5: reason})


def test_only_headers_are_read(tmp_path: Path) -> None:
    """A 64 GiB (sparse) shard is judged in well under the time reading it would take."""
    ck = tmp_path / "run" / "checkpoint-1"
    ck.mkdir(parents=True)
    n = 16 << 30  # float32 elements
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path = ck / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * n)
    start = time.perf_counter()
    assert incomplete_reason(ck) is None
    assert time.perf_counter() - start < 5


def test_an_empty_or_missing_run_dir_has_no_steps(tmp_path: Path) -> None:
    settling = Settling()
    assert complete_steps(tmp_path / "not-yet", settling) == ({}, {})
    (tmp_path / "run").mkdir()
    assert complete_steps(tmp_path / "run", settling) == ({}, {})
    (tmp_path / "run" / "logs").mkdir()
    (tmp_path / "run" / "train.log").write_text("starting\n")
    assert complete_steps(tmp_path / "run", settling) == ({}, {})
    (tmp_path / "run" / "checkpoint-4").mkdir()  # created, nothing written yet
    done, pending = complete_steps(tmp_path / "run", settling)
    assert done == {} and "checkpoint-4: no model weights found" in pending[4]


def test_a_run_that_is_a_file_or_has_clashing_steps_is_an_error(sharded: Path) -> None:
    with pytest.raises(CheckpointError, match="expected a run directory, got a file"):
        complete_steps(sharded / "checkpoint-1" / "config.json", Settling())
    (sharded / "step_1").mkdir()
    with pytest.raises(CheckpointError, match="step 1 appears twice"):
        complete_steps(sharded, Settling())


def test_a_checkpoint_that_comes_back_settles_anew(sharded: Path, tmp_path: Path) -> None:
    """complete_steps forgets a rotated directory, so the same files reappearing start over."""
    settling = Settling()
    assert 1 in complete_steps(sharded, settling)[1]
    (sharded / "checkpoint-1").rename(tmp_path / "aside")  # rename keeps sizes and mtimes
    assert complete_steps(sharded, settling) == ({}, {})
    (tmp_path / "aside").rename(sharded / "checkpoint-1")
    assert "hold still" in complete_steps(sharded, settling)[1][1]
    assert complete_steps(sharded, settling) == ({1: sharded / "checkpoint-1"}, {})


@pytest.fixture(scope="module")
def every_layout(tmp_path_factory: pytest.TempPathFactory, verl_plain: Path, peft_run: Path,
                 verl_dtensor_runs: dict[str, Path]) -> dict[str, Path]:  # fmt: skip
    """A run of each layout tests/checkpoints.py writes, complete, with the steps it holds."""
    root = tmp_path_factory.mktemp("every-layout")
    runs = {"verl-plain": verl_plain, "peft-lora": peft_run,
            "verl-dtensor": verl_dtensor_runs["llama"]}  # fmt: skip
    for layout in checkpoints.LAYOUTS:
        runs[f"hf-{layout}"] = checkpoints.write_hf_run(root / layout, layout=layout, steps=(0, 1))
    runs["verl-hf"] = checkpoints.write_verl_run(root / "verl-hf", steps=(0, 2))
    for name, dirname in (("openrlhf-hf", "global_step{step}_hf"), ("named-step", "step_{step}"),
                          ("iter", "iter_{step}")):  # fmt: skip
        runs[name] = checkpoints.write_hf_run(
            root / name, steps=(0, 3), dirname=dirname, trainer_files=False
        )
    return runs


@pytest.mark.parametrize(
    "name",
    ["hf-safetensors", "hf-sharded", "hf-bin", "hf-bin-sharded", "verl-hf", "verl-plain",
     "verl-dtensor", "peft-lora", "openrlhf-hf", "named-step", "iter"],
)  # fmt: skip
def test_every_layout_analyze_reads_is_judged_complete(
    every_layout: dict[str, Path], name: str
) -> None:
    run = every_layout[name]
    done, pending = _poll_twice(run)
    assert pending == {} and len(done) >= 2
    for step, ck in done.items():
        assert open_checkpoint(ck, step, trust_pickle=False).source.files  # analyze opens it
