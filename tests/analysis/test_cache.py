"""Factor cache: only new steps recomputed, alignment from the cache alone, changed bytes caught."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from planted import RANKS, SMALL_CONFIG, small_states, write_state_run
from safetensors import safe_open
from safetensors.torch import save_file

from opdlens import OpdlensError, open_run
from opdlens.analysis.analyze import compute_analysis
from opdlens.analysis.cache import FactorCache, slice_key
from opdlens.analysis.options import AnalyzeOptions
from opdlens.analysis.write import write_analysis

N_MATRICES = 8  # 2-D tensors of small_states: embed, head, 2 × (q, o, down)


def _values(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["update_share"]).reset_index(drop=True)


def test_rerun_computes_only_new_steps(tmp_path):
    states = small_states((0, 1, 2, 4))
    root = write_state_run(tmp_path / "run", {s: states[s] for s in (0, 1, 2)}, SMALL_CONFIG)
    out = tmp_path / "out"
    first, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert (first.svd_calls, first.cache_hits) == (2 * N_MATRICES, 0)
    checkpoints.write_state_dir(root / "checkpoint-4", states[4], config=SMALL_CONFIG)
    second, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert (second.svd_calls, second.cache_hits) == (N_MATRICES, 2 * N_MATRICES)
    prov = json.loads((out / "provenance.json").read_text())
    assert (prov["svd_calls"], prov["cache_hits"]) == (N_MATRICES, 2 * N_MATRICES)
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=RANKS, workers=1)).frame
    pd.testing.assert_frame_equal(second.frame, fresh)
    # Asking for a larger K than was cached is a miss, never a silently truncated answer.
    third = compute_analysis(
        open_run(root), AnalyzeOptions(ranks=(1, 12), workers=1), cache_dir=out / "cache"
    )
    assert third.svd_calls == 3 * N_MATRICES
    big = (third.frame["rows"] >= 12) & (third.frame["cols"] >= 12)
    assert third.frame.loc[big, "energy_k12"].notna().all()


def test_alignment_between_any_two_steps_from_cache_only(tmp_path):
    states = small_states((0, 1, 2, 4))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    shutil.move(root, tmp_path / "elsewhere")  # no checkpoint file left to read
    cache = FactorCache.open(out)
    name = "model.layers.1.mlp.down_proj.weight"
    for a, b in ((1, 2), (2, 4), (1, 4)):
        da = states[a][name].double() - states[0][name].double()
        db = states[b][name].double() - states[0][name].double()
        (ua, _, vha), (ub, _, vhb) = torch.linalg.svd(da), torch.linalg.svd(db)
        for k in (1, 3):
            want_l = float(((ua[:, :k].T @ ub[:, :k]) ** 2).sum()) / k
            want_r = float(((vha[:k] @ vhb[:k].T) ** 2).sum()) / k
            assert cache.alignment(name, a, b, k) == pytest.approx(want_l, abs=1e-2)
            assert cache.alignment(name, a, b, k, side="right") == pytest.approx(want_r, abs=1e-2)
    assert cache.alignment(name, 2, 2, 3) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(OpdlensError, match="Step 3 is not in the run"):
        cache.alignment(name, 1, 3, 1)
    with pytest.raises(OpdlensError, match="exceeds the cached rank"):
        cache.alignment(name, 1, 2, 9)
    with pytest.raises(OpdlensError, match="no factor cache"):
        FactorCache.open(tmp_path / "elsewhere")


def test_changed_checkpoint_is_recomputed_never_reused(tmp_path):
    states = small_states((0, 1, 2))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    other = small_states((0, 1, 2), seed=0)[1]  # different weights for step 2
    other = {n: t * 1.5 for n, t in other.items()}
    checkpoints.write_state_dir(root / "checkpoint-2", other, config=SMALL_CONFIG)
    again, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert again.svd_calls == N_MATRICES and again.cache_hits == N_MATRICES  # step 1 reused
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=RANKS, workers=1)).frame
    pd.testing.assert_frame_equal(again.frame, fresh)
    name = "model.layers.0.self_attn.q_proj.weight"
    row = fresh[(fresh["tensor"] == name) & (fresh["step"] == 2)]
    want = float((other[name].double() - states[0][name].double()).norm())
    assert row["update_norm"].item() == pytest.approx(want, rel=1e-5)


def _sha256_key(root, name: str, step: int) -> str:
    """The content key the cache used before xxh3-128: sha256 of W_0's and W_t's stored bytes."""
    digests = []
    for s in (0, step):
        with safe_open(root / f"checkpoint-{s}" / "model.safetensors", "pt") as f:
            t = f.get_tensor(name)
        h = hashlib.sha256(f"F32{list(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        digests.append(h.digest())
    source = digests[0] + digests[1]
    h = hashlib.sha256()
    for d in (source, b""):  # (W_0 + W_t digests, the whole-tensor slice's empty digest)
        h.update(len(d).to_bytes(4, "little") + d)
    return h.hexdigest()[:40]


def test_entries_keyed_by_the_old_hash_are_recomputed_not_misread(tmp_path):
    # A cache written by a version that keyed entries by sha256, here with every σ doubled: had
    # the key not changed with the hash, a rerun would find these entries and report them.
    states = small_states((0, 1, 2))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    cache = FactorCache(out / "cache", {})
    for name, t in states[0].items():
        if t.dim() != 2:
            continue

        def to_old(tensors, meta, name=name):
            entries = json.loads(meta["entries"])
            for i, e in enumerate(entries):
                e["id"] = f"{_sha256_key(root, name, e['step'])}@{e['id'].split('@', 1)[1]}"
                tensors[f"{i}.s"] *= 2.0
            meta["entries"] = json.dumps(entries)

        _rewrite(cache.tensor(name).path, to_old)
    again, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert (again.svd_calls, again.cache_hits) == (2 * N_MATRICES, 0)
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=RANKS, workers=1)).frame
    pd.testing.assert_frame_equal(again.frame, fresh)


def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path):
    root = write_state_run(tmp_path / "run", small_states((0, 1)), SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=(1,), workers=1)
    victim = sorted((out / "cache").glob("*.safetensors"))[0]
    victim.write_bytes(b"garbage")
    again, _ = write_analysis(open_run(root), out, ranks=(1,), workers=1)
    assert again.svd_calls == 1 and any("unreadable cache file" in w for w in again.warnings)


BIG = "model.layers.0.mlp.down_proj.weight"


def _big_run(root, steps=(0, 1, 2)):
    """small_states with one 1024×1024 float32 matrix: a 4 MiB tensor in a > 2 MiB file."""
    states = small_states(steps)
    g = torch.Generator().manual_seed(7)
    w0 = 0.02 * torch.randn(1024, 1024, generator=g)
    u, v = torch.randn(1024, 2, generator=g), torch.randn(2, 1024, generator=g)
    for s, st in states.items():
        st[BIG] = w0 + 1e-3 * s * (u @ v) + 1e-4 * torch.randn(1024, 1024, generator=g)
    return write_state_run(root, states, SMALL_CONFIG)


def _float64_row(root, step):
    """update_norm, energy_k1 and stable_rank of BIG at `step`, from the bytes on disk."""
    d = (checkpoints.st_state(root / f"checkpoint-{step}")[BIG].double()
         - checkpoints.st_state(root / "checkpoint-0")[BIG].double()).numpy()  # fmt: skip
    s = np.linalg.svd(d, compute_uv=False)
    total = float((s**2).sum())
    return np.sqrt(total), s[0] ** 2 / total, total / s[0] ** 2


def test_in_place_edit_keeping_size_and_mtime_is_recomputed(tmp_path):
    root = _big_run(tmp_path / "run")
    out = tmp_path / "out"
    first, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    f = root / "checkpoint-1" / "model.safetensors"
    st = f.stat()
    assert st.st_size > 4 * 2**20
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin = 8 + n + json.loads(raw[8 : 8 + n])[BIG]["data_offsets"][0]  # BIG's first byte
    rows = np.arange(480, 544)  # 256 KiB in the middle of the file, > 1 MiB from either end
    with open(f, "r+b") as fh:
        fh.seek(begin + rows[0] * 4096)
        fh.write((np.full((64, 1024), 0.5, np.float32)).tobytes())  # a strong new direction
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    assert again.svd_calls == 1  # only BIG at step 1 changed
    assert again.cache_hits == first.svd_calls - 1
    row = again.frame.query("tensor == @BIG and step == 1 and span == 'cumulative'")
    norm, e1, sr = _float64_row(root, 1)
    assert row["update_norm"].item() == pytest.approx(norm, rel=1e-6)
    assert row["energy_k1"].item() == pytest.approx(e1, abs=1e-3)
    assert row["stable_rank"].item() == pytest.approx(sr, rel=1e-3)
    before = first.frame.query("tensor == @BIG and step == 1 and span == 'cumulative'")
    assert abs(before["energy_k1"].item() - e1) > 0.1  # the edit did move the spectrum
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=(1, 4), workers=1)).frame
    pd.testing.assert_frame_equal(again.frame, fresh)


def _rewrite(path, edit):
    """Load a cache file's arrays and metadata, apply `edit(tensors, meta)`, save it back."""
    with safe_open(path, "pt") as f:
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
        meta = dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, path, metadata=meta)


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/opdlens-cache-pickle-ran",))


