"""Load PyTorch pickles (.bin/.pt) as state dicts without running their code, in bounded time.

Before `torch.load(weights_only=True)` sees a file, its pickle opcodes are replayed on an
abstract stack that tracks only sizes: how many nodes each object has when fully expanded
(memo-shared tuples count every time they are referenced), how deep it nests, and whether it
is a string. A file whose pickle would make anything walk more than `_WORK_PER_BYTE` nodes per
byte, nest deeper than `_MAX_DEPTH`, or hash a key that is not a string is refused before any
object is built. `--trust-pickle` skips all of this: it runs the file's code anyway.
"""

from __future__ import annotations

import logging
import mmap
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import CheckpointError, PickleRefused, UnsafePickleError
from .weightfiles import regular_file

if TYPE_CHECKING:
    import torch

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys
_MAX_PICKLE = 256 * 1024 * 1024  # bytes of opcodes; a state dict needs about 120 per tensor
_MAX_DEPTH = 256  # container nesting; verl's DTensor rank files reach 16
_MAX_EXPANSION = 64 << 20  # bytes a stored view may span beyond its storage (zero strides)
_WORK_PER_BYTE = 64  # expanded nodes per pickle byte; measured 0.65 (tensors), 2.7 (DTensors)
# Callables that hash their arguments; they may only be called empty (dicts fill via SETITEMS).
_HASHING = {b"collections\nOrderedDict", b"collections\nCounter", b"builtins\nset"}

# The opcodes torch's weights_only unpickler implements (torch/_weights_only_unpickler.py).
_ATOM_ARG = {  # pushes one immutable non-string; argument bytes
    pickle.NONE[0]: 0, pickle.NEWTRUE[0]: 0, pickle.NEWFALSE[0]: 0, pickle.EMPTY_TUPLE[0]: 0,
    pickle.BININT[0]: 4, pickle.BININT1[0]: 1, pickle.BININT2[0]: 2, pickle.BINFLOAT[0]: 8,
}  # fmt: skip
_EMPTY = {pickle.EMPTY_LIST[0]: "list", pickle.EMPTY_DICT[0]: "dict", pickle.EMPTY_SET[0]: "set"}
_FIXED = {
    pickle.TUPLE1[0]: 1, pickle.TUPLE2[0]: 2, pickle.TUPLE3[0]: 3, pickle.REDUCE[0]: 2,
    pickle.NEWOBJ[0]: 2, pickle.BINPERSID[0]: 1,
}  # fmt: skip
_FIXED |= {pickle.SETITEM[0]: 2, pickle.APPEND[0]: 1, pickle.BUILD[0]: 1}
_MARKED = {pickle.TUPLE[0], pickle.SETITEMS[0], pickle.APPENDS[0]}
_GROWS = {pickle.SETITEM[0], pickle.SETITEMS[0], pickle.APPEND[0], pickle.APPENDS[0],
          pickle.BUILD[0]}  # fmt: skip
_TUPLES = {pickle.TUPLE[0], pickle.TUPLE1[0], pickle.TUPLE2[0], pickle.TUPLE3[0]}
_BINUNICODE, _SHORT_BINSTRING = pickle.BINUNICODE[0], pickle.SHORT_BINSTRING[0]
_LONG1 = pickle.LONG1[0]
_MARK, _PROTO, _GLOBAL, _STOP = pickle.MARK[0], pickle.PROTO[0], pickle.GLOBAL[0], pickle.STOP[0]
_STRINGS = {_BINUNICODE, _SHORT_BINSTRING}  # torch.load decodes SHORT_BINSTRING to str
_DICT_OPS, _BUILD = {pickle.SETITEM[0], pickle.SETITEMS[0]}, pickle.BUILD[0]
_CALLS = {pickle.REDUCE[0], pickle.NEWOBJ[0]}
_PUT = {pickle.BINPUT[0]: 1, pickle.LONG_BINPUT[0]: 4}
_GET = {pickle.BINGET[0]: 1, pickle.LONG_BINGET[0]: 4}
_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


class _Node:
    """What the abstract stack knows about one object."""

    __slots__ = ("size", "depth", "kind", "items")

    def __init__(self, size: int, depth: int, kind: str | bytes, items: int = 0) -> None:
        self.size = size  # nodes when fully expanded
        self.depth = depth
        self.kind = kind  # "str", "list", "dict", "set", "tuple", "obj", or a GLOBAL's name
        self.items = items  # direct children, for tuples


