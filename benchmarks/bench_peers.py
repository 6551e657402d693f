"""Issue 11: `opdlens analyze` against weightwatcher, modeldelta and the I/O floor on one Qwen3 pair.

    python benchmarks/bench_peers.py            # pair, peers (when installed), planted spectra
    python benchmarks/bench_peers.py --no-peers # opdlens, the floor and the planted spectra only

The floor and opdlens run --repeat times (3), interleaved, and the medians are compared; each
peer runs once (40-200 s each).

The pair: a Qwen3 model built from its config with transformers (12 layers, hidden 1024,
intermediate 2816, 16 query / 8 key-value heads of 64, vocabulary 32000, untied, bf16, 207 M
parameters) as checkpoint-0, and checkpoint-1 = checkpoint-0 + a rank-4 update (1 % of ‖W_0‖_F)
plus Gaussian noise (0.3 % of ‖W_0‖_F) on every matrix, rounded to bf16 — a few strong
directions over a noise bulk. Every tool runs as a whole fresh process, one after the other.
The peers are optional (`pip install 'opdlens[bench]'`); the script says when one is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "analysis")]
from _measure import measure, opdlens_cmd  # noqa: E402

PAIR = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
    num_attention_heads=16, num_key_value_heads=8, head_dim=64, tie_word_embeddings=False,
)  # fmt: skip
SIGNAL, NOISE = 1e-2, 3e-3  # ‖rank-4 update‖_F and ‖noise‖_F relative to ‖W_0‖_F
RANKS = "1,4,16"

# Read every tensor of both checkpoints and form Δ in float32; no metric.
IO_FLOOR = """
import sys
from safetensors import safe_open
a, b = (safe_open(p + "/model.safetensors", "pt") for p in sys.argv[1:3])
for name in a.keys():
    delta = b.get_tensor(name).float() - a.get_tensor(name).float()
"""

WEIGHTWATCHER = """
import sys
import weightwatcher as ww
details = ww.WeightWatcher().analyze(model=sys.argv[2], base_model=sys.argv[1])
details.to_csv(sys.argv[3], index=False)
"""


def build_pair(root: Path) -> Path:
    """Write run/checkpoint-0 and run/checkpoint-1 (model.safetensors + config.json) once."""
    run = root / "qwen3-pair"
    if (run / "complete.json").is_file():
        return run
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(**PAIR, torch_dtype="bfloat16")
    model = Qwen3ForCausalLM(config)  # transformers' own initialisation (std 0.02)
    base = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    del model
    write_pair(run, base, config.to_json_string(), {"pair": PAIR})
    return run


def write_pair(run: Path, base: dict[str, torch.Tensor], config_json: str, about: dict) -> None:
    """checkpoint-0 = base, checkpoint-1 = base + rank-4 signal + noise on every matrix (bf16)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    moved = {}
    for name, w in base.items():
        if w.dim() != 2:
            moved[name] = w
            continue
        w32 = w.float()
        norm = float(w32.norm())
        a = torch.linalg.qr(torch.randn(w.shape[0], 4, generator=g))[0]
        b = torch.linalg.qr(torch.randn(w.shape[1], 4, generator=g))[0]
        signal = (a * torch.tensor([1.0, 0.7, 0.5, 0.35])) @ b.T  # (out, in), rank 4
        signal *= SIGNAL * norm / float(signal.norm())
        noise = torch.randn(w.shape, generator=g)
        noise *= NOISE * norm / float(noise.norm())
        moved[name] = (w32 + signal + noise).to(torch.bfloat16)
    for step, state in ((0, base), (1, moved)):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True, exist_ok=True)
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(config_json)
    (run / "complete.json").write_text(json.dumps({**about, "signal": SIGNAL, "noise": NOISE}))


def opdlens_rows(out: Path) -> dict[str, dict[str, float]]:
    """stable_rank and energy_k16 per matrix from opdlens' metrics.parquet (step 1)."""
    import pandas as pd

    df = pd.read_parquet(out / "metrics.parquet")
    df = df[(df["step"] == 1) & (df["span"] == "cumulative") & (df["cols"] > 1)]
    return {
        r.tensor: {"stable_rank": r.stable_rank, "energy_k16": r.energy_k16}
        for r in df.itertuples()
    }


