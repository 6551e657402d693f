"""Reading one tensor of a 1 GB checkpoint raises RSS by about that tensor, not the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROWS, COLS, N = 8192, 8192, 4  # four float32 tensors of 256 MiB: a 1 GiB checkpoint


def _write_big(path) -> None:
    nbytes = ROWS * COLS * 4
    header = {f"model.layers.{i}.mlp.up_proj.weight": {"dtype": "F32", "shape": [ROWS, COLS],
              "data_offsets": [i * nbytes, (i + 1) * nbytes]} for i in range(N)}  # fmt: skip
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = torch.full((ROWS // 8, COLS), 0.5).numpy().tobytes()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _ in range(N * 8):
            f.write(chunk)


@pytest.mark.slow
def test_one_tensor_read_rss(tmp_path):
    (tmp_path / "step_0").mkdir()
    (tmp_path / "step_1").mkdir()
    _write_big(tmp_path / "step_0" / "model.safetensors")
    os.link(tmp_path / "step_0" / "model.safetensors", tmp_path / "step_1" / "model.safetensors")
    script = textwrap.dedent(f"""
        import torch, opdlens
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        before = status("VmRSS:")
        run = opdlens.open_run({str(tmp_path)!r})
        t = run.checkpoint(1).tensor("model.layers.2.mlp.up_proj.weight")
        assert t.shape == ({ROWS}, {COLS}) and float(t[-1, -1]) == 0.5
        print(status("VmHWM:") - before, t.numel() * t.element_size())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grew, tensor_bytes = map(int, out.stdout.split())
    assert grew <= tensor_bytes + 100 * 2**20, f"RSS grew {grew / 2**20:.0f} MiB"