def _words(kind: str | bytes) -> str:
    words: dict[str | bytes, str] = {"str": "a string", "tuple": "a tuple", "list": "a list",
                                     "dict": "a dict", "set": "a set"}  # fmt: skip
    return words.get(kind, "a number or object")


def _state_ok(state: _Node) -> bool:
    # BUILD updates __dict__ from its state: a dict (keys checked), or a short tuple.
    return state.kind in ("dict", "obj") or (state.kind == "tuple" and state.items <= 4)


def _prescan(data: bytes | mmap.mmap, pos: int, limit: int) -> tuple[int, int]:
    """Replay the pickle at ``data[pos:]`` on an abstract stack; return (work, end position)."""
    stack: list[_Node] = []
    marks: list[int] = [0]  # marks[-1]: where the innermost MARK's items start
    memo: dict[int, _Node] = {}
    work = 0
    end = len(data)
    string, atom = _Node(1, 1, "str"), _Node(1, 1, "obj")
    while pos < end:
        code = data[pos]
        pos += 1
        if code in _PUT:
            if len(stack) <= marks[-1]:
                raise PickleRefused("its opcodes memoize from an empty stack")
            n = _PUT[code]
            memo[int.from_bytes(data[pos : pos + n], "little")] = stack[-1]
            pos += n
            continue
        if code in _GET:
            n = _GET[code]
            node = memo.get(int.from_bytes(data[pos : pos + n], "little"))
            if node is None:
                raise PickleRefused("its opcodes read a memo entry that was never stored")
            stack.append(node)
            pos += n
            continue
        if code in _STRINGS:
            n = 4 if code == _BINUNICODE else 1
            pos += n + int.from_bytes(data[pos : pos + n], "little")
            stack.append(string)
            continue
        if code in _ATOM_ARG:
            pos += _ATOM_ARG[code]
            stack.append(atom)
            continue
        if code == _MARK:
            marks.append(len(stack))
            continue
        if code == _PROTO:
            pos += 1
            continue
        if code == _LONG1:
            pos += 1 + (data[pos] if pos < end else 0)
            stack.append(atom)
            continue
        # Opcodes that consume stack items: take them (and, for some, the object they change).
        keys: list[_Node] = []
        target = None
        if code in _FIXED:
            n = _FIXED[code]
            if len(stack) - marks[-1] < n:
                raise PickleRefused("its opcodes pop an empty stack")
            items = stack[-n:]
            del stack[-n:]
        elif code in _MARKED:
            if len(marks) == 1:
                raise PickleRefused("its opcodes pop a MARK that was never pushed")
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
        elif code in _EMPTY:
            stack.append(_Node(1, 1, _EMPTY[code]))
            continue
        elif code == _GLOBAL:
            stop = data.find(b"\n", data.find(b"\n", pos) + 1)
            if stop < 0:
                raise PickleRefused("it is cut short inside an opcode", cut=True)
            stack.append(_Node(1, 1, bytes(data[pos:stop])))
            pos = stop + 1
            continue
        elif code == _STOP:
            if len(stack) <= marks[-1]:
                raise PickleRefused("its opcodes pop an empty stack")
            return work, pos
        else:
            name = _NAMES.get(code, f"byte {code:#04x}")
            raise PickleRefused(
                f"it uses the pickle opcode {name}, which weights_only loading refuses", True
            )
        if code in _GROWS:
            if len(stack) <= marks[-1]:
                raise PickleRefused("its opcodes change an object on an empty stack")
            target = stack[-1]
            if code in _DICT_OPS:
                if len(items) % 2:
                    raise PickleRefused("its SETITEMS has a key without a value")
                keys = items[0::2]
            elif code == _BUILD and not _state_ok(items[0]):
                raise PickleRefused(f"it sets an object's state from {_words(items[0].kind)}")
        size, depth = 0, 0
        for it in items:
            size += it.size
            if it.depth > depth:
                depth = it.depth
        for k in keys:
            if k.kind != "str":
                raise PickleRefused(
                    f"it has a dictionary key that is {_words(k.kind)}, not a string"
                )
        work += size
        if work > limit:
            raise PickleRefused(
                f"expanding its memo-shared objects would walk more than {limit} nodes, "
                f"{_WORK_PER_BYTE} per byte of pickle (torch.save of a state dict needs under 3)"
            )
        if depth >= _MAX_DEPTH:
            raise PickleRefused(f"it nests containers more than {_MAX_DEPTH} deep")
        if target is not None:
            target.size += size
            target.depth = max(target.depth, depth + 1)
            continue
        hashes = code in _CALLS and items[0].kind in _HASHING
        if hashes and items[1].size > 1:
            raise PickleRefused("it builds a dict or set from arguments, which hashes them")
        kind = "tuple" if code in _TUPLES else ("dict" if hashes else "obj")
        stack.append(_Node(1 + size, depth + 1, kind, len(items)))
    raise PickleRefused("it ends before its STOP opcode", cut=True)