def modeldelta_rows(path: Path) -> dict[str, dict[str, float]]:
    """modeldelta's top-16 energy share and σ_1 (full float32 svdvals), per matrix."""
    mods = json.loads(path.read_text())["modules"]
    return {
        m["name"]: {
            # concentration_top_k = Σ_{i≤16} σ_i² / Σ_i σ_i², both from its full float32 spectrum
            "energy_k16": m["concentration_top_k"],
            # It reports σ_1 and ‖Δ‖_F, not a stable rank: ‖Δ‖_F² / σ_1², design.md's definition
            "stable_rank": m["frob_norm"] ** 2 / m["top_singular_values"][0] ** 2,
        }
        for m in mods
        if m.get("has_svd")
    }


def weightwatcher_rows(path: Path) -> dict[str, dict[str, float]]:
    """weightwatcher's stable rank (Σλ / λ_max of the eigenvalues of ΔᵀΔ), per matrix."""
    import pandas as pd

    df = pd.read_csv(path)
    return {r["name"]: {"stable_rank": float(r["stable_rank"])} for _, r in df.iterrows()}


def agreement(
    ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]
) -> tuple[int, int, dict[str, float]]:
    """(agreeing matrices, compared matrices, worst error per metric) on the shared names."""
    worst: dict[str, float] = {}
    agree = compared = 0
    for name, row in theirs.items():
        mine = ours.get(name) or ours.get(name.removesuffix(".weight") + ".weight")
        if mine is None:
            continue
        compared += 1
        ok = True
        for key, value in row.items():
            if key == "stable_rank":
                err, tol = abs(mine[key] - value) / value, 1e-2
            else:
                err, tol = abs(mine[key] - value), 1e-3
            worst[key] = max(worst.get(key, 0.0), err)
            ok &= err <= tol
        agree += ok
    return agree, compared, worst


def planted_fallbacks() -> list[str]:
    """Share of exact fallbacks of top_k_svd(k=16), cold then warm, on planted spectra."""
    from planted import SPECTRA, planted_spectrum

    from opdlens.analysis.linalg import top_k_svd

    shapes = [(1024, 1024), (512, 1024), (2816, 1024), (1024, 2816), (32000, 1024)]
    lines, total, fell, worst = [], 0, 0, 0.0
    for kind in SPECTRA:
        for share in (0.01, 0.05, 0.1, 0.2):
            got = []
            for m, n in shapes:
                d0 = planted_spectrum(m, n, kind, share, seed=1)
                d1 = planted_spectrum(m, n, kind, share, seed=2, scale=1.1)
                top0 = top_k_svd(d0, 16)
                top1 = top_k_svd(d1, 16, init=top0.V)
                for d, top in ((d0, top0), (d1, top1)):
                    total += 1
                    fell += top.method == "exact"
                    worst = max(worst, _energy_error(d, top.S))
                got.append(f"{m}×{n} {_label(top0)}/{_label(top1)}")
            lines.append(f"    {kind:14s} bulk {share:4.0%}: " + ", ".join(got))
    lines.append(
        f"    exact fallbacks: {fell}/{total} = {fell / total:.0%} (target ≤ 10 %); "
        f"max |Δ energy_k| (K = 1, 4, 16) vs float64 = {worst:.1e} (contract 1e-3)"
    )
    return lines


def _label(top: object) -> str:
    method, passes = top.method, top.iterations  # type: ignore[attr-defined]
    return "fallback" if method == "exact" and passes else f"{passes}"


def _energy_error(d: torch.Tensor, s: torch.Tensor) -> float:
    dd = d.double()
    gram = dd.T @ dd if dd.shape[0] >= dd.shape[1] else dd @ dd.T
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
    total = float(dd.pow(2).sum())
    return max(abs(float(ev[:k].sum()) - float((s[:k] ** 2).sum())) / total for k in (1, 4, 16))


