"""WeightDynamicsCallback in a real Trainer against `opdlens analyze` and `foresee` of the
checkpoints that Trainer saved at the same steps, and read back from TensorBoard's event file."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from checkpoints import tiny_model
from transformers import Trainer, TrainerState, TrainingArguments

import opdlens
from opdlens.analysis.foresight import foresee
from opdlens.analysis.live import WeightDynamics
from opdlens.errors import OptionError
from opdlens.integrations.transformers import WeightDynamicsCallback, save_base

VOCAB = 32
SAVES = (3, 6, 9)


def _trainer(out: Path, report_to: list[str], arch: str = "llama") -> Trainer:
    data = torch.randint(4, VOCAB, (32, 8), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=str(out), max_steps=max(SAVES), per_device_train_batch_size=4,
        learning_rate=3e-2, save_strategy="steps", save_steps=3, logging_steps=100, use_cpu=True,
        report_to=report_to, disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = tiny_model(arch, seed=0, vocab_size=VOCAB).train()
    save_base(model, out)  # checkpoint-0: the start, as SaveAtPowersOfTwo would save it
    rows = [{"input_ids": x, "labels": x} for x in data]
    return Trainer(model=model, args=args, train_dataset=rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WeightDynamicsCallback]:
    out = tmp_path_factory.mktemp("dyn") / "out"
    report = ["tensorboard"] if _has_tensorboard() else []
    trainer = _trainer(out, report, arch="phi3")  # fused qkv / gate_up: measured per part
    callback = WeightDynamicsCallback().attach(trainer)
    trainer.train()
    return out, callback


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _block_means(df: pd.DataFrame, col: str, weight: pd.Series) -> pd.Series:
    ok = df[col].notna() & (weight > 0)
    return (df.loc[ok, col] * weight[ok]).groupby(df.loc[ok, "block"]).sum() / weight[ok].groupby(
        df.loc[ok, "block"]
    ).sum()


def test_logged_values_equal_analyze_of_the_saved_checkpoints(trained) -> None:
    out, callback = trained
    assert [int(m["step"]) for m in callback.measurements] == list(SAVES)
    run = opdlens.open_run(out)
    assert run.steps[-3:] == list(SAVES)
    df = opdlens.analyze(run, ranks=(1,), workers=1)
    for logged in callback.measurements:
        at = df[(df["step"] == logged["step"]) & (df["span"] == "cumulative")]
        w = at["update_norm"].astype("float64") ** 2
        share = w.groupby(at["block"]).sum() / w.sum()
        energy = _block_means(at, "energy_k1", w)
        for block in share.index:
            got = logged[f"opdlens/update_share/{block}"]
            assert got == pytest.approx(share[block], rel=1e-5, abs=1e-9), block
        for block in energy.index:
            assert logged[f"opdlens/energy_k1/{block}"] == pytest.approx(energy[block], abs=1e-3)
        assert logged["opdlens/update_norm"] == pytest.approx(math.sqrt(w.sum()), rel=1e-5)
    # the fused tensors were measured per part, as analyze cuts them
    rows = callback.history[-1].rows
    assert {"q", "k", "v", "gate", "up"} <= set(rows["part"].dropna())


def test_alignment_with_the_previous_save_equals_analyze_with_that_final(trained) -> None:
    out, callback = trained
    run = opdlens.open_run(out)
    checked = 0
    for prev, step in zip(SAVES, SAVES[1:], strict=False):
        ref = opdlens.analyze(run, ranks=(1,), final=prev, workers=1)
        ref = ref[(ref["step"] == step) & (ref["span"] == "cumulative")]
        mine = next(m.rows for m in callback.history if m.step == step)
        prev_rows = next(m.rows for m in callback.history if m.step == prev)
        keys = ["tensor", "expert", "part"]
        both = mine.merge(ref, on=keys, suffixes=("", "_ref")).merge(
            prev_rows[[*keys, "gap_k1"]], on=keys, suffixes=("", "_prev")
        )
        sharp = (both["gap_k1_ref"] >= 1e-2) & (both["gap_k1_prev"] >= 1e-2)
        for side in ("left", "right"):
            err = (both[f"align_prev_{side}_k1"] - both[f"align_{side}_k1"]).abs()
            assert (err[sharp] <= 1e-2).all(), both.loc[sharp & (err > 1e-2), keys]
        checked += int(sharp.sum())
        logged = next(m for m in callback.measurements if m["step"] == step)
        w = mine["sq"].where(mine["align_prev_left_k1"].notna(), 0.0)
        mean = (mine["align_prev_left_k1"] + mine["align_prev_right_k1"]) / 2
        for block, g in mine.assign(mean=mean, w=w).groupby("block"):
            if g["w"].sum() > 0:
                want = float((g["mean"].fillna(0) * g["w"]).sum() / g["w"].sum())
                assert logged[f"opdlens/align_prev_k1/{block}"] == pytest.approx(want)
    assert checked >= 10


def test_alpha_star_equals_foresee_with_the_base_as_anchor(trained) -> None:
    out, callback = trained
    fore = foresee(opdlens.open_run(out), anchor="base", scopes=("overall",), workers=1)
    fore = fore[fore["alpha_kind"] == "optimal"]
    for prev, step in zip(SAVES, SAVES[1:], strict=False):
        ref = fore[(fore["step"] == prev) & (fore["target_step"] == step)].iloc[0]
        logged = next(m for m in callback.measurements if m["step"] == step)
        assert logged["opdlens/alpha_star"] == pytest.approx(ref["alpha"], rel=1e-4)
        assert logged["opdlens/alpha_rel_error"] == pytest.approx(ref["rel_error"], rel=1e-4)
    first = callback.measurements[0]
    assert "opdlens/alpha_star" not in first  # no previous measurement yet


def test_tensorboard_holds_the_scalars(trained) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, callback = trained
    (events,) = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    # the Trainer's TensorBoard and W&B loggers file a training log's keys under train/
    for name in ("update_share/mlp", "energy_k1/attn", "align_prev_k1/mlp", "alpha_star"):
        assert f"train/opdlens/{name}" in tags, tags
    got = {e.step: e.value for e in acc.Scalars("train/opdlens/update_share/mlp")}
    want = {int(m["step"]): m["opdlens/update_share/mlp"] for m in callback.measurements}
    assert list(got) == list(want)
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-6)
    # and the Trainer's own log history (trainer_state.json) has them beside the loss
    state = TrainerState.load_from_json(str(out / "checkpoint-9" / "trainer_state.json"))
    assert any("opdlens/energy_k1/mlp" in e and e["step"] == 9 for e in state.log_history)


def test_one_extra_copy_every_steps_and_refusals(tmp_path: Path) -> None:
    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    dyn = WeightDynamics()
    dyn.start(model)
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert params <= dyn.state_bytes < params * 1.01  # the start, and vectors per matrix
    with pytest.raises(OptionError, match="every_steps"):
        WeightDynamicsCallback(every_steps=0)
    trainer = _trainer(tmp_path / "plain", [])
    trainer.add_callback(WeightDynamicsCallback())  # not attached: it could not log
    with pytest.raises(OptionError, match=r"attach\(trainer\)"):
        trainer.train()
    args = SimpleNamespace(world_size=2, fsdp="", deepspeed=None, output_dir=str(tmp_path))
    cb = WeightDynamicsCallback(every_steps=2).attach(_trainer(tmp_path / "x", []))
    with pytest.raises(OptionError, match="single training process"):
        cb.on_train_begin(args, TrainerState(), None, model=model)


def test_every_steps_measures_between_saves_without_alpha(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path / "out", [])
    callback = WeightDynamicsCallback(every_steps=2).attach(trainer)
    trainer.train()
    assert [int(m["step"]) for m in callback.measurements] == [2, 4, 6, 8]
    # α* needs the previous measurement's weights, which only a save holds: checkpoint-6 for 8
    assert [int(m["step"]) for m in callback.measurements if "opdlens/alpha_star" in m] == [8]
    assert all("opdlens/align_prev_k1/mlp" in m for m in callback.measurements[1:])


def test_resuming_measures_from_checkpoint_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _trainer(out, [])
    first.args.max_steps = 6
    WeightDynamicsCallback().attach(first)
    first.train()
    again = _trainer(tmp_path / "elsewhere", [])  # a fresh model; its own checkpoint-0 is unused
    again.args.output_dir = str(out)
    callback = WeightDynamicsCallback().attach(again)
    again.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert [int(m["step"]) for m in callback.measurements] == [9]
    df = opdlens.analyze(opdlens.open_run(out), ranks=(1,), workers=1)
    at = df[(df["step"] == 9) & (df["span"] == "cumulative")]
    w = at["update_norm"].astype("float64") ** 2
    logged = callback.measurements[0]
    assert logged["opdlens/update_norm"] == pytest.approx(math.sqrt(w.sum()), rel=1e-5)
    mlp = w[at["block"] == "mlp"].sum() / w.sum()
    assert logged["opdlens/update_share/mlp"] == pytest.approx(mlp, rel=1e-5)
