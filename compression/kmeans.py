"""k-means for weight sharing, fast enough to run on every layer of a large network.

Names: `X` (n, d) the sub-vectors, `M` (n, d) their masks (1 = kept weight, 0 = pruned or
padding), `C` (k, d) the centroids (the codebook), `codes` (n,) the index of each sub-vector's
centroid. A pruned entry neither counts in a distance nor pulls a centroid: the distance of
x to c is sum_j M_j (x_j - c_j)^2 and a centroid's coordinate j is the mean of its members'
kept values in coordinate j.

Multi-dimensional k-means trains on a sample (k-means++ start, Lloyd iterations), then assigns
every sub-vector in chunks, so memory stays bounded, and refits each centroid to all its
members. Scalar k-means works on the histogram of the weights' float16 values (at most 65,536
distinct values, however large the layer), then assigns every weight once.
"""

from __future__ import annotations

import numpy as np
import torch

INIT_POINTS_PER_CENTROID = 16  # k-means++ runs on a sample this many times k
CPU_CHUNK_ELEMENTS = 1 << 20  # (rows, k) distance blocks of 4 MiB stay in cache
CUDA_CHUNK_ELEMENTS = 1 << 26


def kmeans(
    X: torch.Tensor,
    M: torch.Tensor | None,
    n_centroids: int,
    *,
    n_iter: int = 25,
    samples_per_centroid: int = 32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of X (n, d); returns the codebook (k, d) and codes (n,) int64."""
    n = X.shape[0]
    k = min(n_centroids, n)
    generator = torch.Generator(device=X.device).manual_seed(seed)
    n_sample = min(n, samples_per_centroid * k)
    if n_sample < n:
        index = torch.randint(n, (n_sample,), generator=generator, device=X.device)
        Xs, Ms = X[index], None if M is None else M[index]  # (n_sample, d)
    else:
        Xs, Ms = X, M
    C = _kmeans_plusplus(Xs, Ms, k, generator)  # (k, d)
    tolerance = 1e-4 * float(Xs.var(0).mean()) if n_sample > 1 else 0.0
    for _ in range(n_iter):
        codes, distances = _assign(Xs, Ms, C)
        C_new = _update(Xs, Ms, codes, C)
        _reseed_empty(C_new, Xs, codes, distances)
        shift = float((C_new - C).pow(2).sum())
        C = C_new
        if shift <= tolerance:
            break
    codes, _ = _assign(X, M, C)
    return _update(X, M, codes, C), codes


def kmeans_1d(
    values: torch.Tensor, n_centroids: int, *, n_iter: int = 100, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar k-means of `values` (n,); returns the codebook (k, 1) and codes (n,) int64."""
    keys = values.to(torch.float16).view(torch.int16).to(torch.int32).add_(32768)  # (n,)
    counts = torch.bincount(keys, minlength=65536)  # (65536,)
    present = counts.nonzero().squeeze(1)
    points = (present - 32768).to(torch.int16).view(torch.float16).double().cpu().numpy()
    weights = counts[present].double().cpu().numpy()
    order = np.argsort(points, kind="stable")
    points, weights = points[order], weights[order]  # (m,) sorted distinct float16 values

    k = min(n_centroids, points.size)
    if k == points.size:
        centers = points
    else:
        rng = np.random.default_rng(seed)
        centers = np.sort(_plusplus_1d(points, weights, k, rng))
        centers = _lloyd_1d(points, weights, centers, n_iter)
    # Each distinct float16 value goes to its nearest centroid; every weight follows its value.
    point_codes = np.searchsorted((centers[1:] + centers[:-1]) / 2, points)  # (m,)
    lookup = torch.zeros(65536, dtype=torch.int64, device=values.device)
    lookup[present[torch.from_numpy(order).to(present.device)]] = torch.from_numpy(point_codes).to(
        values.device
    )
    codes = lookup.index_select(0, keys)  # (n,)
    # Final centroids: the means of the values each one now holds.
    members = np.bincount(point_codes, weights=weights, minlength=k)
    sums = np.bincount(point_codes, weights=weights * points, minlength=k)
    centers = np.where(members > 0, sums / np.maximum(members, 1e-300), centers)
    C = torch.from_numpy(centers).to(values.device, torch.float32)  # (k,)
    return C.unsqueeze(1), codes


def _chunk_rows(X: torch.Tensor, k: int) -> int:
    budget = CUDA_CHUNK_ELEMENTS if X.is_cuda else CPU_CHUNK_ELEMENTS
    return max(256, budget // k)


def _assign(
    X: torch.Tensor, M: torch.Tensor | None, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row, and its masked squared distance, in bounded chunks.

    The argmin runs as a plain minimum: a distance is >= 0, so its float32 bits order like
    integers, and the centroid's index (k <= 256) replaces the lowest 8 mantissa bits. Ties
    within 2^-15 of relative distance go to the lower index; CPU reductions that track an index
    are several times slower than this.
    """
    n = X.shape[0]
    k = C.shape[0]
    codes = torch.empty(n, dtype=torch.int64, device=X.device)
    distances = torch.empty(n, dtype=torch.float32, device=X.device)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, each term restricted to the kept entries; one
    # matrix product does the first two through an extra column of ||x||^2 against ones.
    Ct = torch.cat([-2.0 * C.t(), C.new_ones(1, k)])  # (d + 1, k)
    C2 = C.pow(2)  # (k, d)
    C2_sum = C2.sum(1)  # (k,)
    index = torch.arange(k, dtype=torch.int32, device=X.device)
    step = _chunk_rows(X, k)
    block = torch.empty(min(step, n), k, dtype=torch.float32, device=X.device)
    for start in range(0, n, step):
        Xc = X[start : start + step]  # (rows, d)
        Xc = torch.cat([Xc, Xc.pow(2).sum(1, keepdim=True)], 1)  # (rows, d + 1)
        scores = block[: Xc.shape[0]]  # (rows, k)
        bias = C2_sum if M is None else M[start : start + step] @ C2.t()
        torch.addmm(bias, Xc, Ct, out=scores)
        # Rounding can leave a distance slightly below zero; such a row still gets a nearest
        # centroid, and its distance is clamped below.
        packed = scores.view(torch.int32).bitwise_and_(-256).bitwise_or_(index).amin(1)  # (rows,)
        codes[start : start + step] = packed.bitwise_and(255)
        distances[start : start + step] = packed.bitwise_and_(-256).view(torch.float32)
    return codes, distances.clamp_(min=0.0)


def _update(
    X: torch.Tensor, M: torch.Tensor | None, codes: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Each centroid moved to its members' mean, coordinate by coordinate over kept entries."""
    k, d = C.shape
    # float32 sums are ample: the codebook is stored in float16.
    sums = torch.zeros(k, d, dtype=X.dtype, device=X.device).index_add_(0, codes, X)
    if M is None:
        counts = torch.bincount(codes, minlength=k).to(X.dtype).unsqueeze(1).expand(k, d)
    else:
        counts = torch.zeros(k, d, dtype=X.dtype, device=X.device).index_add_(0, codes, M)
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), C)


def _reseed_empty(
    C: torch.Tensor, X: torch.Tensor, codes: torch.Tensor, distances: torch.Tensor
) -> None:
    """Move centroids that lost all members onto the points farthest from their centroids."""
    members = torch.bincount(codes, minlength=C.shape[0])
    empty = (members == 0).nonzero().squeeze(1)
    if empty.numel():
        farthest = distances.topk(min(empty.numel(), X.shape[0])).indices
        C[empty[: farthest.numel()]] = X[farthest]


def _kmeans_plusplus(
    X: torch.Tensor, M: torch.Tensor | None, k: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ (D^2 sampling) on a sample of the rows, in numpy where small loops are cheap."""
    n = X.shape[0]
    m = min(n, INIT_POINTS_PER_CENTROID * k)
    index = torch.randperm(n, generator=generator, device=X.device)[:m]
    points = X[index].double().cpu().numpy()  # (m, d)
    masks = None if M is None else M[index].double().cpu().numpy()
    squares = (points**2).sum(1)  # (m,)
    seed = int(torch.randint(2**31, (1,), generator=generator, device=X.device))
    rng = np.random.default_rng(seed)

    def sq_distance(center: np.ndarray) -> np.ndarray:
        center_term = center @ center if masks is None else masks @ (center**2)
        return np.maximum(squares - 2.0 * (points @ center) + center_term, 0.0)  # (m,)

    chosen = [int(rng.integers(m))]
    nearest = sq_distance(points[chosen[0]])
    uniforms = rng.random(k)
    for step in range(1, k):
        cumulative = np.cumsum(nearest)
        if cumulative[-1] <= 0:  # fewer distinct points than centroids: repeat one
            chosen.append(chosen[-1])
            continue
        pick = min(int(np.searchsorted(cumulative, uniforms[step] * cumulative[-1])), m - 1)
        chosen.append(pick)
        np.minimum(nearest, sq_distance(points[pick]), out=nearest)
    return torch.from_numpy(points[chosen]).to(X.device, X.dtype)


def _plusplus_1d(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Weighted k-means++ on sorted distinct values, coarsened to a few points per centroid."""
    groups = max(1, points.size // (4 * k))
    if groups > 1:
        # Merge runs of neighbouring values into their weighted mean: same shape, fewer points.
        ends = np.arange(groups, points.size + groups, groups).clip(max=points.size)
        starts = np.concatenate(([0], ends[:-1]))
        mass = np.add.reduceat(weights, starts)
        points = np.add.reduceat(points * weights, starts) / mass
        weights = mass
    chosen = [points[rng.choice(points.size, p=weights / weights.sum())]]
    nearest = weights * (points - chosen[0]) ** 2
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            break
        pick = min(int(np.searchsorted(np.cumsum(nearest), rng.random() * total)), points.size - 1)
        chosen.append(points[pick])
        np.minimum(nearest, weights * (points - points[pick]) ** 2, out=nearest)
    centers = np.unique(np.array(chosen))
    if centers.size < k:  # too few distinct picks: fill with evenly spaced values
        extra = np.linspace(points[0], points[-1], k - centers.size + 2)[1:-1]
        centers = np.concatenate((centers, extra))
    return centers


def _lloyd_1d(
    points: np.ndarray, weights: np.ndarray, centers: np.ndarray, n_iter: int
) -> np.ndarray:
    """Lloyd's iterations on sorted weighted values: each cluster is a contiguous segment."""
    mass = np.concatenate(([0.0], np.cumsum(weights)))  # (m + 1,)
    moment = np.concatenate(([0.0], np.cumsum(weights * points)))
    for _ in range(n_iter):
        cuts = np.searchsorted(points, (centers[1:] + centers[:-1]) / 2)  # (k - 1,)
        edges = np.concatenate(([0], cuts, [points.size]))
        segment_mass = mass[edges[1:]] - mass[edges[:-1]]
        segment_moment = moment[edges[1:]] - moment[edges[:-1]]
        updated = np.where(
            segment_mass > 0, segment_moment / np.maximum(segment_mass, 1e-300), centers
        )
        updated.sort()
        if np.array_equal(updated, centers):
            break
        centers = updated
    return centers
