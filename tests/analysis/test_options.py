"""AnalyzeOptions: one options object, checked once, for the API, the writer and the workers."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from opdlens import AnalyzeOptions, CompareOptions, OptionError


def test_values_are_normalised_once_and_frozen() -> None:
    opts = AnalyzeOptions(ranks=[16, 4, 4, 1], tensors="*.mlp.*", workers=2)
    assert opts.ranks == (1, 4, 16) and opts.kmax == 16 and opts.tensors == ("*.mlp.*",)
    assert AnalyzeOptions(tensors=["a*", "b*"]).tensors == ("a*", "b*")
    assert AnalyzeOptions(ranks=np.array([4, 1])).ranks == (1, 4)  # numpy integers are whole
    assert CompareOptions(ranks=np.arange(1, 3)).ranks == (1, 2)
    with pytest.raises(OptionError, match=r"'ranks' parameter of compare .* Got \[4\.0\]"):
        CompareOptions(ranks=[4.0])  # the one check, named by its caller
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
        ({"ranks": [4.0]}, OptionError, r"'ranks' parameter of analyze .* Got \[4\.0\] instead"),
        ({"ranks": [True]}, OptionError, r"'ranks' parameter of analyze .* Got \[True\] instead"),
        ({"ranks": []}, OptionError, r"'ranks' parameter of analyze .* Got \[\] instead"),
        ({"workers": 0}, OptionError, "'workers' parameter must be ≥ 1. Got 0 instead"),
        ({"workers": "many"}, OptionError, "'workers' parameter must be ≥ 1. Got many instead"),
        ({"executor": "dask"}, OptionError, "'executor' parameter must be 'local' or 'ray'"),
        ({"address": "ray://h:1"}, OptionError, "'address' parameter is for a Ray cluster"),
        ({"device": "tpu"}, OptionError, "'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cuda:x"}, OptionError, "'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cpu:1"}, OptionError, "'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_bad_values_fail_when_the_options_are_built(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        AnalyzeOptions(**kwargs)
