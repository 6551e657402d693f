"""Tests for the list of non-weight files a model directory needs, and copying them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from opdlens.io.support_files import copy_support_files, is_support_file


@pytest.mark.parametrize(
    ("name", "needed"),
    [
        ("config.json", True),
        ("tokenizer_config.json", True),
        ("tokenizer.model", True),
        ("vocab.txt", True),
        ("configuration_qwen.py", True),  # remote code named in config.json's auto_map
        ("modeling_qwen.py", True),
        ("tokenization_qwen.py", True),
        ("model.safetensors", False),
        ("model.safetensors.index.json", False),
        ("trainer_state.json", False),
        ("optimizer.pt", False),
        ("train.py", False),
        ("my_config.json", False),
    ],
)
def test_which_files_a_model_directory_needs(name: str, needed: bool) -> None:
    assert is_support_file(name) is needed


def test_copies_files_not_directories_and_returns_their_names(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    for name in ["modeling_x.py", "modeling_y.py", "model.safetensors", "rng_state.pth"]:
        (src / name).write_text(name)
    # Code is copied only where auto_map names it (modeling_y.py is nobody's).
    (src / "config.json").write_text('{"auto_map": {"AutoModel": "modeling_x.X"}}')
    (src / "tokenizer.json").mkdir()  # a directory with a support file's name is no file to copy
    assert copy_support_files(src, dest) == ["config.json", "modeling_x.py"]
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "modeling_x.py"]
    assert (dest / "modeling_x.py").read_text() == "modeling_x.py"


def test_a_source_without_config_is_a_warning(tmp_path: Path, caplog) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "tokenizer.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="opdlens.io.support_files"):
        assert copy_support_files(src, dest) == ["tokenizer.json"]
    assert f"copy_from={src} has no config.json" in caplog.text
