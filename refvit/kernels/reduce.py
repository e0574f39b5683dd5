"""Row reductions for the Numba kernels: sum, sum of squared deviations, maximum — in independent lanes.

A plain `for j: total += row[j]` is one chain of dependent additions: each waits for the last (~4 cycles), and
without fast-math LLVM keeps that order. The sums here allow reassociation only (fast-math flag "reassoc": no change
to NaN, infinity or signed-zero handling), so LLVM keeps SIMD lanes of partial sums (several times faster per
element, docs/speed.md "Kernel choices"); softmax and layer norm spent most of their time in these loops. The order
of the additions differs from a left-to-right sum, as torch's own vectorised reductions do; sums are float64 for
either input dtype. The maximum keeps four scalar lanes (a SIMD max reduction would need "nnan", which changes NaN
handling).
"""

from refvit.kernels.jit import njit


@njit(cache=True, fastmath={"reassoc"}, nogil=True)
def row_sum(row):
    """Σ row[j] in float64. "reassoc" (and nothing else of fast-math) lets LLVM keep SIMD lanes of partial sums."""
    total = 0.0
    for j in range(row.shape[0]):
        total += row[j]
    return total


@njit(cache=True, fastmath={"reassoc"}, nogil=True)
def row_sq_dev(row, mean):
    """Σ (row[j] - mean)² in float64, in SIMD lanes as `row_sum`."""
    total = 0.0
    for j in range(row.shape[0]):
        d = row[j] - mean
        total += d * d
    return total


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def row_max(row):
    """max(row) in four scalar lanes (one comparison chain each) for a non-empty row, NaN ignored unless it is
    row[0..3] (a NaN row element makes a softmax NaN either way: its exp joins the sum)."""
    n = row.shape[0]
    if n < 4:
        peak = row[0]
        for j in range(1, n):
            if row[j] > peak:
                peak = row[j]
        return peak
    n4 = n - n % 4
    m0, m1, m2, m3 = row[0], row[1], row[2], row[3]
    for j in range(4, n4, 4):
        if row[j] > m0:
            m0 = row[j]
        if row[j + 1] > m1:
            m1 = row[j + 1]
        if row[j + 2] > m2:
            m2 = row[j + 2]
        if row[j + 3] > m3:
            m3 = row[j + 3]
    peak = m0
    if m1 > peak:
        peak = m1
    if m2 > peak:
        peak = m2
    if m3 > peak:
        peak = m3
    for j in range(n4, n):
        if row[j] > peak:
            peak = row[j]
    return peak
