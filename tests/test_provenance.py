"""Provenance: versions, the command, every input file with a fingerprint, options as JSON."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from checkpoints import small_state, write_state_dir

import opdlens
from opdlens import provenance


def _run(root: Path) -> opdlens.Run:
    for s in (0, 2):
        write_state_dir(root / f"checkpoint-{s}", small_state(s), layout="sharded")
    return opdlens.open_run(root)


def test_a_fingerprint_follows_the_bytes_size_and_mtime_not_the_path(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    ck = run.checkpoint(2)
    first = provenance.fingerprint(ck)
    assert len(first) == 40 and provenance.fingerprint(ck) == first
    copy = Path(shutil.copytree(ck.path, tmp_path / "copy"))  # copy2 keeps the mtimes
    assert provenance.fingerprint(opdlens.open_run(checkpoints={2: copy}, base=run.base.path)
                                  .checkpoint(2)) == first  # fmt: skip
    shard = ck.files[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last byte of a weight: same size
    shard.write_bytes(data)
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert provenance.fingerprint(ck) != first


def test_record_is_json_with_inputs_versions_and_options(tmp_path: Path, monkeypatch) -> None:
    run = _run(tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["opdlens", "analyze", str(tmp_path / "run")])
    rec = provenance.record(run, {"out": tmp_path / "out", "ranks": [1, 4]}, note="x")
    again = json.loads(json.dumps(rec))  # JSON-ready as it is
    assert again["command"] == f"opdlens analyze {tmp_path / 'run'}"
    assert (
        again["options"] == {"out": str(tmp_path / "out"), "ranks": [1, 4]} and again["note"] == "x"
    )
    assert again["versions"]["opdlens"] == opdlens.__version__
    assert set(again["versions"]) == {
        "opdlens",
        "python",
        "torch",
        "numpy",
        "pandas",
        "safetensors",
    }
    inputs = again["inputs"]
    assert [i["step"] for i in inputs] == [0, 2]
    assert {i["layout"] for i in inputs} == {"hf-safetensors-sharded"}
    files = inputs[1]["files"]
    assert [Path(f["path"]).name for f in files] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    ]  # fmt: skip
    assert all(f["bytes"] == Path(f["path"]).stat().st_size for f in files)
    assert provenance.record(None, {})["inputs"] == []


def test_write_results_writes_each_table_and_then_the_provenance(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"step": pd.array([1, 2], dtype="Int64"), "x": [0.5, float("nan")]})
    schedule = pd.DataFrame({"k": [1], "alpha": [0.25]})
    seen: list[bool] = []

    def prov() -> dict[str, object]:
        seen.append((tmp_path / "main.parquet").is_file() and (tmp_path / "sched.csv").is_file())
        return {"rows": len(df), "path": tmp_path}

    provenance.write_results(tmp_path, {"main": df, "sched": schedule}, prov, csv_only={"sched"})
    assert seen == [True]  # the function runs once, after every table is in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "main.csv", "main.parquet", "provenance.json", "sched.csv"
    ]  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "main.parquet"), df)
    assert (tmp_path / "main.csv").read_text() == "step,x\n1,0.5\n2,\n"
    assert pd.read_csv(tmp_path / "sched.csv").to_dict("list") == {"k": [1], "alpha": [0.25]}
    assert json.loads((tmp_path / "provenance.json").read_text()) == {
        "rows": 2, "path": str(tmp_path)
    }  # fmt: skip


def test_checkpoint_record_is_flat_text_for_safetensors_metadata() -> None:
    meta = provenance.checkpoint_record(
        "surgery-scale", step=5, factor=repr(0.1), source=Path("/a")
    )
    assert meta == {
        "opdlens_operation": "surgery-scale", "opdlens_version": opdlens.__version__,
        "step": "5", "factor": "0.1", "source": "/a",
    }  # fmt: skip


def test_content_hash_of_a_cut_weight_file_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    ck = run.checkpoint(2)
    before = provenance.content_hash(ck)
    assert provenance.content_hash(ck) == before
    shard = ck.files[-1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 4)
    with pytest.raises(opdlens.CheckpointError, match="is cut short"):  # cut after opening
        provenance.content_hash(ck)
