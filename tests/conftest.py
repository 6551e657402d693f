"""Shared fixtures: tiny training runs written once per test session in real trainer layouts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import checkpoints` from any test directory

import checkpoints  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked gpu where torch sees no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs CUDA; torch {torch.__version__} sees no CUDA device")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _quiet_libraries() -> None:
    for name in ("transformers", "peft", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick demo's runs (`generate_runs(quick=True)`), trained once per session, with
    the watch of the first OPD run that `opdlens demo` keeps beside them (its `watch/`).

    Read them in place; copy them (`checkpoints.copy_demo`) where a test writes beside them.
    """
    from opdlens.demo import generate_runs

    out = tmp_path_factory.mktemp("quick-demo") / "runs"
    generate_runs(out, quick=True, progress=False, watch=out.parent / "watch")
    return out


@pytest.fixture(scope="session")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """hf_run(arch, layout, **kw) → root of a Trainer-style run (cached per arguments)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "llama", layout: str = "safetensors", **kw: object) -> Path:
        key = (arch, layout, tuple(sorted(kw.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{arch}-{layout}")
            cache[key] = checkpoints.write_hf_run(root, arch, layout=layout, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def verl_dtensor_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """verl runs whose weights are only DTensor rank files (W=2, one gloo spawn for all).

    "llama": vocab 101, so the embedding and head split unevenly (51 + 50 rows);
    "mixtral": transformers' in-memory state dict, with stacked 3-D expert tensors.
    """
    jobs: list = []
    out = {
        "llama": checkpoints.write_verl_run(
            tmp_path_factory.mktemp("verl-dt-llama"), "llama", weights="dtensor", jobs=jobs,
            vocab_size=101,
        ),
        "mixtral": checkpoints.write_verl_run(
            tmp_path_factory.mktemp("verl-dt-mixtral"), "mixtral", weights="dtensor", jobs=jobs
        ),
    }  # fmt: skip
    checkpoints.write_fsdp_rank_files(jobs, 2, dtensor=True)
    return out