@pytest.mark.parametrize(
    ("damage", "note"),
    [
        (lambda t, m: t.__setitem__("0.u", torch.zeros(3, 1)), "cached factors of"),
        (lambda t, m: t["0.s"].fill_(float("nan")), "NaN or Inf"),
        (lambda t, m: t.__setitem__("0.s", -t["0.s"]), "negative"),
        (lambda t, m: t.pop("0.u"), "unreadable cache file"),
        (lambda t, m: m.__setitem__("entries", "{not json"), "unreadable cache file"),
        (lambda t, m: m.__setitem__("entries", '[{"id": 3}]'), "unreadable cache file"),
        (lambda t, m: m.__setitem__("entries", "[" * 10**5 + "]" * 10**5), "unreadable cache file"),
        (lambda t, m: m.__setitem__("format", "something else"), "unreadable cache file"),
        ("truncate", "unreadable cache file"),
        ("pickle", "unreadable cache file"),
    ],
    ids=["u-shape", "s-nan", "s-negative", "u-missing", "entries-garbage", "entries-fields",
         "entries-deep", "format", "truncated", "pickle"],
)  # fmt: skip
def test_damaged_cache_entries_are_recomputed_with_a_warning(tmp_path, damage, note):
    root = write_state_run(tmp_path / "run", small_states((0, 1, 2)), SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    name = "model.layers.1.self_attn.q_proj.weight"
    path = FactorCache(out / "cache", {}).tensor(name).path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"entries": _Boom()}))
    else:
        _rewrite(path, damage)
    again, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    assert again.svd_calls >= 1
    assert [w for w in again.warnings if note in w and str(path) in w], again.warnings
    assert not os.path.exists("/tmp/opdlens-cache-pickle-ran")
    fresh = compute_analysis(open_run(root), AnalyzeOptions(ranks=(1, 4), workers=1)).frame
    pd.testing.assert_frame_equal(again.frame, fresh)
    third, _ = write_analysis(open_run(root), out, ranks=(1, 4), workers=1)
    assert third.svd_calls == 0 and not third.warnings  # rebuilt


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_cache_write_failure_is_one_line_and_leaves_no_temp_file(tmp_path):
    root = _big_run(tmp_path / "run")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "opdlens", "analyze", str(root), "--out", str(out),
         "--ranks", "16", "--workers", "1", "--quiet"],
        capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(100_000),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    big = FactorCache(out / "cache", {}).tensor(BIG).path
    assert str(big) in lines[0] and "Cannot write the output" in lines[0]
    assert not [p.name for p in (out / "cache").iterdir() if "tmp" in p.name]


