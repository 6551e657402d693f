"""Where tensors are computed: one check of a device name, CUDA set up before worker threads,
and a CUDA out-of-memory turned into a one-line error."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._workers import SharedSetting
from .errors import OptionError, ResourceError

_DEVICE = re.compile(r"(cpu|cuda)(?::([0-9]{1,3}))?", re.ASCII)
_prepared: set[str] = set()
_lock = threading.Lock()


def check_device(value: object, param: str = "device") -> str:
    """The device as a canonical string ('cpu', 'cuda:N'), checked against this machine.

    Accepts 'cpu', 'cuda', 'cuda:N' or a torch.device; plain 'cuda' becomes the current CUDA
    device, so every worker and every result names the same one.

    Raises:
        OptionError: not a device name, or a CUDA device this machine does not have.
    """
    text = str(getattr(value, "value", value))  # a CLI choice (str Enum) or a torch.device
    m = _DEVICE.fullmatch(text.strip().lower())
    if m is None or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise OptionError(
            f"The '{param}' parameter must be 'cpu', 'cuda' or 'cuda:N'. Got {text!r} instead."
        )
    if m.group(1) == "cpu":
        return "cpu"
    import torch  # only when a GPU is asked for: options stay torch-free otherwise

    if not torch.cuda.is_available():
        raise OptionError(
            f"--{param} {text} was asked for, but torch sees no CUDA device here (torch "
            f"{torch.__version__}: a CPU-only build, or no driver); use --device cpu."
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if m.group(2) is None else int(m.group(2))
    if index >= count:
        raise OptionError(
            f"--{param} {text}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}; pick one of those."
        )
    return f"cuda:{index}"


def prepare(device: str) -> None:
    """Initialise CUDA and its linear-algebra libraries in this thread, once per device.

    torch loads its CUDA solvers lazily on the first call; worker threads that make that first
    call together race on it ('lazy wrapper should be called at most once'). Call this in the
    main thread before any worker starts. A no-op for the CPU.
    """
    if not device.startswith("cuda"):
        return
    with _lock:
        if device in _prepared:
            return
        import torch

        with torch.cuda.device(device):
            a = torch.eye(4, dtype=torch.float64, device=device) + 0.5
            for dtype in (torch.float32, torch.float64):
                x = a.to(dtype)
                torch.linalg.qr(x)
                torch.linalg.svd(x)
                torch.linalg.svdvals(x)
                torch.linalg.eigh(x @ x.T)
                torch.linalg.eigvalsh(x @ x.T)
                x @ x
            torch.cuda.synchronize(device)
        _prepared.add(device)


_precision = SharedSetting()


@contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matrix products in IEEE float32 inside the block, as they were set afterwards.

    A training script's `torch.set_float32_matmul_precision("high")` or `Trainer(tf32=True)`
    lets CUDA round a float32 product's inputs to TF32's 10 bits (and "medium" lets a CPU's
    oneDNN use bfloat16): opdlens' certificates and accuracy contract assume IEEE float32, and
    its live measurement runs inside such processes. The first caller in sets it, the last one
    out restores it (worker threads nest).
    """
    with _precision.held(_set_ieee):
        yield


def _set_ieee() -> Callable[[], None]:
    """Set IEEE float32 products; returns what puts the setting found back.

    torch ≥ 2.9 keeps a setting per backend (`fp32_precision`), and reading the legacy flags
    after the new ones are set raises, so the per-backend values are saved and put back where
    they exist; older torch has one global precision.
    """
    import torch

    backends = [b for b in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
                if b is not None and hasattr(b, "fp32_precision")]  # fmt: skip
    if not backends:
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        return lambda: torch.set_float32_matmul_precision(before)
    saved = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = "ieee"

    def undo() -> None:
        for b, value in zip(backends, saved, strict=True):
            b.fp32_precision = value

    return undo


@contextmanager
def out_of_memory_as_error(what: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory inside the block into a one-line ResourceError about `what`."""
    try:
        yield
    except Exception as e:
        if not _is_cuda_oom(e):
            raise
        first = (str(e).strip().splitlines() or ["out of memory"])[0][:200]
        raise ResourceError(
            f"{what}: the GPU ran out of memory ({first}). Use fewer --workers (each worker holds "
            "a few float32 copies of its largest tensor on the GPU), free the GPU, or use "
            "--device cpu."
        ) from None


def _is_cuda_oom(e: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")  # an OOM can only come from a torch that is loaded
    if torch is None:
        return False
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return oom is not None and isinstance(e, oom)
