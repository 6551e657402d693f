"""Time full SVD, exact top-k, cold and warm-started subspace iteration; run `python benchmarks/bench_linalg.py`."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from opdlens.analysis.linalg import top_k_svd


def update(m: int, n: int, seed: int, noise: float, scale: float = 1.0) -> torch.Tensor:
    """A training-like update: power-law signal on fixed subspaces (seed 0) plus fresh noise. Shape: (m, n)."""
    g = torch.Generator().manual_seed(0)
    r = min(64, m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, r, generator=g))[0]
    sig = torch.tensor([(i + 1) ** -1.5 for i in range(r)])
    g.manual_seed(seed)
    noisy = noise / (math.sqrt(m) + math.sqrt(n)) * torch.randn(m, n, generator=g)
    return scale * (u * sig) @ v.T + noisy


def best(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of `repeats` calls after one warm-up (the machine is shared)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--noise", type=float, default=1e-3)
    args = parser.parse_args()
    k = args.k
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        print(f"== threads={threads}")
        for m, n in [(1024, 3072), (3072, 1024)]:
            d0 = update(m, n, seed=1, noise=args.noise)
            d1 = update(m, n, seed=2, noise=args.noise, scale=1.1)
            prev = top_k_svd(d0, k)
            cold = top_k_svd(d1, k, method="randomized")
            warm = top_k_svd(d1, k, init=prev.V, method="subspace")
            auto = top_k_svd(d1, k, init=prev.V)
            t_full = best(lambda d=d1: torch.linalg.svd(d, full_matrices=False), args.repeats)
            t_exact = best(lambda d=d1: top_k_svd(d, k, method="exact"), args.repeats)
            t_cold = best(lambda d=d1: top_k_svd(d, k, method="randomized"), args.repeats)
            t_warm = best(
                lambda d=d1, v=prev.V: top_k_svd(d, k, init=v, method="subspace"), args.repeats
            )
            print(
                f"({m}, {n}) k={k}: full svd {t_full:.3f}s | exact(gram) {t_exact:.3f}s | "
                f"cold {t_cold:.3f}s [{cold.method}, {cold.iterations} passes] | "
                f"warm {t_warm:.3f}s [{warm.method}, {warm.iterations} passes] | auto→{auto.method}"
            )
        print("crossover (s, 3s), warm start:")
        for s in (64, 128, 192, 256, 384, 512, 768):
            d0, d1 = update(s, 3 * s, 1, args.noise), update(s, 3 * s, 2, args.noise, 1.1)
            v = top_k_svd(d0, k).V
            t_exact = best(lambda d=d1: top_k_svd(d, k, method="exact"), args.repeats)
            t_warm = best(
                lambda d=d1, v=v: top_k_svd(d, k, init=v, method="subspace"), args.repeats
            )
            t_cold = best(lambda d=d1: top_k_svd(d, k, method="randomized"), args.repeats)
            auto = top_k_svd(d1, k, init=v)
            print(
                f"  ({s}, {3 * s}): exact {t_exact * 1e3:.1f} ms, warm {t_warm * 1e3:.1f} ms, "
                f"cold {t_cold * 1e3:.1f} ms, auto→{auto.method}"
            )


if __name__ == "__main__":
    main()
