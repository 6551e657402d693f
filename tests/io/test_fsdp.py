"""verl FSDP rank files: real DTensors (two gloo processes) reassemble exactly; broken ones fail."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor
from typer.testing import CliRunner

import opdlens
from opdlens.cli import app


def _rank_states(actor):
    return [
        torch.load(actor / f"model_world_size_2_rank_{r}.pt", weights_only=False) for r in (0, 1)
    ]


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_dtensor_rank_files_reassemble(verl_dtensor_runs, arch):
    root = verl_dtensor_runs[arch]
    run = opdlens.open_run(root)
    assert run.base.layout == "verl-fsdp" and run.steps == [2, 4]
    actor = root / "global_step_4" / "actor"
    assert len(run.checkpoint(4).files) == 2
    ranks = _rank_states(actor)
    for name in run.tensor_names:
        parts = [r[name] for r in ranks]
        assert isinstance(parts[0], DTensor)
        full = torch.cat([p.to_local() for p in parts], dim=0)
        got = run.checkpoint(4).tensor(name)
        assert tuple(got.shape) == tuple(parts[0].shape) == run.checkpoint(4).spec(name).shape
        assert torch.equal(got, full), name


def test_dtensor_uneven_rows(verl_dtensor_runs):
    root = verl_dtensor_runs["llama"]
    ranks = _rank_states(root / "global_step_2" / "actor")
    local = [r["model.embed_tokens.weight"].to_local() for r in ranks]
    assert [t.shape[0] for t in local] == [51, 50]
    run = opdlens.open_run(root)
    assert run.checkpoint(2).tensor("model.embed_tokens.weight").shape == (101, 32)


def test_dtensor_planted_update(verl_dtensor_runs):
    from checkpoints import planted_direction

    run = opdlens.open_run(verl_dtensor_runs["mixtral"])
    name = "model.layers.0.mlp.experts.down_proj"
    d = planted_direction(name, run.checkpoint(4).spec(name).shape)
    torch.testing.assert_close(run.delta(name, 4, ref=2), 2 * d, rtol=1e-5, atol=1e-6)


def _globals(path: Path) -> list[str]:
    """The classes and functions a torch.save pickle names, in order (what unpickling calls)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as z:
        (data,) = (n for n in z.namelist() if n.endswith("/data.pkl"))
        return [str(arg) for op, arg, _ in pickletools.genops(z.read(data)) if op.name == "GLOBAL"]


def test_the_one_process_writer_writes_what_gloo_writes(tmp_path):
    """The fixtures' fallback where gloo cannot start: the same objects, storages and numbers.

    Not byte-equal pickles: torch 2.6's DeviceMesh pickles a hash that differs per process.
    """
    import checkpoints

    state = {"w": torch.randn(7, 5), "experts": torch.randn(3, 4, 2), "scale": torch.tensor(2.0)}
    one, gloo = tmp_path / "one", tmp_path / "gloo"
    assert (
        checkpoints.write_fsdp_rank_files([(one, state)], 2, writer="one-process") == "one-process"
    )
    for r in (0, 1):
        got = torch.load(one / f"model_world_size_2_rank_{r}.pt", weights_only=True)
        assert torch.equal(got["w"].to_local(), torch.chunk(state["w"], 2)[r])
        assert torch.equal(got["experts"].to_local(), torch.chunk(state["experts"], 2)[r])
        assert torch.equal(got["scale"].to_local(), state["scale"])
    try:
        checkpoints.write_fsdp_rank_files([(gloo, state)], 2, writer="gloo")
    except RuntimeError as e:
        pytest.skip(f"gloo cannot start on this machine: {str(e)[:300]}")
    for r in (0, 1):
        name = f"model_world_size_2_rank_{r}.pt"
        assert _globals(one / name) == _globals(gloo / name)
        a = torch.load(one / name, weights_only=True)
        b = torch.load(gloo / name, weights_only=True)
        for k in state:
            assert isinstance(a[k], DTensor) and isinstance(b[k], DTensor), k
            assert a[k].placements == b[k].placements, k
            assert (a[k].shape, a[k].stride()) == (b[k].shape, b[k].stride()), k
            assert torch.equal(a[k].device_mesh.mesh, b[k].device_mesh.mesh), k
            la, lb = a[k].to_local(), b[k].to_local()
            assert torch.equal(la, lb), k
            assert (la.stride(), la.storage_offset()) == (lb.stride(), lb.storage_offset()), k
            assert la.untyped_storage().nbytes() == lb.untyped_storage().nbytes(), k


