"""`opdlens analyze`: outputs, summary table, progress bar, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
from checkpoints import st_state  # noqa: E402
from planted import SMALL_CONFIG, small_states, write_state_run  # noqa: E402

from opdlens.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return write_state_run(tmp_path_factory.mktemp("cli"), small_states(), SMALL_CONFIG)


def _invoke(*args: str):
    return runner.invoke(app, ["analyze", *map(str, args)])


def test_writes_outputs_and_prints_the_summary(run_root, tmp_path):
    out = tmp_path / "out"
    res = _invoke(run_root, "--out", out, "--ranks", "1,4", "--workers", "1")
    assert res.exit_code == 0, res.output
    pq, csv = pd.read_parquet(out / "metrics.parquet"), pd.read_csv(out / "metrics.csv")
    assert len(pq) == len(csv) == 33
    pd.testing.assert_frame_equal(
        pq.astype({c: "object" for c in ("span", "tensor", "block", "kind", "part")}).drop(columns=["layer", "expert", "part"]),
        csv.astype({c: "object" for c in ("span", "tensor", "block", "kind")}).drop(columns=["layer", "expert", "part"]),
        check_dtype=False, rtol=1e-12,
    )  # fmt: skip
    assert pq["layer"].astype("float64").equals(csv["layer"].astype("float64"))
    prov = json.loads((out / "provenance.json").read_text())
    assert [i["step"] for i in prov["inputs"]] == [0, 1, 2, 4]
    assert all(len(i["fingerprint"]) == 40 and i["files"][0]["bytes"] > 0 for i in prov["inputs"])
    assert {"opdlens", "torch", "pandas"} <= set(prov["versions"])
    assert prov["options"]["ranks"] == [1, 4]
    assert {"open", "sweep", "frame", "write"} <= set(prov["wall_time_s"])
    assert "update_share" in res.stdout and "energy_k4" in res.stdout
    assert "mlp" in res.stdout and "final step 4" in res.stdout
    assert "analyze [" in res.stderr  # the progress bar


def test_quiet_shows_no_progress_bar(run_root, tmp_path):
    res = _invoke(run_root, "--out", tmp_path / "q", "--workers", "1", "--quiet")
    assert res.exit_code == 0 and "analyze [" not in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ranks", "1,x"], "--ranks takes comma-separated whole numbers"),
        (["--ranks", "0,4"], "'ranks' parameter of analyze must be positive integers"),
        (["--final", "3"], "--final 3 is not a saved step"),
        (["--device", "cuda"], "--device cuda was asked for"),
        (["--device", "cuda:٣"], "'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", "gpu"], "'device' parameter must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--address", "ray://x:1"], "--address is for a Ray cluster"),
        (["--sparsity-tol", "tiny"], "--sparsity-tol takes a number ≥ 0"),
        (["--sparsity-tol", "-1e-5"], "'sparsity_tol' parameter of analyze must be a finite"),
        (["--sparsity-tol", "nan"], "'sparsity_tol' parameter of analyze must be a finite"),
    ],
)
def test_bad_options_exit_with_one_line(run_root, tmp_path, args, message):
    if torch.cuda.is_available() and args == ["--device", "cuda"]:
        pytest.skip("this machine has a GPU")
    res = _invoke(run_root, "--out", tmp_path / "o", "--workers", "1", *args)
    assert res.exit_code != 0
    assert message in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_inputs_exit_with_one_line(run_root, tmp_path):
    res = _invoke(run_root, "--out", run_root / "analysis")
    assert res.exit_code != 0 and "overlaps the input" in res.stderr
    res = _invoke(tmp_path / "nope", "--out", tmp_path / "o")
    assert res.exit_code != 0 and "nope" in res.stderr and "Traceback" not in res.output
    bad = write_state_run(tmp_path / "trunc", small_states((0, 1)), SMALL_CONFIG)
    f = bad / "checkpoint-1" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    res = _invoke(bad, "--out", tmp_path / "o2", "--workers", "1")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "model.safetensors" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_options_are_checked_before_the_run_is_opened(tmp_path):
    # A bad option is reported even when the run is missing too: nothing was opened or created.
    res = _invoke(tmp_path / "no-run", "--out", tmp_path / "o", "--ranks", "0,4")
    assert res.exit_code == 2 and "'ranks' parameter of analyze" in res.stderr
    assert "no-run" not in res.stderr and not (tmp_path / "o").exists()


def test_provenance_records_every_option(run_root, tmp_path):
    out = tmp_path / "out"
    res = _invoke(run_root, "--out", out, "--ranks", "4,1", "--workers", "1", "--consecutive", "-q")
    assert res.exit_code == 0, res.output
    opts = json.loads((out / "provenance.json").read_text())["options"]
    assert opts == {
        "ranks": [1, 4], "final": None, "tensors": None, "consecutive": True,
        "full_spectrum": False, "base_geometry": False, "split_fused": True, "workers": 1,
        "executor": "local", "address": None, "device": "cpu", "sparsity_tol": 1e-5,
        "sparsity_dtype": None,
    }  # fmt: skip


def test_sparsity_columns_tolerance_and_summary(run_root, tmp_path):
    out = tmp_path / "tol"
    res = _invoke(run_root, "--out", out, "--workers", "1", "--sparsity-tol", "2e-3", "-q")
    assert res.exit_code == 0, res.output
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["options"]["sparsity_tol"] == 2e-3
    df = pd.read_parquet(out / "metrics.parquet")
    states = {s: st_state(run_root / f"checkpoint-{s}") for s in (0, 4)}
    name = "model.layers.1.mlp.down_proj.weight"
    row = df[(df["tensor"] == name) & (df["step"] == 4)].iloc[0]
    w0, w4 = states[0][name].double().numpy(), states[4][name].double().numpy()
    assert row["changed_count"] == (w0 != w4).sum()
    assert row["changed_tol_count"] == (abs(w4 - w0) > 2e-3).sum()
    assert 0 < row["changed_tol_count"] < row["changed_count"]
    # the printed block table carries the element-weighted share of each block
    mlp = df[(df["step"] == 4) & (df["block"] == "mlp")]
    share = mlp["changed_count"].sum() / mlp["numel"].sum()
    line = next(ln for ln in res.stdout.splitlines() if ln.split()[:1] == ["mlp"])
    assert "changed_frac" in res.stdout and f"{share:.4f}" in line.split()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_base_from_reuses_w0_of_an_earlier_analysis_of_the_same_base(run_root, tmp_path):
    """Run B shares run A's checkpoint-0: W_0's factors come from A's output, which stays as it
    was; B's numbers are those of an analysis that decomposed W_0 itself."""
    states = small_states(seed=1)
    states[0] = small_states()[0]  # the same base bytes as run_root's
    run_b = write_state_run(tmp_path / "b", states, SMALL_CONFIG)
    geo = ["--ranks", "1,2", "--workers", "1", "--base-geometry", "-q"]
    assert _invoke(run_root, "--out", tmp_path / "a", *geo).exit_code == 0
    before = _tree(tmp_path / "a")
    res = _invoke(run_b, "--out", tmp_path / "b-out", "--base-from", tmp_path / "a", *geo)
    assert res.exit_code == 0, res.output
    assert _tree(tmp_path / "a") == before  # only read
    prov = json.loads((tmp_path / "b-out" / "provenance.json").read_text())
    assert prov["base_from"] == [str(tmp_path / "a" / "cache")]
    assert not any(m.startswith("base_w0:") for m in prov["svd_methods"])
    assert _invoke(run_b, "--out", tmp_path / "b-alone", *geo).exit_code == 0
    alone = json.loads((tmp_path / "b-alone" / "provenance.json").read_text())
    w0_svds = sum(n for m, n in alone["svd_methods"].items() if m.startswith("base_w0:"))
    assert w0_svds > 3 and prov["cache_hits"] == alone["cache_hits"] + w0_svds
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "b-out" / "metrics.parquet"),
        pd.read_parquet(tmp_path / "b-alone" / "metrics.parquet"),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-from", "{a}"], "--base-from reuses W_0's factors for --base-geometry; add"),
        (["--base-geometry", "--base-from", "{missing}"], "no such directory"),
        (["--base-geometry", "--base-from", "{run}"], "no factor cache here"),
    ],
)
def test_base_from_errors_are_one_line_and_write_nothing(run_root, tmp_path, extra, message):
    paths = {"a": tmp_path, "missing": tmp_path / "nope", "run": run_root}
    args = [x.format(**{k: str(v) for k, v in paths.items()}) for x in extra]
    res = _invoke(run_root, "--out", tmp_path / "out", "--workers", "1", *args)
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.strip().splitlines()
    assert message in line and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
