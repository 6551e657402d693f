"""release_freed_buffers: buffers of 1 MiB and more stay mapped on their own, so freeing returns them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        from opdlens._malloc import release_freed_buffers
        release_freed_buffers()
    libc.free(libc.malloc(8 << 20))  # mapped; freeing it raises glibc's own threshold to 8 MiB
    before = libc.mallinfo2().hblks  # buffers mapped on their own
    kept = libc.malloc(4 << 20)
    print(libc.mallinfo2().hblks - before)
    """
)


LIBC, VERSION = platform.libc_ver()
GLIBC_2_33 = LIBC == "glibc" and tuple(map(int, VERSION.split(".")[:2])) >= (2, 33)


@pytest.mark.skipif(not GLIBC_2_33, reason="mallopt and mallinfo2 (2.33) are glibc's")
def test_a_freed_large_buffer_no_longer_moves_the_threshold() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
    mapped = {}
    for mode in ("default", "tuned"):
        proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                              timeout=120, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        mapped[mode] = int(proc.stdout)
    # glibc alone puts a 4 MiB buffer on the heap after an 8 MiB one was freed (it would stay
    # there, freed); tuned, it is mapped on its own and goes back to the OS when freed.
    assert mapped == {"default": 0, "tuned": 1}
