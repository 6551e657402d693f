"""Atomic, streaming safetensors checkpoint writer that holds at most one tensor in memory."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from opdlens.errors import CheckpointError, OpdlensError

from . import dtypes
from .fileops import copy_range as _copy_range  # one name tests patch
from .fileops import fsync_dir
from .paths import (
    MARKER,
    TEMP_MARKER,
    check_output,
    ensure_outside,
    first_missing,
    lock_temp_dir,
    marker_text,
    move_into_place,
    output_error,
    output_path,
    release_temp_dir,
    remove_empty,
    remove_stale,
    short_name,
    temp_name,
)
from .plan import (
    INDEX_FILE,
    Slot,
    TensorSpec,
    lay_out,
    split_by_size,
)
from .support_files import copy_support_files

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_FILE",
    "MARKER",
    "PROVENANCE_FILE",
    "TEMP_MARKER",
    "CheckpointWriter",
    "TensorSpec",
    "is_temp_dir",
]

PROVENANCE_FILE = "opdlens_provenance.json"

# Written bytes after which a background thread starts flushing them to disk, so the fsync
# that makes the checkpoint durable at the end does not wait for the whole file.
_FLUSH_EVERY = 256 * 1024 * 1024


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


class CheckpointWriter:
    """Write a safetensors checkpoint tensor by tensor into a temporary directory, then rename it.

    Use as a context manager: zero-filled files of the final size are created on entry, `write`
    streams each planned tensor to its place (in any order), and a clean exit writes the headers,
    the index, provenance and last the `.opdlens` marker, fsyncs everything and renames the
    temporary directory to `out_dir`. Until then every file starts with a zero header length,
    which safetensors refuses, so a killed write never leaves a loadable file. Any exception (or
    KeyboardInterrupt) removes the temporary directory, so `out_dir` is either complete or
    absent; temporary directories of dead processes beside `out_dir` are removed on entry.
    With `overwrite`, only a real directory holding the marker is replaced, never a symlink.
    """

    def __init__(
        self,
        out_dir: Path,
        plan: Mapping[str, Sequence[TensorSpec]] | Sequence[TensorSpec],
        *,
        metadata: Mapping[str, str] | None = None,
        copy_from: Path | None = None,
        protected: Sequence[Path] = (),
        max_shard_bytes: int | None = None,
        overwrite: bool = False,
    ) -> None:
        assert sys.byteorder == "little", "safetensors stores little-endian bytes"
        self.out_dir = output_path(out_dir)
        self.overwrite = overwrite
        self.copy_from = None if copy_from is None else Path(copy_from).expanduser().resolve()
        self._protected = [Path(p).expanduser().resolve() for p in protected]
        self.metadata = self._check_metadata(metadata)
        if isinstance(plan, Mapping):
            if max_shard_bytes is not None:
                raise ValueError(
                    "CheckpointWriter got both a shard mapping as 'plan' and 'max_shard_bytes'. "
                    "Pass a plain sequence of TensorSpec to split by size, or drop max_shard_bytes."
                )
            self.plan = {name: list(specs) for name, specs in plan.items()}
        else:
            self.plan = split_by_size(list(plan), max_shard_bytes)
        self._slots, self._headers, self._sizes = lay_out(self.plan, self.metadata)
        self._check_destination()
        if self.copy_from is not None and not self.copy_from.is_dir():
            raise OpdlensError(
                f"copy_from={self.copy_from} is not a directory. Pass the model directory whose "
                "config and tokenizer files the output should carry, or copy_from=None."
            )
        self._tmp: Path | None = None
        self._written: set[str] = set()
        self._handle: tuple[str, BinaryIO] | None = None
        self._unflushed = 0
        self._flushing: threading.Thread | None = None
        self._flush_error: OSError | None = None
        self._made: Path | None = None

    @staticmethod
    def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(metadata or {})
        bad = {k: type(v).__name__ for k, v in merged.items() if not isinstance(v, str)}
        if bad or not all(isinstance(k, str) for k in merged):
            raise ValueError(
                f"The 'metadata' parameter of CheckpointWriter must map str to str (safetensors "
                f"stores only strings). Got non-str values for {bad}; pass json.dumps(value)."
            )
        merged.setdefault("format", "pt")
        return merged

    def _check_destination(self) -> None:
        ensure_outside(self.out_dir, ())  # a symlink loop or dangling link is one line first
        for path in self._protected:
            for out in {self.out_dir, self.out_dir.resolve()}:
                if _inside(out, path) or _inside(path, out):
                    raise OpdlensError(
                        f"Refusing to write a checkpoint to {self.out_dir}: it overlaps the input "
                        f"{path}, which must never be modified. Choose an output directory "
                        "outside every input checkpoint."
                    )
        check_output(self.out_dir, overwrite=self.overwrite)

    def __enter__(self) -> CheckpointWriter:
        parent = self.out_dir.parent
        self._made = first_missing(parent)  # parents created here, removed again by _abort
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale(parent, re.escape(short_name(self.out_dir.name)))
            self._tmp = parent / temp_name(self.out_dir.name)
            self._tmp.mkdir()
            lock_temp_dir(self._tmp)  # so no other process's remove_stale takes it
            for file, size in self._sizes.items():
                with open(self._tmp / file, "wb") as f:
                    f.truncate(size)  # zeros: the header length stays 0 until _commit
        except BaseException as e:
            where = self._tmp or parent
            self._abort()
            if isinstance(e, OSError):
                raise output_error(where, e) from None
            raise
        logger.debug("writing %d tensors into %s", len(self._slots), self._tmp)
        return self

    def write(self, name: str, tensor: torch.Tensor | np.ndarray) -> None:
        """Write one planned tensor to its place in its shard file.

        A numpy array holds the stored bytes (bf16 and float8 as unsigned bit patterns, see
        `dtypes.storage`). Shape: any, equal to the planned shape.
        """
        slot = self._slot(name)
        spec = slot.spec
        if isinstance(tensor, np.ndarray):
            got = f"numpy {tensor.dtype}"
            fits = tensor.dtype == dtypes.storage(spec.stored)
        else:
            got = str(tensor.dtype).removeprefix("torch.")
            fits = tensor.dtype == dtypes.to_torch(spec.stored)
        if tuple(tensor.shape) != tuple(spec.shape) or not fits:
            raise ValueError(
                f"Tensor '{name}' was planned as shape {tuple(spec.shape)} "
                f"{dtypes.torch_name(spec.stored)}, got "
                f"shape {tuple(tensor.shape)} {got}. Cast or reshape it, or fix the plan."
            )
        if isinstance(tensor, np.ndarray):
            raw = np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)
        else:
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            raw = flat.view(dtypes.to_torch("U8")).numpy()
        assert raw.nbytes == slot.end - slot.begin
        try:
            handle = self._open(slot.file)
            handle.seek(slot.begin)
            handle.write(raw.data)
            self._done(name, handle, raw.nbytes)
        except OSError as e:
            raise output_error(self._tmp / slot.file, e) from None  # type: ignore[operator]

    def copy_bytes(self, name: str, source: Path, begin: int) -> None:
        """Write one planned tensor by copying its stored bytes from `source` at offset `begin`.

        Copies in the kernel where it can: no tensor is materialised in this process.
        """
        slot = self._slot(name)
        size = slot.end - slot.begin
        with open(source, "rb") as src:
            try:
                handle = self._open(slot.file)
                handle.flush()
                done = _copy_range(src, handle, begin, slot.begin, size)
            except OSError as e:
                raise output_error(self._tmp / slot.file, e) from None  # type: ignore[operator]
        if done != size:
            raise CheckpointError(
                f"{source}: tensor '{name}' is cut short ({done} of {size} bytes); the file is "
                "truncated or still being written."
            )
        self._done(name, handle, size)

    def extra_file(self, name: str) -> Path:
        """Where to write a further file (e.g. a CSV) that the checkpoint publishes with its weights."""
        if self._tmp is None:
            raise RuntimeError("CheckpointWriter.extra_file called outside its `with` block.")
        if Path(name).name != name or name in (*self.plan, INDEX_FILE, PROVENANCE_FILE, MARKER):
            raise ValueError(
                f"extra_file takes a bare file name the checkpoint does not already use; got "
                f"{name!r}. Pick another name, e.g. 'extrapolation_errors.csv'."
            )
        return self._tmp / name

    def _done(self, name: str, handle: BinaryIO, size: int) -> None:
        self._written.add(name)
        self._unflushed += size
        if self._unflushed < _FLUSH_EVERY:
            return
        if self._flushing is not None and self._flushing.is_alive():
            return
        handle.flush()
        fd = os.dup(handle.fileno())  # the thread's own descriptor: the handle may close first
        self._flushing = threading.Thread(target=self._flush, args=(fd,), daemon=True)
        self._flushing.start()
        self._unflushed = 0

    def _flush(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:
            self._flush_error = e
        finally:
            os.close(fd)

    def _slot(self, name: str) -> Slot:
        if self._tmp is None:
            raise RuntimeError("CheckpointWriter.write called outside its `with` block.")
        slot = self._slots.get(name)
        if slot is None:
            raise ValueError(
                f"Tensor '{name}' is not in the plan of this CheckpointWriter "
                f"({len(self._slots)} tensors). Add a TensorSpec for it to the plan."
            )
        if name in self._written:
            raise ValueError(f"Tensor '{name}' was already written; write each tensor once.")
        return slot

    def _open(self, file: str) -> BinaryIO:
        # One handle at a time: writes usually arrive shard by shard.
        if self._handle is not None and self._handle[0] == file:
            return self._handle[1]
        self._close_handle()
        assert self._tmp is not None
        handle = open(self._tmp / file, "r+b")  # noqa: SIM115
        self._handle = (file, handle)
        return handle

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle[1].close()
            self._handle = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._commit()
        except OSError as e:
            tmp = self._tmp
            self._abort()
            raise output_error(tmp or self.out_dir, e) from None
        except BaseException:
            self._abort()
            raise

    def _commit(self) -> None:
        assert self._tmp is not None
        self._close_handle()
        if self._flushing is not None:
            self._flushing.join()
        if self._flush_error is not None:
            raise self._flush_error
        missing = [name for name in self._slots if name not in self._written]
        if missing:
            raise OpdlensError(
                f"{len(missing)} planned tensors were never written to {self.out_dir}, e.g. "
                f"{missing[:3]}; nothing was saved. Write every planned tensor, or leave it out "
                "of the plan."
            )
        if len(self.plan) > 1:
            weight_map = {name: s.file for name, s in self._slots.items()}
            index = {
                "metadata": {"total_size": sum(s.spec.nbytes for s in self._slots.values())},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self._tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        warnings: list[str] = []
        if self.copy_from is not None:
            copy_support_files(self.copy_from, self._tmp, warnings)
        record = {**self.metadata, **({"warnings": warnings} if warnings else {})}
        (self._tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for file, header in self._headers.items():  # every tensor is in place: now loadable
            with open(self._tmp / file, "r+b") as f:
                f.write(header)
        operation = self.metadata.get("opdlens_operation", "checkpoint")
        (self._tmp / MARKER).write_text(marker_text(operation), encoding="utf-8")
        for path in self._tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(self._tmp)
        self._move_into_place()

    def _move_into_place(self) -> None:
        assert self._tmp is not None
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if not self.overwrite:
                raise OpdlensError(
                    f"Output directory {self.out_dir} appeared while the checkpoint was being "
                    "written. Choose a new directory, or pass overwrite=True to replace it."
                )
            self._check_destination()  # still a real directory with the marker, not a symlink
        move_into_place(self._tmp, self.out_dir)
        self._tmp = None
        logger.info("wrote checkpoint %s", self.out_dir)

    def _abort(self) -> None:
        self._close_handle()
        if self._tmp is not None and self._tmp.exists():
            try:
                shutil.rmtree(self._tmp)
                logger.debug("removed unfinished checkpoint %s", self._tmp)
            except OSError as e:  # its files are unloadable; the next run on this --out removes it
                logger.warning("could not remove the unfinished %s: %s", self._tmp, e)
        if self._tmp is not None:
            release_temp_dir(self._tmp)
        self._tmp = None
        remove_empty(self.out_dir.parent, self._made)


def is_temp_dir(path: Path) -> bool:
    """Whether a directory is the leftover of an unfinished (e.g. killed) CheckpointWriter."""
    return TEMP_MARKER in Path(path).name
