"""Run: names matched across wrappers, missing tensors, selection, pickling."""

from __future__ import annotations

import pytest
import torch
from checkpoints import small_state, write_state_dir

import opdlens
from opdlens.errors import OpdlensError, UnknownTensorError


def test_wrapper_prefixes_match_across_checkpoints(tmp_path):
    prefixes = {0: "", 1: "module.", 2: "_orig_mod.", 3: "module._orig_mod."}
    states = {s: small_state(s) for s in prefixes}
    for s, p in prefixes.items():
        write_state_dir(tmp_path / f"step_{s}", {p + k: v for k, v in states[s].items()},
                        layout="bin" if s % 2 else "safetensors")  # fmt: skip
    # multimodal wrapper: model.language_model.* is the same parameter as model.*
    mm = {k.replace("model.", "model.language_model.", 1): v for k, v in small_state(4).items()}
    write_state_dir(tmp_path / "step_4", mm)
    run = opdlens.open_run(tmp_path)
    assert run.missing == {} and run.warnings == []
    assert sorted(run.tensor_names) == sorted(small_state(0))
    name = "model.layers.0.mlp.down_proj.weight"
    for s in (1, 2, 3):
        torch.testing.assert_close(run.delta(name, s), states[s][name] - states[0][name])
    torch.testing.assert_close(run.delta(name, 4), small_state(4)[name] - states[0][name])


def test_missing_tensor_is_reported(tmp_path):
    for s in (0, 1, 2):
        st = small_state(s)
        if s == 1:
            del st["model.layers.0.mlp.down_proj.weight"]
        write_state_dir(tmp_path / f"checkpoint-{s}", st)
    run = opdlens.open_run(tmp_path)
    assert run.missing == {"model.layers.0.mlp.down_proj.weight": [1]}
    assert "model.layers.0.mlp.down_proj.weight" not in run.tensor_names
    assert any("down_proj.weight" in w and "[1]" in w for w in run.warnings)


def test_select_and_module(hf_run):
    run = opdlens.open_run(hf_run("llama", "safetensors"))
    chosen = run.select(["*.mlp.*", "lm_head.weight"])
    assert len(chosen) == 7 and all(".mlp." in n or n == "lm_head.weight" for n in chosen)
    assert run.select() == run.tensor_names
    assert run.checkpoint(4).dtype == "bfloat16"


def test_module_of_a_name_not_in_the_run_lists_close_names(tmp_path):
    for s in (0, 1):
        st = small_state(s)
        if s == 1:
            del st["model.norm.weight"]  # in the run, though missing at step 1
        write_state_dir(tmp_path / f"checkpoint-{s}", st)
    run = opdlens.open_run(tmp_path)
    assert run.module("model.norm.weight").block == "norm"
    typo = "model.layers.7.mlp.down_proj.weight"  # the demo has fewer layers
    with pytest.raises(UnknownTensorError, match=r"no tensor named 'model\.layers\.7\.mlp\.down_proj"
                       r"\.weight'; close names: 'model\.layers\.0\.mlp\.down_proj\.weight'"):  # fmt: skip
        run.module(typo)
    with pytest.raises(KeyError):  # also what `except KeyError` expects
        run.module(typo)
    with pytest.raises(OpdlensError, match="no tensor named 'zzz'; names look like 'model\\."):
        run.module("zzz")
    with pytest.raises(OpdlensError) as err:
        run.module("zzz")
    assert str(err.value).startswith("The run ")  # one plain line, not KeyError's repr()


def test_a_run_pickles_as_how_to_open_it(tmp_path):
    import pickle

    for s in (0, 1):
        write_state_dir(tmp_path / f"checkpoint-{s}", small_state(s))
    run = opdlens.open_run(tmp_path)
    data = pickle.dumps(run)
    assert len(data) < 1000  # the open arguments, not the weights or open files
    again = pickle.loads(data)
    assert again is not run and again.open_args == run.open_args
    assert pickle.loads(data) is again  # opened once per process
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(again.delta(name, 1), run.delta(name, 1))
    built = opdlens.Run(run.base, run.checkpoints, [])
    with pytest.raises(OpdlensError, match="built directly, not by open_run.*workers=1"):
        pickle.dumps(built)


def test_analyze_and_extrapolate_are_top_level_functions():
    import importlib

    analyze_module = importlib.import_module("opdlens.analysis.analyze")
    extrapolate_module = importlib.import_module("opdlens.extrapolation.extrapolate")
    assert opdlens.analyze is analyze_module.analyze
    assert opdlens.extrapolate is extrapolate_module.extrapolate
    assert not hasattr(opdlens.Run, "extrapolate")  # Run holds data; analyze is its one forward
