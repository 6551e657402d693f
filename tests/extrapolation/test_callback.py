"""Tests for the online EffOPD callback: schedule, alpha sequence, exact rollback, memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from opdlens.extrapolation.callback import CANDIDATE_COLUMNS, EffOPD


class Toy(nn.Module):
    """Llama-named tensors: two selected matrices, a norm, an embedding and a head."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(5, 4)
        layer = nn.Module()
        layer.self_attn = nn.Module()
        layer.self_attn.q_proj = nn.Linear(4, 4, bias=False)
        layer.mlp = nn.Module()
        layer.mlp.down_proj = nn.Linear(6, 4, bias=False)
        layer.input_layernorm = nn.Module()
        layer.input_layernorm.weight = nn.Parameter(torch.ones(4))
        self.model.layers = nn.ModuleList([layer])
        self.lm_head = nn.Linear(4, 5, bias=False)
        self.to(dtype)


SELECTED = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _set(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(values[n])


def test_default_selection_is_attention_and_mlp_matrices() -> None:
    model = Toy()
    cb = EffOPD()
    chosen = {n for n, p in model.named_parameters() if cb.selects(n, p)}
    assert chosen == SELECTED
    mlp_only = EffOPD(modules=("mlp",))
    assert {n for n, p in model.named_parameters() if mlp_only.selects(n, p)} == {
        "model.layers.0.mlp.down_proj.weight"
    }


def test_memory_is_anchor_and_one_backup_of_selected_tensors() -> None:
    model = Toy()
    cb = EffOPD()
    cb.start(model)
    selected_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if n in SELECTED
    )
    assert cb.state_bytes == 2 * selected_bytes
    cb.after_step(model, 1, lambda m: 0.0)
    assert cb.state_bytes == 2 * selected_bytes
    assert set(cb._anchor) == set(cb._backup) == SELECTED


def test_known_score_gives_expected_accepts_alphas_and_weights() -> None:
    # Score = closeness to a target 7 anchor-to-current distances along the direction:
    # candidates sit at 1 + 2k distances (k = 1, 2, ...), so 3 and 5 improve, 7 ties (rejected).
    torch.manual_seed(0)
    model = Toy()
    cb = EffOPD(alpha0=2.0, max_candidates=5)
    anchor = _state(model)
    cb.start(model)
    step = {n: torch.randn_like(v) * 0.1 for n, v in anchor.items()}
    _set(model, {n: anchor[n] + step[n] for n in anchor})
    current = _state(model)
    target = {n: anchor[n] + 6.0 * step[n] for n in SELECTED}

    def score(m: nn.Module) -> float:
        params = dict(m.named_parameters())
        dist = sum(((params[n].double() - target[n].double()) ** 2).sum() for n in SELECTED)
        return -round(float(dist), 6)

    record = cb.after_step(model, 1, score)
    assert record["extrapolated"] and record["step"] == 1 and record["anchor_step"] == 0
    assert record["alphas"] == pytest.approx([2.0, 2.0 / 3.0, 2.0 / 5.0])
    assert record["accepted"] == 2
    assert len(record["candidate_scores"]) == 3
    assert record["final_score"] == max(record["candidate_scores"][:2])
    params = dict(model.named_parameters())
    for n in SELECTED:  # two accepted candidates: 1 + 2 + 2 = 5 distances from the anchor
        expected = anchor[n].double() + 5.0 * step[n].double()
        torch.testing.assert_close(params[n].double(), expected, atol=1e-6, rtol=1e-5)
    for n in set(anchor) - SELECTED:
        assert torch.equal(params[n], current[n])
    assert cb.anchor_step == 1


