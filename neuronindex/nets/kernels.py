"""The compiled CPU kernels of pass 1: the fused map reduction and the top-list merge.

Two builds with equal results: native (`neuronindex/_pass1.cpp`, compiled at install, run on
torch's own OpenMP threads, so on every core the forward uses) and numba (one thread each; used
where the native build is absent, where it would not share torch's OpenMP runtime, or with
NEURONINDEX_NATIVE=0). In: float32 maps and numpy arrays by address; out: written in place.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

import numba
import numpy as np


def native():
    """The native pass-1 kernels (`neuronindex._pass1`, built at install from _pass1.cpp), or None
    where they were not built, where they would not share torch's OpenMP runtime, or with
    NEURONINDEX_NATIVE=0; the numba kernels stand in for them."""
    import torch

    global _native
    if _native is False:

        _native = None
        if os.environ.get("NEURONINDEX_NATIVE", "1") != "0":
            try:
                # optional compiled extension (absent where it could not be built)
                module = importlib.import_module("neuronindex._pass1")
            except ImportError:
                module = None
            runtimes = openmp_runtimes()
            if module is not None and not shares_torch_openmp(runtimes, os.path.dirname(torch.__file__)):

                print(f"warning: the native pass-1 kernels would run on a second OpenMP runtime ({', '.join(runtimes)}) "
                      "beside torch's; using the numba kernels (same results, slower pass 1). Rebuild neuronindex "
                      "against torch's libgomp to use them", file=sys.stderr)
                module = None
            _native = module
    return _native


def shares_torch_openmp(runtimes: list[str], torch_dir: str) -> bool:
    """Whether the native kernels run on torch's OpenMP runtime.

    They link `libgomp.so.1`; the loader binds that name to the library of that name already
    loaded, which is torch's own copy where torch ships one (pip's Linux wheels), or the system's
    libgomp that torch uses too. Where torch ships a different runtime (Intel's libiomp5, LLVM's
    libomp) and a libgomp.so.1 from elsewhere is mapped, the kernels would start a second pool of
    threads on the same cores. Other packages' vendored runtimes (scikit-learn's
    libgomp-<hash>.so) have other names and do not matter."""
    ours = [p for p in runtimes if os.path.basename(p).startswith("libgomp.so")]
    torchs = [p for p in runtimes if p.startswith(torch_dir.rstrip("/") + "/")]
    return not torchs or all(p in torchs for p in ours)


def openmp_runtimes() -> list[str]:
    """The OpenMP runtime libraries mapped into this process (Linux; [] where that cannot be read)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if re.search(r"/lib(g|i5|i)?omp[^/]*\.so", line)})
    except OSError:
        return []


_native = False


def row_stride(a: np.ndarray, dtype, shape) -> int:
    """Row stride (in elements) of a 2-D array the native kernels may write, after checking it."""
    if a.dtype != dtype or a.shape != shape or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        raise ValueError(f"expected a row-major {np.dtype(dtype)} array of shape {shape}, got {a.dtype} {a.shape}")
    return a.strides[0] // a.itemsize


def map_layout(acts) -> tuple:
    """(1, acts) for a channels-last map, else (0, its channels-first contiguous copy or itself):
    the layout argument and the tensor the native reduction reads."""
    import torch

    last = acts.is_contiguous(memory_format=torch.channels_last) and not acts.is_contiguous()
    return (1, acts) if last else (0, acts.contiguous())


def reduce_native(lib, acts, bar, values, vstride, loc, lstride, firing, threads, out=None) -> None:
    """The native reduction of one float32 CPU map (B, C, H, W), given checked addresses: bar
    (C,) float32, the first of B rows of values (float32) and loc (int64), strides in elements,
    and firing (C,) float64; out: where to write relu(acts) first (acts' strides), or None."""
    last, x = map_layout(acts)
    B, C, H, W = x.shape
    lib.reduce(last, x.data_ptr(), B, C, H * W, bar, values, vstride, loc, lstride, firing, threads,
               0 if out is None else out.data_ptr())


# The kernels keep one running maximum, its position and a firing count per vector lane in small
# local arrays and update them with selects, which the compiler turns into vector instructions
# (about twice the speed of the branchy loop they replace); lanes are folded at the end, the
# earliest position winning ties so the location is the first maximum in row-major order.
LANES = 64


@numba.njit(cache=True, nogil=True)
def reduce_channels_last(x, fold, threshold, values, loc, firing):  # pragma: no cover - compiled
    """x (B, P, C), read as rows of `fold` positions x C channels: per (b, c) the maximum over p
    and its first index (-1 below threshold[c]); per c the count of x > 0 added to firing."""
    B, P, C = x.shape
    K = fold * C
    rows = P // fold
    best = np.empty(K, dtype=np.float32)
    row_at = np.empty(K, dtype=np.int32)
    fired = np.empty(K, dtype=np.int32)
    for b in range(B):
        xb = x[b].reshape(rows, K)
        best[:] = -np.inf
        row_at[:] = 0
        fired[:] = 0
        for r in range(rows):
            row = xb[r]
            for j in range(K):
                v = row[j]
                better = v > best[j]
                best[j] = v if better else best[j]
                row_at[j] = np.int32(r) if better else row_at[j]
                fired[j] += np.int32(v > 0)
        for c in range(C):
            m, p, n = best[c], row_at[c] * fold, fired[c]
            for f in range(1, fold):
                j = f * C + c
                q = row_at[j] * fold + f
                if best[j] > m or (best[j] == m and q < p):
                    m, p = best[j], q
                n += fired[j]
            values[b, c] = m
            loc[b, c] = p if m >= threshold[c] else -1
            firing[c] += n


