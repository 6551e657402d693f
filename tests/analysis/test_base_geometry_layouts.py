"""`analyze --base-geometry` on sharded safetensors and verl FSDP rank files, against float64 SVDs.

The checkpoints put one matrix's pieces in different files: a MoE layer's per-expert tensors
across safetensors shards; a fused qkv / gate_up tensor's parts and a stacked expert tensor's
experts across verl's rank files (DTensor Shard(0) rows).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import checkpoints
import pandas as pd
import pytest
import torch
from planted import base_reference, check_base, load_states, spiked_update
from torch.distributed.tensor import DTensor
from typer.testing import CliRunner

import opdlens
from opdlens.analysis.frame import geometry_columns
from opdlens.cli import app

RANKS = (1, 3, 8)
STEPS = (0, 2, 4)
WORLD = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spiked-base runs: qwen3_moe bf16 sharded; phi3 and mixtral as verl DTensor rank files."""
    root = tmp_path_factory.mktemp("moe-sharded")
    checkpoints.write_hf_run(root, "qwen3_moe", STEPS, layout="sharded", dtype=torch.bfloat16,
                             update=spiked_update, trainer_files=False)  # fmt: skip
    out = {"moe-sharded": root}
    jobs: list = []  # one gloo spawn writes both verl runs
    for arch, vocab in (("phi3", 101), ("mixtral", 100)):  # 101: embedding rows split 51 + 50
        out[f"{arch}-verl"] = checkpoints.write_verl_run(
            tmp_path_factory.mktemp(f"{arch}-verl"), arch, STEPS, weights="dtensor",
            world_size=WORLD, update=spiked_update, jobs=jobs, vocab_size=vocab,
        )  # fmt: skip
    checkpoints.write_fsdp_rank_files(jobs, WORLD, dtensor=True)
    return out


def _rank_files(root: Path, step: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's local rows, as its file holds them (DTensors unwrapped)."""
    actor = root / f"global_step_{step}" / "actor"
    files = [torch.load(actor / f"model_world_size_{WORLD}_rank_{r}.pt", weights_only=False)
             for r in range(WORLD)]  # fmt: skip
    return [{n: t.to_local() if isinstance(t, DTensor) else t for n, t in f.items()} for f in files]


def _states(root: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every step's tensors in float64, read from the files without opdlens."""
    if (root / "checkpoint-0").is_dir():
        return load_states(root)
    out = {}
    for step in STEPS:
        parts = _rank_files(root, step)
        out[step] = {n: torch.cat([p[n] for p in parts]).double() for n in parts[0]}
    return out


def _config(root: Path) -> dict:
    hf = root / "checkpoint-0" if (root / "checkpoint-0").is_dir() else (
        root / "global_step_0" / "actor" / "huggingface"
    )  # fmt: skip
    return json.loads((hf / "config.json").read_text())


def test_the_layouts_split_matrices_across_files(runs):
    """What the other tests rely on: each run really puts one matrix's pieces in two files."""
    index = runs["moe-sharded"] / "checkpoint-4" / "model.safetensors.index.json"
    shards = defaultdict(set)
    for name, file in json.loads(index.read_text())["weight_map"].items():
        if ".experts." in name:
            shards[name.split(".experts.")[0]].add(file)
    assert any(len(files) > 1 for files in shards.values()), shards
    phi3 = _rank_files(runs["phi3-verl"], 4)
    qkv = [p["model.layers.0.self_attn.qkv_proj.weight"].shape[0] for p in phi3]
    assert qkv == [32, 32]  # rank 0: q's 32 rows; rank 1: k's and v's 16 each
    assert [p["model.embed_tokens.weight"].shape[0] for p in phi3] == [51, 50]
    mixtral = _rank_files(runs["mixtral-verl"], 4)
    stacked = [p["model.layers.0.mlp.experts.gate_up_proj"].shape[0] for p in mixtral]
    assert stacked == [2, 2]  # experts 0-1 in rank 0's file, 2-3 in rank 1's
    assert opdlens.open_run(runs["phi3-verl"]).base.layout == "verl-fsdp"


@pytest.mark.parametrize("kind", ["moe-sharded", "phi3-verl", "mixtral-verl"])
def test_every_column_matches_float64_svd(runs, kind):
    root = runs[kind]
    df = opdlens.analyze(
        opdlens.open_run(root), ranks=RANKS, consecutive=True, base_geometry=True, workers=1
    )
    ref = base_reference(_states(root), _config(root), RANKS)
    counts = check_base(df, ref, RANKS)
    assert counts["energy"] > 50 and counts["rotation"] > 50 and counts["drift"] > 100, counts
    assert df[df["cols"] == 1][geometry_columns(RANKS)].isna().all().all()
    if kind == "phi3-verl":
        assert {"q", "k", "v", "gate", "up"} <= set(df["part"].dropna())
    else:
        experts = df.loc[df["tensor"].str.contains(".experts."), "expert"]
        assert set(experts) == {0, 1, 2, 3}


def test_cli_flag_on_verl_rank_files(runs, tmp_path):
    root, out = runs["mixtral-verl"], tmp_path / "out"
    args = ["analyze", str(root), "--out", str(out), "--ranks", "1,3,8", "--consecutive"]
    res = CliRunner().invoke(app, [*args, "--workers", "1", "--base-geometry", "--quiet"])
    assert res.exit_code == 0, res.output
    pq = pd.read_parquet(out / "metrics.parquet")
    counts = check_base(pq, base_reference(_states(root), _config(root), RANKS), RANKS)
    assert counts["energy"] > 50 and counts["rotation"] > 50 and counts["drift"] > 100, counts