def _scan_zip(path: Path) -> None:
    """Prescan the data.pkl that torch.load would unpickle, read with torch's own zip reader."""
    import torch

    try:
        reader = torch._C.PyTorchFileReader(str(path))
        if "data.pkl" not in reader.get_all_records():
            raise CheckpointError(
                f"{path}: a zip archive without data.pkl, so not a file torch.save wrote (a "
                "TorchScript model or another archive); save the state dict with torch.save."
            )
        size = _record_size(path)
        if size > _MAX_PICKLE:
            raise PickleRefused(f"its data.pkl is {size} bytes (limit {_MAX_PICKLE})")
        data = reader.get_record("data.pkl")
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: cannot read this PyTorch zip archive ({_first_line(e)}); it is truncated, "
            "corrupt or still being written."
        ) from None
    if len(data) != size:
        raise PickleRefused(
            f"its data.pkl is {len(data)} bytes where its zip directory says {size}"
        )
    _prescan(data, 0, _WORK_PER_BYTE * len(data) + 10**6)


def _record_size(path: Path) -> int:
    """The size of the data.pkl torch.load reads, from the zip's own central directory.

    torch's reader names records relative to the folder of the archive's first entry, and
    matches names case-insensitively; a name that matches twice is refused, since which copy
    torch would read is then not ours to know. (Works with every torch: `get_record_size` is
    not in all of them.)
    """
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise PickleRefused(
            f"its zip directory is unreadable ({_first_line(e)})", cut=True
        ) from None
    if not infos:
        raise PickleRefused("its zip archive is empty", cut=True)
    want = infos[0].filename.split("/", 1)[0].lower() + "/data.pkl"
    found = [i.file_size for i in infos if i.filename.lower() == want]
    if len(found) != 1:
        raise PickleRefused(f"its zip directory names data.pkl {len(found)} times")
    return found[0]


def _scan_legacy(f: IO[bytes]) -> None:
    """Prescan the pickles at the start of a legacy (pre-zip) torch.save file."""
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        budget = _WORK_PER_BYTE * min(len(m), _MAX_PICKLE) + 10**6
        pos = 0
        for _ in range(_LEGACY_PICKLES):
            work, pos = _prescan(m, pos, budget)
            budget -= work
            if pos > _MAX_PICKLE:
                raise PickleRefused(f"its pickles pass {_MAX_PICKLE} bytes")


def _is_legacy(head: bytes) -> bool:
    """Whether ``head`` starts with the pickle of torch's legacy magic number."""
    try:
        ops = []
        for op, arg, _ in pickletools.genops(head):
            ops.append((op.name, arg))
            if op.name == "STOP" or len(ops) >= 4:
                break
    except ValueError:
        return False
    return ops[-1][0] == "STOP" and ("LONG1", _LEGACY_MAGIC) in ops


def _not_torch(path: Path, head: bytes) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a PyTorch file: torch.save writes a zip archive (starting 'PK') or, before "
        "torch 1.6, a pickle of torch's magic number; this file starts "
        f"{head[:8].hex(' ') or 'empty'}. Point opdlens at the checkpoint's real weight files."
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _refusal(e: BaseException) -> str:
    """What torch's weights-only unpickler refused (the line naming the global), else line one.

    Its message opens with a paragraph about torch 2.6's default; the refused class or function
    is named further down, in a wording that changes across versions.
    """
    for line in str(e).splitlines():
        if re.search(r"\bGLOBAL\b|[Uu]nsupported", line):
            line = line.strip().removeprefix("WeightsUnpickler error: ")
            return re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")[:200]  # first sentence
    return _first_line(e)


