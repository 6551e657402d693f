"""Which files a checkpoint may read: regular files only, and index entries inside its directory.

Symlinks. A weight file found by its name (``model.safetensors``, ``pytorch_model.bin``, rank
files, adapters) may be a symlink to anywhere, as long as it resolves to a regular file: a
Hugging Face hub snapshot links every file into ``../../blobs/``, and whoever can place a
symlink in a checkpoint directory could place the file itself. FIFOs, devices, sockets and
directories are refused before they are opened (opening a FIFO blocks forever). An index's
``weight_map`` is data, often downloaded, so each of its values must be a plain file name in
the index's directory, and a shard that is a symlink must resolve inside that directory or
beside the index's own target (the hub's ``blobs/``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import CheckpointError, IncompleteCheckpointError

_MAX_INDEX = 100 * 1024 * 1024  # bytes; an index of 100k tensors is about 10 MB
_KINDS = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket",
}  # fmt: skip


def regular_file(path: Path) -> os.stat_result:
    """Stat ``path`` through symlinks and refuse anything but a regular file.

    Raises:
        CheckpointError: missing (or a dangling symlink), unreadable, or not a regular file.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = os.path.islink(path)
        raise CheckpointError(
            f"{path}: "
            + ("a symlink to a file that does not exist." if dangling else "no such file.")
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror}).") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise CheckpointError(
            f"{path}: is {kind}, expected a regular weight file; opdlens opens only regular files."
        )
    return st


def _plain_name(value: object, index: Path, key: str) -> str:
    if not isinstance(value, str):
        raise CheckpointError(
            f"{index}: weight_map['{key[:200]}'] is {json.dumps(value)[:80]}, expected a file name "
            "string."
        )
    bad = (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\0" in value
        or os.path.isabs(value)
    )
    if bad:
        raise CheckpointError(
            f"{index}: weight_map['{key[:200]}'] is {value[:200]!r}, expected a plain file name "
            "in the checkpoint directory (no path separators, no '..', not absolute)."
        )
    return value


def read_weight_map(index: Path) -> dict[str, str]:
    """Tensor key → shard file name of a ``*.index.json``, every value checked to be a plain name.

    Raises:
        CheckpointError: not a JSON object with an object ``weight_map`` of string values, or a
            value that is not a plain file name.
    """
    st = regular_file(index)
    if st.st_size > _MAX_INDEX:
        raise CheckpointError(
            f"{index}: {st.st_size} bytes, more than an index needs (limit {_MAX_INDEX}); "
            "the file is not a checkpoint index."
        )
    try:
        data = json.loads(index.read_bytes())
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{index}: not valid JSON ({type(e).__name__}); expected an object with a "
            "'weight_map' object."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        found = type(data.get("weight_map")).__name__ if isinstance(data, dict) else None
        raise CheckpointError(
            f"{index}: expected a JSON object with a 'weight_map' object; found "
            + (f"a {type(data).__name__}." if found is None else f"'weight_map' as {found}.")
        )
    return {k: _plain_name(v, index, k) for k, v in data["weight_map"].items()}


def index_shards(index: Path, suffix: str) -> list[str]:
    """The shard file names an index lists, each present, regular and inside the checkpoint.

    Raises:
        IncompleteCheckpointError: a listed shard is not there (yet).
        CheckpointError: see `read_weight_map`; a name without ``suffix``; a shard that is not a
            regular file, or a symlink resolving outside the checkpoint directory.
    """
    shards = sorted(set(read_weight_map(index).values()))
    odd = [s for s in shards if not s.endswith(suffix)]
    if odd:
        raise CheckpointError(
            f"{index}: the weight_map names '{odd[0][:200]}', expected {suffix} shard files."
        )
    missing = [s for s in shards if not os.path.lexists(index.parent / s)]
    if missing:
        raise IncompleteCheckpointError(
            f"{index.parent}: the index names {len(missing)} shard(s) that are not there "
            f"({', '.join(missing[:3])}); the checkpoint is incomplete or still being written."
        )
    home = index.parent.resolve()
    blobs = index.resolve().parent
    for s in shards:
        path = index.parent / s
        if path.is_symlink():
            target = path.resolve()
            if home not in target.parents and target.parent != blobs:
                raise CheckpointError(
                    f"{path}: a symlink to {target}, outside the checkpoint directory {home}; an "
                    "index may only name files inside it. Copy the shard in if it belongs there."
                )
        regular_file(path)
    return shards
