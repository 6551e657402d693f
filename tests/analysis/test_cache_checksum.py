"""Factor cache entries carry a checksum: one flipped bit on disk is caught and recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from planted import SMALL_CONFIG, small_states, write_state_run

from opdlens import OpdlensError, open_run
from opdlens.analysis.analyze import compute_analysis
from opdlens.analysis.cache import FactorCache
from opdlens.analysis.options import AnalyzeOptions
from opdlens.analysis.write import write_analysis


def _flip_mantissa_bit_of_every_u(path: Path) -> int:
    """Flip the lowest mantissa bit of the first value of every `<i>.u` array; the file stays a
    valid safetensors file of the same size. Returns how many arrays were changed."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    flipped = 0
    for key, entry in header.items():
        if key.endswith(".u"):
            raw[8 + n + entry["data_offsets"][0]] ^= 1  # little-endian: byte 0 holds bit 0
            flipped += 1
    path.write_bytes(bytes(raw))
    return flipped


def test_a_flipped_bit_in_a_cached_factor_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    root = write_state_run(tmp_path / "run", small_states((0, 1, 2)), SMALL_CONFIG)
    out = tmp_path / "out"
    first, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    files = sorted((out / "cache").glob("*.safetensors"))
    assert files and sum(_flip_mantissa_bit_of_every_u(f) for f in files) == first.svd_calls
    again, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    assert again.svd_calls == first.svd_calls and again.cache_hits == 0
    damaged = [w for w in again.warnings if "checksum" in w and "recomputed" in w]
    assert len(damaged) == first.svd_calls, again.warnings
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=(1, 4), workers=1)).frame
    pd.testing.assert_frame_equal(again.frame, fresh)
    third, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    assert third.svd_calls == 0 and not third.warnings  # the rewritten entries verify


def test_reading_the_cache_without_the_run_refuses_a_flipped_bit(tmp_path: Path) -> None:
    root = write_state_run(tmp_path / "run", small_states((0, 1, 2)), SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    name = "model.layers.1.self_attn.q_proj.weight"
    cache = FactorCache.open(out)
    assert 0.0 <= cache.alignment(name, 1, 2, 1) <= 1.0
    _flip_mantissa_bit_of_every_u(cache.tensor(name).path)
    with pytest.raises(OpdlensError, match="checksum.*run `opdlens analyze` again"):
        FactorCache.open(out).alignment(name, 1, 2, 1)
