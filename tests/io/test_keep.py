"""io.keep: a kept candidate is renamed into place, replacing only a directory opdlens kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdlens.errors import OutputError
from opdlens.io.keep import keep_candidate, kept
from opdlens.io.paths import MARKER, marker_text


def _candidate(path: Path, payload: str) -> Path:
    path.mkdir()
    (path / MARKER).write_text(marker_text("replay"))
    (path / "model.safetensors").write_text(payload)
    return path


def test_keep_moves_a_candidate_into_place_and_replaces_one_opdlens_kept(tmp_path: Path) -> None:
    dest = tmp_path / "step-4-candidate-1"
    assert kept(dest, "replay") is False
    keep_candidate(_candidate(tmp_path / "tmp-1", "first"), dest, "replay")
    assert (dest / "model.safetensors").read_text() == "first" and kept(dest, "replay")
    keep_candidate(_candidate(tmp_path / "tmp-2", "second"), dest, "replay")
    assert (dest / "model.safetensors").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4-candidate-1"]


@pytest.mark.parametrize("foreign", ["directory", "file", "symlink"])
def test_keep_refuses_what_opdlens_did_not_write(tmp_path: Path, foreign: str) -> None:
    dest = tmp_path / "step-4-candidate-1"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    if foreign == "directory":
        dest.mkdir()
        (dest / "notes.txt").write_text("keep me")
    elif foreign == "file":
        dest.write_text("keep me")
    else:
        dest.symlink_to(mine, target_is_directory=True)
    tmp = _candidate(tmp_path / "tmp-1", "candidate")
    with pytest.raises(OutputError, match=f"^{dest} exists and opdlens did not write it"):
        keep_candidate(tmp, dest, "replay")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert (tmp / "model.safetensors").read_text() == "candidate"  # the candidate is not lost
    if foreign == "directory":
        assert (dest / "notes.txt").read_text() == "keep me"
