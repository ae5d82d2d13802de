from __future__ import annotations

import pytest
import torch

from compression import kmeans, kmeans_1d


def _nearest(X: torch.Tensor, C: torch.Tensor, M: torch.Tensor | None = None) -> torch.Tensor:
    diff = (X[:, None, :] - C[None, :, :]).pow(2)  # (n, k, d)
    if M is not None:
        diff = diff * M[:, None, :]
    return diff.sum(2)  # (n, k)


def test_kmeans_finds_well_separated_clusters() -> None:
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    labels = torch.arange(4).repeat_interleave(250)
    X = centers[labels] + 0.1 * torch.randn(1000, 2)
    codebook, codes = kmeans(X, None, 4, seed=1)
    # Each true cluster maps to one centroid, and that centroid sits at its center.
    for label in range(4):
        assigned = codes[labels == label].unique()
        assert assigned.numel() == 1
        assert torch.allclose(codebook[assigned[0]], centers[label], atol=0.05)


def _member_means(X: torch.Tensor, M: torch.Tensor, codes: torch.Tensor, k: int) -> torch.Tensor:
    sums = torch.zeros(k, X.shape[1]).index_add_(0, codes, X * M)
    counts = torch.zeros(k, X.shape[1]).index_add_(0, codes, M)
    return sums / counts


def test_centroids_are_member_means_and_codes_nearly_all_nearest() -> None:
    X = torch.randn(5000, 4)
    codebook, codes = kmeans(X, None, 64, seed=0)
    assert codes.unique().numel() == 64  # empty clusters were re-seeded
    assert torch.allclose(codebook, _member_means(X, torch.ones_like(X), codes, 64), atol=1e-5)
    distances = _nearest(X, codebook)
    nearest = distances.gather(1, codes[:, None]).squeeze(1) <= distances.min(1).values + 1e-5
    # Lloyd's last step moves the centroids after the assignment, so a few codes may lag.
    assert nearest.float().mean() > 0.9


def test_masked_entries_do_not_pull_centroids() -> None:
    X = torch.randn(2000, 4)
    M = (torch.rand(2000, 4) > 0.3).float()
    X_huge = torch.where(M.bool(), X, torch.full_like(X, 1e3))  # pruned entries hold garbage
    codebook, codes = kmeans(X_huge * M, M, 16, seed=0)
    assert codebook.abs().max() < 10
    means = _member_means(X, M, codes, 16)
    assert torch.allclose(codebook, torch.where(means.isnan(), codebook, means), atol=1e-5)
    distances = _nearest(X * M, codebook, M)
    nearest = distances.gather(1, codes[:, None]).squeeze(1) <= distances.min(1).values + 1e-5
    assert nearest.float().mean() > 0.9


def test_fewer_points_than_centroids_gives_exact_reconstruction() -> None:
    X = torch.randn(10, 3)
    codebook, codes = kmeans(X, None, 256)
    assert codebook.shape == (10, 3)
    assert torch.allclose(codebook[codes], X)


def test_kmeans_1d_error_falls_with_more_centroids_and_matches_assignment() -> None:
    values = torch.randn(100_000) * 0.05
    errors = []
    for k in (4, 16, 64, 256):
        codebook, codes = kmeans_1d(values, k)
        assert codebook.shape == (k, 1)
        errors.append(float((codebook[codes, 0] - values).norm() / values.norm()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01


def test_kmeans_1d_is_exact_with_few_distinct_values() -> None:
    values = torch.tensor([0.5, -0.25, 0.5, 0.125, -0.25] * 100)
    codebook, codes = kmeans_1d(values, 8)
    assert torch.equal(codebook[codes, 0], values)


@pytest.mark.gpu
def test_kmeans_runs_on_cuda_like_on_cpu() -> None:
    X = torch.randn(20_000, 4)
    cpu_codebook, _ = kmeans(X, None, 32, seed=3)
    gpu_codebook, gpu_codes = kmeans(X.cuda(), None, 32, seed=3)
    assert gpu_codes.device.type == "cuda"
    cpu_error = (cpu_codebook[kmeans(X, None, 32, seed=3)[1]] - X).norm()
    gpu_error = (gpu_codebook[gpu_codes] - X.cuda()).norm().cpu()
    assert gpu_error == pytest.approx(float(cpu_error), rel=0.05)
    values = X.flatten().cuda()
    codebook, codes = kmeans_1d(values, 16)
    assert float((codebook[codes, 0] - values).norm() / values.norm()) < 0.1
