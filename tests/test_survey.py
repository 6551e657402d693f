"""survey/describe: a run's checkpoints as records and a DataFrame, and what a partial run lacks."""

from __future__ import annotations

from pathlib import Path

import torch
from checkpoints import small_state, write_state_dir

import opdlens
from opdlens.survey import describe, describe_frame, survey


def _run(root: Path, steps=(0, 1, 5)) -> Path:
    for s in steps:
        state = small_state(s)
        if s == 5:
            state = {k: v.to(torch.bfloat16) if v.ndim == 2 else v for k, v in state.items()}
        write_state_dir(root / f"checkpoint-{s}", state)
    return root


def test_describe_counts_what_each_checkpoint_holds(tmp_path: Path) -> None:
    root = _run(tmp_path / "run")
    d = describe(opdlens.open_run(root))
    assert d["base"]["step"] == 0 and [c["step"] for c in d["checkpoints"]] == [1, 5]
    numel = sum(t.numel() for t in small_state(0).values())  # 40 + 16 + 24 + 4
    last = d["checkpoints"][-1]
    assert (last["num_tensors"], last["num_params"]) == (4, numel)
    assert last["dtype"] == "bfloat16" and d["base"]["dtype"] == "float32"  # by parameter count
    assert last["bytes"] == (root / "checkpoint-5" / "model.safetensors").stat().st_size
    assert (d["num_common_tensors"], d["missing_tensors"], d["missing"]) == (4, {}, None)
    df = describe_frame(opdlens.open_run(root))
    assert df["step"].tolist() == [0, 1, 5] and df["bytes"].dtype == "int64"
    assert df.to_dict("records")[1:] == d["checkpoints"]


def test_a_run_without_a_base_lists_what_it_has_and_how_to_complete_it(tmp_path: Path) -> None:
    root = _run(tmp_path / "run", steps=(1, 5))
    d = survey(root)
    assert d["base"] is None and [c["step"] for c in d["checkpoints"]] == [1, 5]
    assert d["num_common_tensors"] == 4
    assert d["missing"] == (
        "base (step 0) — pass --base PATH pointing at the model the run started from"
    )
    assert describe_frame(d)["step"].tolist() == [1, 5]
    complete = survey(root, base=root / "checkpoint-1")  # any model directory may be the base
    assert complete["missing"] is None and complete["base"]["path"] == str(root / "checkpoint-1")