# -- broken rank files: one line naming the files, at open time ------------------------------


@pytest.fixture(scope="module")
def plain_verl(tmp_path_factory):
    """A verl run whose rank files hold plain row blocks (W=2), to copy and break."""
    from checkpoints import write_verl_run

    return write_verl_run(tmp_path_factory.mktemp("verl-plain"), "llama", steps=(0, 2),
                          weights="plain")  # fmt: skip


def _broken(plain_verl, tmp_path, edit) -> tuple[Path, Path]:
    root = Path(shutil.copytree(plain_verl, tmp_path / "run"))
    actor = root / "global_step_2" / "actor"
    edit(actor)
    return root, actor


def _resave(actor: Path, rank: int, change) -> None:
    f = actor / f"model_world_size_2_rank_{rank}.pt"
    state = torch.load(f, weights_only=True)
    change(state)
    torch.save(state, f)


UP = "model.layers.0.mlp.up_proj.weight"
RANK = "model_world_size_2_rank_{}.pt"
BROKEN_RANKS = {
    "rank-beyond-world": (
        lambda a: shutil.copy(a / RANK.format(1), a / RANK.format(2)),
        [r"model_world_size_2_rank_2\.pt: rank 2 in a world of size 2"],
    ),
    "duplicate-rank": (
        lambda a: shutil.copy(a / RANK.format(1), a / RANK.format("01")),
        [r"rank 1 is also in model_world_size_2_rank_"],
    ),
    "non-tensor": (
        lambda a: _resave(a, 1, lambda s: s.update({UP: 3})),
        [rf"rank_1\.pt: entry '{UP}' is not a tensor \(found int\)"],
    ),
    "trailing-dims": (
        lambda a: _resave(a, 1, lambda s: s.update({UP: torch.zeros(s[UP].shape[0], 33)})),
        [rf"rank_1\.pt: tensor '{UP}' has shape \[32, 33\] but \[32, 32\] in "
         r"model_world_size_2_rank_0\.pt"],
    ),
    "ndim": (
        lambda a: _resave(a, 1, lambda s: s.update({UP: torch.zeros(s[UP].shape[0])})),
        [rf"rank_1\.pt: tensor '{UP}' has shape \[32\] but \[32, 32\]"],
    ),
    "dtype": (
        lambda a: _resave(a, 1, lambda s: s.update({UP: s[UP].half()})),
        [rf"rank_1\.pt: tensor '{UP}' is F16 but F32 in model_world_size_2_rank_0\.pt"],
    ),
    "extra-key": (
        lambda a: _resave(a, 1, lambda s: s.update({"model.extra.weight": torch.zeros(2)})),
        [r"rank_1\.pt: tensor 'model\.extra\.weight' is only in model_world_size_2_rank_1\.pt"],
    ),
    "world-zero": (  # an IndexError before
        lambda a: [(a / "model_world_size_2_rank_0.pt").rename(a / "model_world_size_0_rank_0.pt"),
                   (a / "model_world_size_2_rank_1.pt").unlink()],
        [r"model_world_size_0_rank_0\.pt: world size 0 in the file name"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN_RANKS))
def test_broken_rank_files(plain_verl, tmp_path, case):
    edit, patterns = BROKEN_RANKS[case]
    root, actor = _broken(plain_verl, tmp_path, edit)
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(root)
    for p in patterns:
        assert re.search(p, str(e.value)), str(e.value)
    result = CliRunner().invoke(app, ["scan", str(root)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(actor) in lines[0], result.stderr


def test_dtensor_mesh_larger_than_rank_files(verl_dtensor_runs, tmp_path):
    # Two ranks saved DTensors of a 2-rank mesh; only rank 0's file is left, named as world 1.
    root = Path(shutil.copytree(verl_dtensor_runs["llama"], tmp_path / "run"))
    actor = root / "global_step_4" / "actor"
    (actor / "model_world_size_2_rank_1.pt").unlink()
    (actor / "model_world_size_2_rank_0.pt").rename(actor / "model_world_size_1_rank_0.pt")
    with pytest.raises(opdlens.CheckpointError, match=r"rank_0\.pt: DTensor '.*' was saved on a "
                       r"mesh of shape \[2\], but the file names say a world of 1"):  # fmt: skip
        opdlens.open_run(root)
