"""write_foresight: the files foresee writes, checked before any work, replaced only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import opdlens
from opdlens.analysis.foresight_write import FILES, write_foresight
from opdlens.errors import OpdlensError, OptionError


@pytest.fixture
def run(hf_run) -> opdlens.Run:
    return opdlens.open_run(
        hf_run("llama", dtype=torch.float32, steps=(0, 1, 2, 4, 8), trainer_files=False)
    )


def test_writes_every_file_and_returns_the_frame(run: opdlens.Run, tmp_path: Path) -> None:
    df, path = write_foresight(run, tmp_path / "out", anchor="previous", workers=1)
    assert path == tmp_path / "out"
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, ".opdlens"])
    pd.testing.assert_frame_equal(pd.read_parquet(path / "foresight.parquet"), df)
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["options"] == {"anchor": "previous", "workers": 1}
    assert [i["step"] for i in prov["inputs"]] == [0, 1, 2, 4, 8]
    assert set(prov["alpha_kind"]) == {"grid", "optimal", "effopd"}


def test_refuses_before_any_work_and_replaces_only_when_asked(
    run: opdlens.Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    write_foresight(run, out, workers=1)
    (out / "foresight.csv").write_text("stale")
    with pytest.raises(OpdlensError, match=r"already exists\. Choose a new directory, or pass"):
        write_foresight(run, out, workers=1)
    assert (out / "foresight.csv").read_text() == "stale"
    write_foresight(run, out, workers=1, overwrite=True)
    assert (out / "foresight.csv").read_text() != "stale"
    with pytest.raises(OptionError, match=r"'anchor' parameter of foresee"):
        write_foresight(run, tmp_path / "new", anchor="first")
    assert not (tmp_path / "new").exists()
