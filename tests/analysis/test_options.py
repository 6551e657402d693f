"""AnalyzeOptions: one options object, checked once, for the API, the writer and the workers."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
from planted import SMALL_CONFIG, small_states, write_state_run

import opdlens
from opdlens import AnalyzeOptions, OpdlensError, OptionError, open_run
from opdlens.analysis.write import write_analysis


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_state_run(tmp_path_factory.mktemp("options"), small_states(), SMALL_CONFIG)


def test_values_are_normalised_once_and_frozen() -> None:
    opts = AnalyzeOptions(ranks=[16, 4, 4, 1], tensors="*.mlp.*", workers=2)
    assert opts.ranks == (1, 4, 16) and opts.kmax == 16 and opts.tensors == ("*.mlp.*",)
    assert AnalyzeOptions(tensors=["a*", "b*"]).tensors == ("a*", "b*")
    assert AnalyzeOptions(workers=3).worker_count == 3 and AnalyzeOptions().worker_count >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.ranks = (2,)  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(opts)) == opts  # what a worker receives
    assert json.loads(json.dumps(opts.record()))["ranks"] == [1, 4, 16]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ranks": [0, 4]}, OptionError, r"'ranks' parameter of analyze .* Got \[0, 4\] instead"),
        ({"ranks": 4}, OptionError, r"'ranks' parameter of analyze .* Got 4 instead"),
        ({"ranks": [1.5]}, OptionError, r"'ranks' parameter of analyze must be positive integers"),
        ({"workers": 0}, OptionError, "'workers' parameter must be ≥ 1. Got 0 instead"),
        ({"workers": "many"}, OptionError, "'workers' parameter must be ≥ 1. Got many instead"),
        ({"executor": "dask"}, OptionError, "'executor' parameter must be 'local' or 'ray'"),
        ({"address": "ray://h:1"}, OptionError, "'address' parameter is for a Ray cluster"),
        ({"device": "tpu"}, OptionError, "'device' parameter must be 'cpu' or 'cuda'"),
    ],
)
def test_bad_values_fail_when_the_options_are_built(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        AnalyzeOptions(**kwargs)


def test_analyze_takes_options_and_keyword_overrides(run_root: Path) -> None:
    run = open_run(run_root)
    opts = AnalyzeOptions(ranks=(1, 4), workers=1)
    df = opdlens.analyze(run, opts)
    assert {"energy_k1", "energy_k4"} <= set(df.columns) and "energy_k16" not in df.columns
    pd.testing.assert_frame_equal(df, run.analyze(opts))
    pd.testing.assert_frame_equal(df, run.analyze(ranks=(1, 4), workers=1))
    # A keyword replaces that field of the options given, the others stay.
    assert set(opdlens.analyze(run, opts, ranks=(2,))["span"]) == {"cumulative"}
    assert "energy_k2" in opdlens.analyze(run, opts, ranks=(2,)).columns
    with_consecutive = opdlens.analyze(run, opts, consecutive=True)
    assert set(with_consecutive["span"]) == {"cumulative", "consecutive"}
    assert isinstance(df.attrs["warnings"], list)


def test_analyze_names_what_it_cannot_take(run_root: Path) -> None:
    run = open_run(run_root)
    with pytest.raises(OptionError, match=r"no option 'rank' \(did you mean 'ranks'\?\)"):
        opdlens.analyze(run, rank=(1,))
    with pytest.raises(OptionError, match=r"must be an AnalyzeOptions or None. Got tuple \(1, 4\)"):
        run.analyze((1, 4))  # type: ignore[arg-type]
    with pytest.raises(OpdlensError, match="--final 3 is not a saved step"):
        run.analyze(final=3, workers=1)
    with pytest.raises(OpdlensError, match="No tensor matches"):
        run.analyze(tensors=["nothing.*"], workers=1)


def test_the_writer_checks_the_run_before_creating_anything(run_root: Path, tmp_path: Path):
    run = open_run(run_root)
    for bad in ({"final": 3}, {"tensors": ("nothing.*",)}):
        with pytest.raises(OpdlensError):
            write_analysis(run, tmp_path / "out", AnalyzeOptions(workers=1, **bad))
        assert not (tmp_path / "out").exists()
    opts = AnalyzeOptions(ranks=(1, 4), workers=1, tensors=("*.mlp.*",))
    result, _ = write_analysis(run, tmp_path / "out", opts)
    assert result.options is opts
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["options"] == opts.record()  # every option, not only those passed
    assert prov["options"]["tensors"] == ["*.mlp.*"] and "progress" not in prov["options"]
