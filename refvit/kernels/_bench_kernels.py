"""Time each kernel, NumPy twin vs Numba, at ViT-B shapes (N=197 tokens, C=768, H=12 heads, MLP 3072).

    python -m refvit.kernels._bench_kernels                                  # numba cache as it is
    NUMBA_CACHE_DIR=$(mktemp -d) python -m refvit.kernels._bench_kernels     # cold: first calls compile

Columns: median ms over --repeat calls, alone and right after a NumPy (B*N, C) @ (C, 4C) matmul (as
inside a model, where OpenBLAS's worker threads are still spinning and compete with Numba's threads).
Not a test: numbers depend on the machine and on whatever else it is running.
"""

import argparse
import sys
import time


def _median_ms(fn, repeat, before=None):
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    import numpy as np

    from refvit import kernels

    npk, nbk = kernels.get("numpy"), kernels.get("numba")
    rng = np.random.default_rng(0)
    dt = np.dtype(args.dtype)
    N, C, H, hidden = 197, 768, 12, 3072

    def cases(B):
        x = rng.standard_normal((B, N, C)).astype(dt)
        w, b = rng.standard_normal(C).astype(dt), rng.standard_normal(C).astype(dt)
        h = rng.standard_normal((B, N, hidden)).astype(dt)
        hb = rng.standard_normal(hidden).astype(dt)
        q, k, v = (rng.standard_normal((B, N, C)).astype(dt) for _ in range(3))
        scores = rng.standard_normal((B, H, N, N)).astype(dt)
        grid = rng.standard_normal((C, 14, 14)).astype(dt)
        return {
            "layer_norm (B,N,C)": ("layer_norm", (x, w, b, 1e-12), {}),
            "gelu (B,N,4C)": ("gelu", (h,), {}),
            "bias_gelu (B,N,4C)": ("bias_gelu", (h, hb), {}),
            "softmax (B,H,N,N)": ("softmax", (scores,), {}),
            "attention": ("attention", (q, k, v, H, 0.125), {}),
            "attention need_probs": ("attention", (q, k, v, H, 0.125), {"need_probs": True}),
            "interpolate_bicubic 14->24": ("interpolate_bicubic", (grid, 24, 24), {}),
        }

    print(f"numba first calls (compile, or load from the on-disk cache), {dt}:")
    for label, (name, a, kw) in cases(1).items():
        t0 = time.perf_counter()
        getattr(nbk, name)(*a, **kw)
        print(f"  {label:28s} {time.perf_counter() - t0:6.2f} s")

    for B in (1, 8):
        xm = rng.standard_normal((B * N, C)).astype(dt)
        wm = rng.standard_normal((C, hidden)).astype(dt)
        matmul = lambda: xm @ wm  # noqa: E731
        print(f"\nB={B} {dt} (median ms of {args.repeat}); "
              f"numpy matmul (B*N,C)@(C,4C): {_median_ms(matmul, args.repeat):.1f}")
        print(f"  {'kernel':28s} {'numpy':>8s} {'numba':>8s}   after a matmul: {'numpy':>8s} {'numba':>8s}")
        for label, (name, a, kw) in cases(B).items():
            t = [
                _median_ms(lambda: getattr(backend, name)(*a, **kw), args.repeat, before=before)
                for before in (None, matmul)
                for backend in (npk, nbk)
            ]
            print(f"  {label:28s} {t[0]:8.2f} {t[1]:8.2f}                   {t[2]:8.2f} {t[3]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