@numba.njit(cache=True, nogil=True)
def reduce_channels_first(x, threshold, values, loc, firing):  # pragma: no cover - compiled
    """x (B, C, P): as `reduce_channels_last`, each row read in chunks of K positions."""
    B, C, P = x.shape
    K = LANES if P >= 4 * LANES else min(16, P)  # short rows: fewer lanes to fold
    chunks = P // K
    best = np.empty(K, dtype=np.float32)
    at = np.empty(K, dtype=np.int32)
    fired = np.empty(K, dtype=np.int32)
    for b in range(B):
        for c in range(C):
            row = x[b, c]
            best[:] = -np.inf
            at[:] = 0
            fired[:] = 0
            for i in range(chunks):
                base = i * K
                for j in range(K):
                    v = row[base + j]
                    better = v > best[j]
                    best[j] = v if better else best[j]
                    at[j] = np.int32(base + j) if better else at[j]
                    fired[j] += np.int32(v > 0)
            m, p, n = best[0], at[0], fired[0]
            for j in range(1, K):
                if best[j] > m or (best[j] == m and at[j] < p):
                    m, p = best[j], at[j]
                n += fired[j]
            for q in range(chunks * K, P):  # the tail, after every chunked position
                v = row[q]
                if v > m:
                    m, p = v, q
                n += np.int32(v > 0)
            values[b, c] = m
            loc[b, c] = p if m >= threshold[c] else -1
            firing[c] += n


def lane_fold(channels: int, positions: int, lanes: int = 64) -> int:
    """How many positions to lay side by side so a row holds about `lanes` values."""
    k = 1
    while k * 2 * channels <= lanes and positions % (k * 2) == 0:
        k *= 2
    return k


@numba.njit(cache=True, nogil=True)
def merge_top(values, ids, ys, xs, vals, loc, image_ids, width):  # pragma: no cover - compiled
    """Per channel c, merge the batch's candidates (loc[b, c] >= 0) into the top list
    (values, ids, ys, xs)[c], kept ordered by value descending, then image id ascending.

    vals, loc (B, C); image_ids (B,); width (C,) map widths (loc is the flat index y * W + x).
    A candidate that cannot beat the list's last entry is skipped; the rest are sorted by
    insertion (few once the lists fill) and merged in place from the back, so the entries above
    the best candidate are never touched.
    """
    C, L = values.shape
    B = vals.shape[0]
    # gather each channel's candidates reading loc row by row (it is (B, C): walking a channel
    # down the batch touches a cache line per image); a count, then a fill
    start = np.zeros(C + 1, dtype=np.int64)
    for b in range(B):
        for c in range(C):
            start[c + 1] += loc[b, c] >= 0
    for c in range(C):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    rows = np.empty(start[C], dtype=np.int64)
    for b in range(B):
        for c in range(C):
            if loc[b, c] >= 0:
                rows[fill[c]] = b
                fill[c] += 1
    cv = np.empty(B, dtype=values.dtype)
    ci = np.empty(B, dtype=np.int64)
    cb = np.empty(B, dtype=np.int64)
    for c in range(C):
        last_v, last_i = values[c, L - 1], ids[c, L - 1]
        m = 0
        for n in range(start[c], start[c + 1]):
            b = rows[n]
            v, i = vals[b, c], image_ids[b]
            if v < last_v or (v == last_v and i > last_i):
                continue
            k = m
            while k > 0 and (cv[k - 1] < v or (cv[k - 1] == v and ci[k - 1] > i)):
                cv[k], ci[k], cb[k] = cv[k - 1], ci[k - 1], cb[k - 1]
                k -= 1
            cv[k], ci[k], cb[k] = v, i, b
            m += 1
        # L + m entries in all: drop the m worst, then write from position L - 1 upwards
        old, new = L - 1, m - 1
        for _ in range(m):
            if new >= 0 and (old < 0 or cv[new] < values[c, old] or (cv[new] == values[c, old] and ci[new] > ids[c, old])):
                new -= 1
            else:
                old -= 1
        w = L - 1
        while new >= 0:
            if old >= 0 and (values[c, old] < cv[new] or (values[c, old] == cv[new] and ids[c, old] > ci[new])):
                values[c, w], ids[c, w], ys[c, w], xs[c, w] = values[c, old], ids[c, old], ys[c, old], xs[c, old]
                old -= 1
            else:
                at = loc[cb[new], c]
                values[c, w], ids[c, w], ys[c, w], xs[c, w] = cv[new], ci[new], at // width[c], at % width[c]
                new -= 1
            w -= 1
