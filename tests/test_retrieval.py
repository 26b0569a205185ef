"""Prompt fidelity by retrieval, against hand-computed neighbours."""

from __future__ import annotations

import pytest
import torch

from guided_diffusion.evaluation import nearest, pixel_features, retrieval_fidelity


def constant_images(values: list[float], size: int = 8) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None, None, None].expand(len(values), 3, size, size).clone()


def test_pixel_features_average_blocks() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2] = 1.0
    assert pixel_features(x, size=2).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"images must be \[N, C, H, W\]"):
        pixel_features(torch.zeros(3, 4, 4))


def test_nearest_orders_by_euclidean_distance() -> None:
    gallery = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    distances, indices = nearest(torch.tensor([[0.9, 0.1]]), gallery, k=2)
    assert indices.tolist() == [[2, 0]]
    assert distances[0].tolist() == pytest.approx([(0.01 + 0.01) ** 0.5, (0.81 + 0.01) ** 0.5])
    assert nearest(torch.zeros(1, 2), gallery, k=10)[1].shape == (1, 3)


def test_retrieval_fidelity_top1_and_topk() -> None:
    gallery = constant_images([-1.0, -0.5, 0.0, 0.5, 1.0])
    keys = ["a", "b", "c", "d", "e"]
    generated = constant_images([-0.95, 0.3, 0.9])  # nearest: a; d then c; e then d
    result = retrieval_fidelity(generated, ["a", "c", "d"], gallery, keys, k=2)
    assert result.top1.tolist() == [True, False, False]
    assert result.topk.tolist() == [True, True, True]
    assert result.neighbours.tolist() == [[0, 1], [3, 2], [4, 3]]
    assert result.top1_rate == pytest.approx(1 / 3) and result.topk_rate == 1.0 and result.k == 2
    with pytest.raises(ValueError, match="one key per generated image"):
        retrieval_fidelity(generated, ["a"], gallery, keys)