def _check(path: Path, trust_pickle: bool) -> bool:
    """Refuse what is not a torch.save file or, untrusted, a hostile pickle; True for zip."""
    with open(path, "rb") as f:
        head = f.read(64)
        is_zip = head.startswith(_ZIP_MAGIC)
        if not is_zip and not _is_legacy(head):
            raise _not_torch(path, head)
        if trust_pickle:
            return is_zip
        try:
            _scan_zip(path) if is_zip else _scan_legacy(f)
        except PickleRefused as e:
            if e.unsafe:
                raise UnsafePickleError(
                    f"{path}: this pickle cannot be loaded safely ({e}). Only if you trust where "
                    "it came from, pass --trust-pickle (Python: trust_pickle=True)."
                ) from None
            why = "truncated or still being written" if e.cut else "corrupt or hostile"
            raise CheckpointError(
                f"{path}: refused without loading: {e}; the file is {why}."
            ) from None
    return is_zip


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object: str keys, tensor values; nothing else is walked."""
    import torch

    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "module"):  # trainer checkpoints, DeepSpeed model states
            inner = obj.get(wrapper) if wrapper in obj else None
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a state dict (a mapping of names "
            "to tensors)."
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if type(k) is not str:
            raise CheckpointError(
                f"{path}: a state dict key is a {type(k).__name__}, expected a string tensor name."
            )
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry '{k[:200]}' is not a tensor (found {type(v).__name__}); opdlens "
                "reads state dicts of tensors. Re-save only the tensors (torch.save({k: v for k, v "
                "in sd.items() if isinstance(v, torch.Tensor)}, path))."
            )
        _check_expansion(k, v, path)
        out[k] = v
    return out


def _check_expansion(name: str, t: torch.Tensor, path: Path) -> None:
    """Refuse a view whose zero or overlapping strides make it far larger than its storage.

    A pickled tensor is (storage, size, stride): `expand(20000, 20000)` of one float is a few
    bytes in the file and 1.6 GB once read. Views up to `_MAX_EXPANSION` bytes beyond their
    storage (e.g. a position_ids buffer expanded to (1, n)) are kept.
    """
    import torch

    local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: its shard on this rank
    if local.layout is not torch.strided:
        return  # sparse layouts hold their own index arrays, not strided views
    held = local.untyped_storage().nbytes()
    wanted = local.numel() * local.element_size()
    if wanted > held + _MAX_EXPANSION:
        raise CheckpointError(
            f"{path}: tensor '{name[:200]}' of shape {list(local.shape)} is a view with zero or "
            f"overlapping strides {list(local.stride())} of {held} stored bytes; reading it "
            f"would materialise {wanted} bytes (opdlens allows {_MAX_EXPANSION >> 20} MiB beyond "
            "the storage). The file is corrupt or hostile; re-save it with .contiguous() tensors."
        )


def load_pickle(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """torch.load a .bin/.pt with weights_only=True (zip memory-mapped); refuse what needs code.

    Raises:
        CheckpointError: not a torch.save file, corrupt, hostile (see the module docstring), or
            not a state dict of string names to tensors.
        UnsafePickleError: it needs code to load and `trust_pickle` is False.
    """
    import torch
    import torch.distributed.tensor  # noqa: F401  (registers DTensor for weights_only loads)

    regular_file(path)
    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    is_zip = _check(path, trust_pickle)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError as e:
            if not trust_pickle:
                raise UnsafePickleError(
                    f"{path}: this pickle cannot be loaded safely (weights_only=True refused it: "
                    f"{_refusal(e)}). Only if you trust where it came from, pass --trust-pickle "
                    "(Python: trust_pickle=True)."
                ) from None
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
    except (UnsafePickleError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001  (unpickling untrusted bytes: any error is the file's)
        raise CheckpointError(
            f"{path}: cannot read this PyTorch file ({type(e).__name__}: {_first_line(e)}); "
            "it is truncated, corrupt or still being written."
        ) from None
    return _state_dict(obj, path)
