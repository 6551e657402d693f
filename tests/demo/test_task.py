"""demo.task: the addition task's encoding and its held-out split."""

from __future__ import annotations

import torch

from opdlens.demo.task import EQUALS, PLUS, AdditionTask


def test_task_encodes_reversed_sums() -> None:
    task = AdditionTask(n_digits=2, reverse=True)
    prompt, answer = task.encode(torch.tensor([47, 5]), torch.tensor([85, 0]))
    assert prompt.tolist() == [[4, 7, PLUS, 8, 5, EQUALS], [0, 5, PLUS, 0, 0, EQUALS]]
    assert answer.tolist() == [[2, 3, 1], [5, 0, 0]]  # 132 and 005, least significant first


def test_training_pairs_avoid_held_out_sets() -> None:
    task = AdditionTask(n_digits=2, n_val=300, n_test=400, split_seed=3)
    held = {tuple(p.tolist()) for name in ("val", "test") for p in task.split(name)[0]}
    assert len(held) == 700
    prompts, answers = task.sampler(0).batch(5000)
    assert not held & {tuple(p.tolist()) for p in prompts}
    a = prompts[:, 0] * 10 + prompts[:, 1]
    b = prompts[:, 3] * 10 + prompts[:, 4]
    sums = answers[:, 0] + 10 * answers[:, 1] + 100 * answers[:, 2]
    assert torch.equal(sums, a + b)
