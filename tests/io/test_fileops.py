"""io.fileops: byte copies between files, with the kernel or by hand."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import opdlens.io.fileops as fileops


def _no_kernel_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    monkeypatch.setattr(fileops.os, "copy_file_range", refuse)
    monkeypatch.setattr(fileops, "_PIECE", 7)  # many partial reads


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_file_copies_every_byte_into_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: bool
) -> None:
    if not kernel:
        _no_kernel_copies(monkeypatch)
    data = os.urandom(1000)
    (tmp_path / "a").write_bytes(data)
    fileops.copy_file(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == data
    with pytest.raises(FileExistsError):  # never over an existing file
        fileops.copy_file(tmp_path / "a", tmp_path / "b")