def _median(runs: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    """The run of median time (the upper middle one for an even count)."""
    return sorted(runs)[len(runs) // 2]


def _seconds(runs: list[tuple[float, int, int]]) -> str:
    return ", ".join(f"{t:.1f}" for t, _, _ in runs) + " s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/opdlens-bench"))
    parser.add_argument("--no-peers", action="store_true", help="skip weightwatcher and modeldelta")
    parser.add_argument("--no-planted", action="store_true", help="skip the planted spectra")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and opdlens")
    args = parser.parse_args()
    run = build_pair(args.workdir)
    ck0, ck1 = (str(run / f"checkpoint-{s}") for s in (0, 1))
    py = [sys.executable, "-c"]
    gib = 1 / 2**20
    measure(py + [IO_FLOOR, ck0, ck1])  # warm-up: page cache and imports
    out = args.workdir / "peers-opdlens"
    floors, ops = [], []
    for _ in range(args.repeat):  # interleaved; the median of each (this VM's timings wander)
        floors.append(measure(py + [IO_FLOOR, ck0, ck1]))
        shutil.rmtree(out, ignore_errors=True)  # a fresh output: no cache hits
        ops.append(measure(opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", RANKS, "--quiet")))  # fmt: skip
    floor_t, floor_rss, _ = _median(floors)
    op_t, op_rss, _ = _median(ops)
    print(f"floor runs {_seconds(floors)}, opdlens runs {_seconds(ops)}: medians below")
    prov = json.loads((out / "provenance.json").read_text())
    ours = opdlens_rows(out)
    print(f"pair: {run} ({len(ours)} matrices)")
    print(
        f"  I/O floor (read both, Δ in float32):  {floor_t:6.1f} s  peak RSS {floor_rss * gib:5.0f} MiB"
    )
    print(f"  opdlens analyze --ranks {RANKS}:      {op_t:6.1f} s  peak RSS {op_rss * gib:5.0f} MiB"
          f"  → opdlens / floor = {op_t / floor_t:.2f} (target ≤ 2)")  # fmt: skip
    methods = prov.get("svd_methods", {})
    calls = sum(methods.values())
    fell = methods.get("fallback_to_exact", 0)
    print(f"  SVD calls by method (provenance.json): {methods}; fell back to exact: "
          f"{fell}/{calls} = {fell / max(calls, 1):.0%} (target ≤ 10 %)")  # fmt: skip
    peers = [
        ("weightwatcher", "weightwatcher", "analyze(base_model=…)",
         py + [WEIGHTWATCHER, ck0, ck1, str(args.workdir / "ww.csv")], args.workdir / "ww.csv",
         weightwatcher_rows),
        ("modeldelta", "modeldelta", "--top-k 16",
         [sys.executable, "-m", "modeldelta", ck0, ck1, "--top-k", "16", "-q",
          "-o", str(args.workdir / "modeldelta.json")], args.workdir / "modeldelta.json",
         modeldelta_rows),
    ]  # fmt: skip
    for name, module, how, cmd, path, rows in peers:
        if args.no_peers:
            break
        if importlib.util.find_spec(module) is None:
            print(f"  {name}: not installed (pip install 'opdlens[bench]'); skipped")
            continue
        path.unlink(missing_ok=True)
        t, rss, _ = measure(cmd)
        agree, compared, worst = agreement(ours, rows(path))
        errs = ", ".join(f"max {k} error {v:.1e}" for k, v in worst.items())
        print(f"  {name} {how}: {t:6.1f} s  peak RSS {rss * gib:5.0f} MiB  → {name} / opdlens = "
              f"{t / op_t:.1f} (target ≥ 10); agrees on {agree}/{compared} matrices ({errs})")  # fmt: skip
        # opdlens reads both checkpoints too, so no analysis can beat the floor: this is the
        # highest peer / opdlens ratio reachable on this machine with this reader.
        print(f"    {name} / floor = {t / floor_t:.1f}: the ceiling of {name} / opdlens here")
    if not args.no_planted:
        print("planted spectra, top_k_svd(k=16) per shape: passes cold/warm (or fallback)")
        torch.set_num_threads(1)
        print("\n".join(planted_fallbacks()))
    if torch.cuda.is_available():
        shutil.rmtree(out, ignore_errors=True)
        cmd = opdlens_cmd("analyze", str(run), "--out", str(out), "--ranks", RANKS, "--quiet",
                          "--device", "cuda")  # fmt: skip
        gpu_t, gpu_rss, _ = measure(cmd)
        print(f"  opdlens analyze --device cuda ({torch.cuda.get_device_name()}): {gpu_t:6.1f} s"
              f"  peak RSS {gpu_rss * gib:5.0f} MiB  → / floor = {gpu_t / floor_t:.2f}")  # fmt: skip
    else:
        print("GPU: none on this machine (with one, the script also times --device cuda)")
    print(f"measured {time.strftime('%Y-%m-%d %H:%M')}; machine shared, figures noisy")


if __name__ == "__main__":
    main()