def test_alpha_sequence_when_every_candidate_improves() -> None:
    model = Toy()
    cb = EffOPD(alpha0=2.0, max_candidates=5)
    cb.start(model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.01)
    counter = iter(range(100))
    record = cb.after_step(model, 1, lambda m: float(next(counter)))
    assert record["accepted"] == 5
    assert record["alphas"] == pytest.approx([2 / (1 + 2 * k) for k in range(5)])
    assert record["alphas"] == [a for a, _ in cb.schedule.alphas()]  # replay's, bit for bit
    assert (cb.alpha0, cb.max_candidates) == (2.0, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rejected_candidate_restores_weights_bit_exactly(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = Toy(dtype)
    cb = EffOPD()
    cb.start(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = _state(model)
    record = cb.after_step(model, 2, lambda m: 0.0)  # a tie: not an improvement
    assert record["accepted"] == 0 and record["candidate_scores"] == [record["base_score"]]
    for n, p in model.named_parameters():
        assert p.dtype == dtype
        assert torch.equal(p, before[n]), n


def test_bf16_candidate_is_computed_in_float32() -> None:
    model = Toy(torch.bfloat16)
    cb = EffOPD(max_candidates=1)
    anchor = _state(model)
    cb.start(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.125)
    current = _state(model)
    cb.after_step(model, 1, lambda m: float(m.model.layers[0].self_attn.q_proj.weight.sum()))
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = (current[name].float() + 2.0 * (current[name].float() - anchor[name].float())).to(
        torch.bfloat16
    )
    assert torch.equal(dict(model.named_parameters())[name], expected)


def test_float64_candidate_keeps_float64_precision() -> None:
    torch.manual_seed(2)
    model = Toy(torch.float64)
    cb = EffOPD(max_candidates=1)
    anchor = _state(model)
    cb.start(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-9 * torch.randn_like(p))  # a step float32 arithmetic would round away
    current = _state(model)
    scores = iter([0.0, 1.0])  # the base, then a better candidate: accepted
    assert cb.after_step(model, 1, lambda m: next(scores))["accepted"] == 1
    name = "model.layers.0.mlp.down_proj.weight"
    got = dict(model.named_parameters())[name]
    assert got.dtype == torch.float64
    expected = current[name] + 2.0 * (current[name] - anchor[name])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    assert not torch.equal(got, current[name])


def test_non_power_of_two_steps_do_nothing() -> None:
    model = Toy()
    cb = EffOPD()
    cb.start(model)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
        model.model.layers[0].mlp.down_proj.weight.add_(1.0)
    before = _state(model)

    def never(m: nn.Module) -> float:
        raise AssertionError("score_fn must not run on a non-power-of-two step")

    for step in (0, 3, 5, 6, 7, 12):
        record = cb.after_step(model, step, never)
        assert not record["extrapolated"] and record["candidate_scores"] == []
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert cb.history == []


def test_anchor_moves_to_each_power_of_two_step() -> None:
    model = Toy()
    cb = EffOPD()
    cb.start(model)
    cb.after_step(model, 1, lambda m: 0.0)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(0.5)
    at_two = _state(model)
    cb.after_step(model, 2, lambda m: 0.0)
    assert cb.anchor_step == 2
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(cb._anchor[name], at_two[name])


def test_first_call_without_start_anchors_and_waits() -> None:
    model = Toy()
    cb = EffOPD()
    record = cb.after_step(model, 1, lambda m: 1.0)
    assert not record["extrapolated"] and record["anchor_step"] == 1


def test_select_overrides_default() -> None:
    model = Toy()
    cb = EffOPD(select=lambda name, p: name == "lm_head.weight")
    cb.start(model)
    assert set(cb._anchor) == {"lm_head.weight"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_alpha0_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="'alpha0' parameter"):
        EffOPD(alpha0=bad)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="'max_candidates'.*Got 0"):
        EffOPD(max_candidates=0)
    with pytest.raises(ValueError, match="'modules'.*Got \\('attention',\\)"):
        EffOPD(modules=("attention",))
    with pytest.raises(ValueError, match="selected no parameters"):
        EffOPD(select=lambda n, p: False).start(Toy())


def test_candidate_rows_and_csv_list_every_candidate(tmp_path) -> None:
    model = Toy()
    cb = EffOPD(max_candidates=3)
    cb.start(model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.01)
    scores = iter([0.0, 1.0, 0.5, 3.0, 4.0, 5.0, 6.0])
    cb.after_step(model, 1, lambda m: next(scores))  # base 0, accept 1, reject 0.5
    cb.after_step(model, 2, lambda m: next(scores))  # base 3, accept 4, 5, 6 (max 3)
    expected = [
        (1, 0, 1, 2.0, 0.0, 1.0, True),
        (1, 0, 2, 2 / 3, 0.0, 0.5, False),
        (2, 1, 1, 2.0, 3.0, 4.0, True),
        (2, 1, 2, 2 / 3, 3.0, 5.0, True),
        (2, 1, 3, 2 / 5, 3.0, 6.0, True),
    ]
    rows = cb.candidate_rows()
    assert [tuple(r[c] for c in CANDIDATE_COLUMNS) for r in rows] == expected
    cb.write_csv(tmp_path / "effopd.csv")
    lines = (tmp_path / "effopd.csv").read_text().splitlines()
    assert lines[0] == ",".join(CANDIDATE_COLUMNS)
    assert lines[2] == f"1,0,2,{2 / 3!r},0.0,0.5,False"
    assert len(lines) == 1 + len(expected)
    assert [p.name for p in tmp_path.iterdir()] == ["effopd.csv"]  # no temporary file left


def test_start_takes_the_anchor_from_a_function() -> None:
    model = Toy()
    earlier = {n: p.detach() - 0.5 for n, p in model.named_parameters()}
    cb = EffOPD(max_candidates=1)
    cb.start(model, 4, anchor=lambda name: earlier[name])
    current = _state(model)
    record = cb.after_step(model, 8, lambda m: float(m.model.layers[0].mlp.down_proj.weight.sum()))
    assert record["anchor_step"] == 4 and record["accepted"] == 1
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(dict(model.named_parameters())[name], current[name] + 1.0)
    with pytest.raises(ValueError, match="anchor for .*q_proj.weight has shape \\(2,\\)"):
        EffOPD().start(model, 4, anchor=lambda name: torch.zeros(2))


def test_frozen_parameters_are_not_selected() -> None:
    model = Toy()
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    cb = EffOPD()
    cb.start(model)
    assert set(cb._anchor) == {"model.layers.0.mlp.down_proj.weight"}


def test_a_lora_model_is_refused_with_the_way_out() -> None:
    from checkpoints import tiny_model
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="no trainable weight matrix.*LoRA adapters only"):
        EffOPD().start(lora)
    factors = EffOPD(select=lambda name, param: param.requires_grad)
    factors.start(lora)
    assert len(factors._anchor) == 4 and all("lora_" in n for n in factors._anchor)


def test_a_failing_score_fn_leaves_the_last_accepted_weights() -> None:
    model = Toy()
    cb = EffOPD()
    cb.start(model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.01)
    before = _state(model)
    calls: list[nn.Module] = []

    def score(m: nn.Module) -> float:  # the base scores, the first candidate's call fails
        calls.append(m)
        if len(calls) > 1:
            raise RuntimeError("evaluation server went away")
        return 0.0

    with pytest.raises(RuntimeError, match="went away"):
        cb.after_step(model, 1, score)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