def test_spectrum_from_cache_only(tmp_path):
    states = small_states((0, 1, 2))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    top, full = tmp_path / "top", tmp_path / "full"
    write_analysis(open_run(root), top, ranks=RANKS, workers=1)
    write_analysis(open_run(root), full, ranks=RANKS, workers=1, full_spectrum=True)
    shutil.move(root, tmp_path / "elsewhere")  # no checkpoint file left to read
    name = "model.layers.1.mlp.down_proj.weight"
    ref = torch.linalg.svdvals(states[2][name].double() - states[0][name].double())
    cached = FactorCache.open(top).spectrum(name, 2)
    assert cached is not None and not cached.full and cached.values.numel() == max(RANKS)
    np.testing.assert_allclose(cached.values.numpy(), ref[: max(RANKS)], rtol=1e-3)
    whole = FactorCache.open(full).spectrum(name, 2, part=None, expert=None)
    assert whole is not None and whole.full and whole.values.numel() == ref.numel()
    np.testing.assert_allclose(whole.values.numpy(), ref, rtol=1e-3, atol=1e-6 * float(ref[0]))
    assert FactorCache.open(top).spectrum(name, 2, part="q") is None  # no such slice
    assert FactorCache.open(top).spectrum("model.no_such.weight", 2) is None
    assert (slice_key(), slice_key(3), slice_key(None, "q"), slice_key(3, "q")) == (
        "all",
        "e3",
        "q",
        "e3/q",
    )
    FactorCache.open(top).tensor(name).path.write_bytes(b"garbage")
    with pytest.raises(OpdlensError, match="unreadable cache file.*run `opdlens analyze` again"):
        FactorCache.open(top).spectrum(name, 2)


@pytest.mark.parametrize("bug", [ValueError, TypeError, KeyError])
def test_a_bug_while_loading_an_entry_propagates_and_keeps_the_cache(tmp_path, monkeypatch, bug):
    """Only file-format errors rebuild a cache file; a bug's exception keeps its traceback."""
    import opdlens.analysis.cache as cache

    root = write_state_run(tmp_path / "run", small_states((0, 1)), SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=(1,), workers=1)
    files = {p: p.read_bytes() for p in (out / "cache").glob("*.safetensors")}
    real_open = cache.safe_open

    class BuggyReader:  # the library's reader, with a bug in reading one entry's arrays
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def metadata(self):
            return self.f.metadata()

        def keys(self):
            return self.f.keys()

        def get_tensor(self, name):
            raise bug(f"a bug while loading {name}")

    monkeypatch.setattr(cache, "safe_open", BuggyReader)
    with pytest.raises(bug, match="a bug while loading 0.u") as info:
        write_analysis(open_run(root), out, ranks=(1,), workers=1)
    assert any(entry.name == "_load" for entry in info.traceback)  # raised where it happened
    assert {p: p.read_bytes() for p in files} == files  # not rebuilt over the bug
