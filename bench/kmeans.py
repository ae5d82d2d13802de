"""k-means for weight sharing: pqz against scikit-learn and faiss, in one run.

Weights: VGG-16-for-CIFAR-10 (all 16 weight tensors, 15.2M values) and AlexNet's classifier
(9216x4096, 4096x4096, 4096x1000: 58.6M values), each layer clustered on its own, as
`quantize_` does. Reported: total wall time, relative weight error ||W - W_hat|| / ||W|| over the
whole set, and both as ratios against scikit-learn's KMeans (n_init=1, the same iterations).

    python bench/kmeans.py                      # everything, 2 threads (several minutes)
    python bench/kmeans.py --sets vgg16 --skip sklearn
    python bench/kmeans.py --device cuda        # pqz on the GPU (the baselines stay on CPU)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits
from torch import nn

from compression import build_model, kmeans, kmeans_1d

N_ITER = 25
SEED = 0

Clusterer = Callable[[torch.Tensor, int, int], torch.Tensor]  # (X (n, d), k, d) -> X_hat


@dataclass
class Row:
    weights: str
    method: str
    block_size: int
    n_centroids: int
    seconds: float
    error: float

    @property
    def bits_per_weight(self) -> float:
        return float(np.log2(self.n_centroids)) / self.block_size


def vgg16_weights() -> list[torch.Tensor]:
    model = build_model("vgg16-cifar")
    return [p.detach() for p in model.parameters() if p.dim() > 1]


def alexnet_classifier_weights() -> list[torch.Tensor]:
    shapes = [(9216, 4096), (4096, 4096), (4096, 1000)]
    return [nn.Linear(n_in, n_out).weight.detach() for n_in, n_out in shapes]


def pqz_clusterer(device: torch.device) -> Clusterer:
    def run(X: torch.Tensor, k: int, d: int) -> torch.Tensor:
        X = X.to(device)
        if d == 1:
            codebook, codes = kmeans_1d(X.flatten(), k, n_iter=N_ITER, seed=SEED)
        else:
            codebook, codes = kmeans(X, None, k, n_iter=N_ITER, seed=SEED)
        return codebook.half().float()[codes].cpu()  # float16 codebook, as .pqz stores it

    return run


def sklearn_clusterer(X: torch.Tensor, k: int, d: int) -> torch.Tensor:
    from sklearn.cluster import KMeans

    data = X.numpy()
    k = min(k, data.shape[0])
    model = KMeans(k, n_init=1, max_iter=N_ITER, random_state=SEED, algorithm="lloyd").fit(data)
    return torch.from_numpy(model.cluster_centers_[model.labels_].astype(np.float32))


def faiss_clusterer(X: torch.Tensor, k: int, d: int) -> torch.Tensor:
    import faiss

    data = np.ascontiguousarray(X.numpy())
    k = min(k, data.shape[0])
    # faiss trains on a sample (256 points per centroid by default), then assigns everything.
    model = faiss.Kmeans(d, k, niter=N_ITER, seed=SEED, verbose=False, min_points_per_centroid=1)
    model.train(data)
    _, labels = model.index.search(data, 1)
    return torch.from_numpy(model.centroids[labels[:, 0]])


def measure(
    weights: list[torch.Tensor], clusterer: Clusterer, k: int, d: int
) -> tuple[float, float]:
    """Total seconds and relative error over all layers, each clustered on its own."""
    error = total = 0.0
    seconds = 0.0
    for weight in weights:
        flat = weight.flatten().float()
        X = (
            flat.view(-1, d)
            if flat.numel() % d == 0
            else torch.nn.functional.pad(flat, (0, d - flat.numel() % d)).view(-1, d)
        )  # (n_sub, d)
        started = time.perf_counter()
        X_hat = clusterer(X, k, d)
        seconds += time.perf_counter() - started
        error += float((X_hat.flatten()[: flat.numel()] - flat).pow(2).sum())
        total += float(flat.pow(2).sum())
    return seconds, (error / total) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default="vgg16,alexnet-fc", help="vgg16, alexnet-fc")
    parser.add_argument("--skip", default="", help="comma-separated: sklearn, faiss")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    sets = {"vgg16": vgg16_weights, "alexnet-fc": alexnet_classifier_weights}
    configs = [
        ("kmeans", 1, 256),
        ("pq", 4, 256),
        ("pq", 8, 256),
        ("kmeans", 1, 4),
        ("kmeans", 1, 2),
    ]
    baselines: list[tuple[str, Clusterer]] = []
    if "sklearn" not in skip:
        baselines.append(("scikit-learn", sklearn_clusterer))
    if "faiss" not in skip:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        baselines.append(("faiss", faiss_clusterer))

    console = Console(width=150)
    rows: list[Row] = []
    with threadpool_limits(args.threads):
        for set_name in args.sets.split(","):
            weights = sets[set_name]()
            n = sum(w.numel() for w in weights)
            console.print(f"[bold]{set_name}[/]: {len(weights)} tensors, {n / 1e6:.1f}M weights")
            pqz_run = pqz_clusterer(device)
            if device.type == "cuda":
                measure(weights[:1], pqz_run, 16, 4)  # CUDA context and kernels warm up first
            # pqz first for every configuration, then the baselines: faiss's OpenMP threads keep
            # spinning for a while after it returns and would slow whatever runs next.
            runs = [(f"pqz ({device.type})", pqz_run, config) for config in configs]
            runs += [
                (name, clusterer, config)
                for name, clusterer in baselines
                for config in configs
                if config[2] == 256
            ]
            for name, clusterer, (method, d, k) in runs:
                seconds, error = measure(weights, clusterer, k, d)
                rows.append(Row(set_name, f"{name} {method}", d, k, seconds, error))
                line = f"{name:>14} {method:6} d={d} k={k:3}: {seconds:7.2f} s, error {error:.4f}"
                console.print("  " + line)
    console.print(results_table(rows))
    console.print(equal_bits_table(rows, device.type))


def results_table(rows: list[Row]) -> Table:
    table = Table(
        title="k-means per layer: time and relative weight error (ratios vs scikit-learn)"
    )
    for column in (
        "weights",
        "method",
        "d",
        "k",
        "bits/w",
        "time s",
        "error",
        "time / sklearn",
        "error / sklearn",
    ):
        table.add_column(column, justify="left" if column in ("weights", "method") else "right")
    for row in rows:
        base = next(
            (
                other
                for other in rows
                if other.weights == row.weights
                and other.method.startswith("scikit-learn")
                and other.block_size == row.block_size
                and other.n_centroids == row.n_centroids
            ),
            None,
        )
        table.add_row(
            row.weights,
            row.method,
            str(row.block_size),
            str(row.n_centroids),
            f"{row.bits_per_weight:.2f}",
            f"{row.seconds:.2f}",
            f"{row.error:.4f}",
            f"{row.seconds / base.seconds:.3f}" if base else "",
            f"{row.error / base.error:.3f}" if base else "",
        )
    return table


def equal_bits_table(rows: list[Row], device: str) -> Table:
    """PQ against scalar k-means at the same bits per weight (codes only, codebooks aside)."""
    table = Table(title="PQ against scalar k-means at equal bits per weight (pqz)")
    for column in (
        "weights",
        "bits/w",
        "PQ",
        "PQ time s",
        "PQ error",
        "scalar",
        "scalar time s",
        "scalar error",
        "time PQ/scalar",
    ):
        table.add_column(column, justify="left" if column == "weights" else "right")
    ours = [row for row in rows if row.method.startswith(f"pqz ({device})")]
    for pq in (row for row in ours if row.block_size > 1):
        scalar = next(
            (
                r
                for r in ours
                if r.weights == pq.weights
                and r.block_size == 1
                and r.bits_per_weight == pq.bits_per_weight
            ),
            None,
        )
        if scalar is None:
            continue
        table.add_row(
            pq.weights,
            f"{pq.bits_per_weight:.0f}",
            f"d={pq.block_size} k={pq.n_centroids}",
            f"{pq.seconds:.2f}",
            f"{pq.error:.4f}",
            f"k={scalar.n_centroids}",
            f"{scalar.seconds:.2f}",
            f"{scalar.error:.4f}",
            f"{pq.seconds / scalar.seconds:.1f}",
        )
    return table


if __name__ == "__main__":
    main()
