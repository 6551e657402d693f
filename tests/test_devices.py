"""opdlens.devices: device names, CUDA out-of-memory as one line, and no tensor on a default device."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "analysis"))

import checkpoints  # noqa: E402
from planted import RANKS, STEPS, planted  # noqa: E402

import opdlens  # noqa: E402
from opdlens.cli import app  # noqa: E402
from opdlens.devices import check_device, ieee_float32, out_of_memory_as_error  # noqa: E402
from opdlens.errors import OptionError, ResourceError  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dev")
    return checkpoints.write_hf_run(root, "llama", STEPS, dtype=torch.bfloat16, update=planted,
                                    trainer_files=False)  # fmt: skip


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu", "cpu:0", torch.device("cpu")])
def test_cpu_names(value) -> None:
    assert check_device(value) == "cpu"


@pytest.mark.parametrize(
    "value", ["gpu", "cuda:", "cuda:x", "cuda:٣", "cpu:1", "mps", "", "cuda:0:1"]
)
def test_bad_names_are_option_errors(value) -> None:
    with pytest.raises(OptionError, match="'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"):
        check_device(value)


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_says_so(value) -> None:
    with pytest.raises(OptionError, match="torch sees no CUDA device here.*use --device cpu"):
        check_device(value)


def test_out_of_memory_becomes_one_line_and_other_errors_pass() -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
    want = r"^tensor 'w': the GPU ran out of memory \(CUDA out of memory. Tried to allocate 2.00 GiB\)\. Use fewer --workers"
    with pytest.raises(ResourceError, match=want) as e, out_of_memory_as_error("tensor 'w'"):
        raise oom
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="other"), out_of_memory_as_error("x"):
        raise RuntimeError("other")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_out_of_memory_in_a_worker_is_one_line_from_the_cli(
    run_root, tmp_path, monkeypatch, workers
) -> None:
    from opdlens.analysis import sweep

    real = sweep.TensorSweep._factors

    def factors(self, *args, **kwargs):
        if self.name.endswith("mlp.down_proj.weight"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sweep.TensorSweep, "_factors", factors)
    res = CliRunner().invoke(app, ["analyze", str(run_root), "--out", str(tmp_path / "m"),
                                   "--workers", workers, "-q"])  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "mlp.down_proj.weight': the GPU ran out of memory" in lines[0]
    assert "fewer --workers" in lines[0] and "--device cpu" in lines[0]


def test_no_tensor_is_made_on_the_default_device(run_root, tmp_path) -> None:
    """With torch's default device set to 'meta', every command gives the numbers it gives
    without: what opdlens computes lives on the data's (or the asked-for) device."""
    from opdlens.extrapolation.ablate import ablate
    from opdlens.extrapolation.surgery import surgery_lowrank

    def score(path: Path) -> float:
        return float(len(str(path)) % 3)

    def everything(tag: str):
        run = opdlens.open_run(run_root)
        df = opdlens.analyze(run, ranks=RANKS, consecutive=True, workers=1, device="cpu")
        fs = opdlens.foresee(run, workers=1, device="cpu")
        ab = ablate(run, 4, score, mode="drop", ranks=[1, 2], device="cpu")
        low = surgery_lowrank(run, 4, 2, tmp_path / f"low-{tag}", device="cpu")
        return df, fs, ab.rank_curve, low

    want = everything("plain")
    # The context manager, not set_default_device(None) after: on torch 2.6 that leaves a
    # state in which torch.get_default_device() raises, which broke later tests there.
    with torch.device("meta"):
        got = everything("meta")
    assert torch.get_default_device() == torch.device("cpu")
    # read back outside: safetensors 0.4.3's load_file makes its tensors on the default device
    got, want = ([*r[:3], checkpoints.st_state(r[3])] for r in (got, want))
    pd.testing.assert_frame_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1], want[1])
    np.testing.assert_allclose(got[2]["energy_k"], want[2]["energy_k"])
    assert got[3].keys() == want[3].keys()
    for name in want[3]:
        assert torch.equal(got[3][name], want[3][name]), name


NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")  # torch ≥ 2.9: per backend


def _precision() -> str:
    """The float32 matmul setting as opdlens sets it: 'ieee' (per backend) or 'highest'."""
    if NEW_API:
        return torch.backends.cuda.matmul.fp32_precision
    return torch.get_float32_matmul_precision()


def _recording(seen: list[str], real):
    """`real`, appending to `seen` the float32 matmul setting each call runs under."""

    def wrapped(*args, **kwargs):
        seen.append(_precision())
        return real(*args, **kwargs)

    return wrapped


@pytest.fixture
def tf32_user():
    """A training script's setting (the legacy call, what Trainer(tf32=True) makes), undone after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


def test_ieee_float32_sets_full_precision_and_puts_the_users_back(tf32_user) -> None:
    import threading

    def worker() -> None:  # enters and leaves while the outer block holds: nothing is restored
        with ieee_float32():
            seen.append(_precision())

    seen: list[str] = []
    with ieee_float32():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen.append(_precision())
        x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close((x @ x.T).double(), x.double() @ x.double().T, atol=1e-4, rtol=0)
    assert len(seen) == 2 and set(seen) <= {"ieee", "highest"}
    # The legacy readings still work (mixing torch's two APIs would make them raise).
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 is True


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has one global precision")
def test_ieee_float32_keeps_a_per_backend_setting() -> None:
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        with ieee_float32():
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def test_analyze_compare_and_live_run_in_ieee_float32(run_root, tf32_user, monkeypatch) -> None:
    """Inside every worker's sweep and every measurement the products are IEEE float32, and the
    user's TF32 setting is back afterwards."""
    import opdlens.analysis.compare as compare_mod
    import opdlens.analysis.executors as executors

    seen: list[str] = []
    monkeypatch.setattr(executors, "sweep_tensor", _recording(seen, executors.sweep_tensor))
    monkeypatch.setattr(compare_mod, "compare_tensor", _recording(seen, compare_mod.compare_tensor))
    run = opdlens.open_run(run_root)
    for workers in (1, 2):
        opdlens.analyze(run, ranks=(1,), workers=workers, base_geometry=True)
        opdlens.compare(run, run, ranks=(1,), workers=workers)
    assert len(seen) > 8 and set(seen) <= {"ieee", "highest"}
    assert torch.get_float32_matmul_precision() == "high"


def test_a_ray_task_computes_in_ieee_float32(run_root, tf32_user, monkeypatch) -> None:
    """The body each Ray task runs, here in this process in place of Ray's workers: IEEE float32
    inside (a Ray worker is reused, the user's tasks among them), the user's setting after."""
    import opdlens.analysis.executors as executors

    analyze_mod = importlib.import_module("opdlens.analysis.analyze")  # not the function

    seen: list[str] = []
    monkeypatch.setattr(executors, "sweep_tensor", _recording(seen, executors.sweep_tensor))
    find_spec = importlib.util.find_spec  # Ray itself is not needed (a lean venv has none)

    def ray_found(name: str, *args: object) -> object:
        return find_spec("os" if name == "ray" else name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", ray_found)
    monkeypatch.setattr(analyze_mod, "ray_session", lambda options: contextlib.nullcontext())
    monkeypatch.setattr(
        executors,
        "iter_ray",
        lambda job, names, address: map(executors._ray_task, [job] * len(names), names),
    )
    got = opdlens.analyze(opdlens.open_run(run_root), ranks=(1,), executor="ray")
    assert len(seen) == got["tensor"].nunique() > 2 and set(seen) <= {"ieee", "highest"}
    assert torch.get_float32_matmul_precision() == "high"
