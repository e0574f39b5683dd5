"""BEiT's relative position bias: index generation for any window and the gather from the learned table.

Bao et al. 2021, "BEiT: BERT Pre-Training of Image Transformers", §2.6 (after Raffel et al.'s T5 bias): every
attention head adds a learned scalar to the score of query i and key j, looked up by their relative position.
transformers/models/beit/modeling_beit.py `BeitRelativePositionBias.generate_relative_position_index` (5.23):

    coords  (2, N)          the (row, col) of each of the N = Wh·Ww patches, row-major
    rel     (N, N, 2)       coords[:, i] - coords[:, j], shifted to start at 0:
    index   = (dy + Wh - 1) · (2·Ww - 1) + (dx + Ww - 1)        in [0, (2Wh-1)(2Ww-1))
    the class token adds one row and one column, with 3 extra table entries after the grid ones:
        index[0, 1:] = T - 3   (cls -> token),   index[1:, 0] = T - 2   (token -> cls),   index[0, 0] = T - 1
    where T = (2Wh-1)(2Ww-1) + 3 is the table length.

The bias of head h is then bias[h, i, j] = table[index[i, j], h] (`relative_position_bias_table[index.view(-1)]`
followed by `.view(N+1, N+1, H).permute(2, 0, 1)`); the attention kernel adds it to the scores inside its fused
scale + bias + softmax loop (`attention(..., bias=...)`).
"""

import numpy as np

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit


def _check_window(window_h, window_w):
    if int(window_h) < 1 or int(window_w) < 1:
        raise InputError(f"relative position index: window ({window_h}, {window_w}) must be at least 1x1 patches")


def _check_gather(table, index):
    check_float(table, "table")
    if table.ndim != 2:
        raise InputError(f"relative position bias: table must be (num_relative_distance, H), got {table.shape}")
    if not isinstance(index, np.ndarray) or index.ndim != 2 or index.dtype.kind not in "iu":
        raise InputError("relative position bias: index must be a 2-D integer array")
    if index.size and (index.min() < 0 or index.max() >= table.shape[0]):
        raise InputError(f"relative position bias: index values [{index.min()}, {index.max()}] outside the table "
                         f"of {table.shape[0]} rows")


def table_length(window_h, window_w):
    """(2Wh - 1)(2Ww - 1) relative offsets + 3 class-token entries."""
    return (2 * window_h - 1) * (2 * window_w - 1) + 3


# ---------------------------------------------------------------------------------------- NumPy twins


def relative_position_index_numpy(window_h, window_w):
    """(N+1, N+1) int64 table row of every (query, key) pair, N = window_h · window_w (class token first)."""
    _check_window(window_h, window_w)
    wh, ww = int(window_h), int(window_w)
    T = table_length(wh, ww)
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N) query minus key
    index = np.empty((wh * ww + 1,) * 2, np.int64)  # (N+1, N+1)
    index[1:, 1:] = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
    index[0, :] = T - 3  # cls -> token
    index[:, 0] = T - 2  # token -> cls
    index[0, 0] = T - 1  # cls -> cls
    return index


def relative_position_bias_numpy(table, index):
    """table (T, H), index (M, M) -> bias (H, M, M) with bias[h, i, j] = table[index[i, j], h]."""
    _check_gather(table, index)
    return np.ascontiguousarray(table[index].transpose(2, 0, 1))  # (M, M, H) -> (H, M, M)


# ---------------------------------------------------------------------------------------- Numba kernels


@njit(cache=True)
def _index_kernel(wh, ww, out):
    # out: (N+1, N+1) int64; token t = row * ww + col, class token at 0.
    T = (2 * wh - 1) * (2 * ww - 1) + 3
    n = wh * ww
    for i in range(n):
        for j in range(n):
            dy = i // ww - j // ww
            dx = i % ww - j % ww
            out[i + 1, j + 1] = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)
    for j in range(n + 1):
        out[0, j] = T - 3
        out[j, 0] = T - 2
    out[0, 0] = T - 1


@njit(cache=True)
def _gather_kernel(table_t, index, out):
    # table_t: (H, T) (the table transposed: each head's column contiguous); index: (M, M); out: (H, M, M).
    # Serial on purpose: a memory-bound gather (BEiT-B: 0.5 M values, ~0.4 ms) gains nothing from threads, and a
    # parallel launch on a busy 2-core machine cost ~15 ms.
    M = index.shape[0]
    for h in range(table_t.shape[0]):
        row = table_t[h]
        for i in range(M):
            for j in range(M):
                out[h, i, j] = row[index[i, j]]


def relative_position_index_numba(window_h, window_w):
    """Numba twin of `relative_position_index_numpy`."""
    _check_window(window_h, window_w)
    wh, ww = int(window_h), int(window_w)
    out = np.empty((wh * ww + 1,) * 2, np.int64)
    _index_kernel(wh, ww, out)
    return out


def relative_position_bias_numba(table, index):
    """Numba twin of `relative_position_bias_numpy`: one pass over the output, the table transposed first."""
    _check_gather(table, index)
    table_t = np.ascontiguousarray(table.T)  # (H, T)
    index = np.require(index, np.int64, ["C", "A"])
    out = np.empty((table.shape[1],) + index.shape, table.dtype)
    if out.size:
        _gather_kernel(table_t, index, out)
    return out
