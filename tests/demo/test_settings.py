"""demo.settings: the quick preset is the full preset's first seed, cut to 40 steps."""

from __future__ import annotations

import dataclasses

from opdlens.demo.settings import demo_settings, replicate_dir, replicate_seed


def test_quick_is_the_full_presets_first_40_steps() -> None:
    quick, full = demo_settings(True), demo_settings(False)
    assert (quick.replicates, full.replicates) == (1, 3)
    assert (quick.post.steps, full.post.steps) == (40, 120)
    # Everything that shapes the first 40 steps is the same: task, model, SFT, learning rate.
    same = dataclasses.replace(quick, replicates=full.replicates,
                               post=dataclasses.replace(quick.post, steps=120, save_every=20))  # fmt: skip
    assert same == full
    assert demo_settings(True, seed=3).task.split_seed == 3


def test_replicates_are_named_and_seeded_apart() -> None:
    assert [replicate_dir("opd", r) for r in range(3)] == ["opd", "opd-2", "opd-3"]
    assert [replicate_seed(5, r) for r in range(3)] == [5, 1005, 2005]
