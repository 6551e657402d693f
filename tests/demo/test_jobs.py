"""demo.jobs: the post-training runs are seeded jobs, the same inline and in worker processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdlens.demo.jobs import Job, Start, run_jobs
from opdlens.demo.model import ModelConfig, TinyLlama
from opdlens.demo.portable import PORTABLE_CAPABILITIES
from opdlens.demo.runs import MANIFEST, _prepare
from opdlens.demo.settings import replicate_dir, replicate_seed
from opdlens.demo.task import VOCAB_SIZE, AdditionTask
from opdlens.demo.train import PostTrainSettings


def _start() -> Start:
    task = AdditionTask(n_digits=1, n_val=10, n_test=20)
    cfg = ModelConfig(VOCAB_SIZE, 16, 32, 1, 2, 2, task.prompt_len + task.answer_len)
    torch.manual_seed(0)
    student, teacher = TinyLlama(cfg).eval(), TinyLlama(cfg).eval()
    post = PostTrainSettings(steps=3, save_every=2, lr=1e-2, samples_per_step=8, group_size=4,
                             warmup=1)  # fmt: skip
    return Start(student, teacher, task, post, eval_every=2, demo={"task": task.to_dict()})


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p / "model.safetensors")) for p in run.glob("checkpoint-*")}


@pytest.mark.slow
def test_jobs_give_the_same_runs_on_one_worker_or_two_whatever_the_callers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _start()

    def jobs(root: Path) -> list[Job]:
        out = [Job(replicate_dir(k, r), k, replicate_seed(0, r), root / replicate_dir(k, r))
               for r in range(2) for k in ("opd", "rl")]  # fmt: skip
        return [*out, Job("effopd", "opd", 0, None, record=True, effopd=True)]

    inline = run_jobs(start, jobs(tmp_path / "inline"), workers=1, progress=False)
    # Another caller's settings: the workers still compute on the portable path.
    caller = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AUTO", "OMP_NUM_THREADS": "2"}
    for key, value in caller.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    pooled = run_jobs(start, jobs(tmp_path / "pool"), workers=2, progress=False)
    assert {k: os.environ.get(k) for k in (*caller, "MKL_NUM_THREADS")} == {
        **caller, "MKL_NUM_THREADS": None}  # restored for the caller  # fmt: skip
    for result in (*inline.values(), *pooled.values()):
        assert result["code_path"]["cpu_capability"] in PORTABLE_CAPABILITIES
        assert result["code_path"]["mkl_cbwr"] == "COMPATIBLE"
        assert result["code_path"]["threads"] == "1"
    assert set(inline) == {"opd", "rl", "opd-2", "rl-2", "effopd"} == set(pooled)
    assert inline["effopd"]["curve"] == pooled["effopd"]["curve"]
    assert [h["step"] for h in inline["effopd"]["history"]] == [1, 2]
    for name in ("opd", "rl", "opd-2", "rl-2"):
        a, b = _weights(tmp_path / "inline" / name), _weights(tmp_path / "pool" / name)
        assert sorted(a) == ["checkpoint-0", "checkpoint-1", "checkpoint-2", "checkpoint-3"]
        assert all(torch.equal(a[c][k], b[c][k]) for c in a for k in a[c])
    # Replicates differ by their seed only: same start, different final weights.
    first, second = _weights(tmp_path / "inline" / "opd"), _weights(tmp_path / "inline" / "opd-2")
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(first["checkpoint-0"][w], second["checkpoint-0"][w])
    assert not torch.equal(first["checkpoint-3"][w], second["checkpoint-3"][w])


def test_other_parameters_remove_every_replicate(tmp_path: Path) -> None:
    for name in ("teacher", "opd", "opd-2", "opd-3", "rl", "rl-3"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes").mkdir()  # not ours: kept
    (tmp_path / MANIFEST).write_text(json.dumps({"complete": True, "params": {"seed": 1}}))
    params = {"seed": 0, "settings": {"replicates": 1}}
    assert _prepare(tmp_path, {"params": params, "complete": False}) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "notes"]
