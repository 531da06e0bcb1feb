"""Pixel metrics against a NumPy reference on known masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleiseg.metrics.pixel import pixel_metrics, summarise


def reference(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    tp = np.logical_and(pred, target).sum()
    fp = np.logical_and(pred, ~target).sum()
    fn = np.logical_and(~pred, target).sum()
    return {
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
    }


def test_pixel_metrics_match_numpy_reference_over_all_pixels():
    rng = np.random.default_rng(0)
    target = rng.random((6, 1, 20, 24)) > 0.6
    prob = np.clip(target * 0.7 + rng.random(target.shape) * 0.5, 0, 1)
    metrics = pixel_metrics()
    for batch in (slice(0, 4), slice(4, 6)):  # updates across batches accumulate
        metrics.update(torch.from_numpy(prob[batch]).float(), torch.from_numpy(target[batch]))
    got = summarise(metrics.compute())
    expected = reference(prob > 0.5, target)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6)
    per_image = [reference(prob[i] > 0.5, target[i])["dice"] for i in range(6)]
    assert got["dice_per_image_mean"] == pytest.approx(np.mean(per_image), abs=1e-6)
    assert got["dice_per_image_std"] == pytest.approx(np.std(per_image), abs=1e-6)


def test_pixel_metrics_on_a_hand_made_case():
    target = torch.tensor([[[[1, 1, 0, 0]]]])
    prob = torch.tensor([[[[0.9, 0.2, 0.8, 0.1]]]])  # one TP, one FN, one FP, one TN
    got = summarise(pixel_metrics().forward(prob, target))
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(0.5)
    assert got["dice"] == pytest.approx(0.5)
    assert got["iou"] == pytest.approx(1 / 3)


def test_an_image_without_nuclei_and_without_prediction_scores_dice_one():

    from nucleiseg.metrics.per_image import PerImageScores
    from nucleiseg.metrics.pixel import pixel_metrics

    prob = torch.zeros(3, 1, 8, 8)
    target = torch.zeros(3, 1, 8, 8)
    target[1, 0, 2:5, 2:5] = 1  # image 1: a nucleus missed
    prob[2, 0, 2:5, 2:5] = 0.9  # image 2: a nucleus where there is none
    metrics = pixel_metrics()
    metrics.update(prob, target.int())
    assert metrics.compute()["dice_per_image"].tolist() == [1.0, 0.0, 0.0]
    scores = PerImageScores()
    instances = (target[:, 0] > 0).int()
    predicted = (prob[:, 0] > 0.5).numpy().astype(np.int32)
    scores.update(torch.arange(3), prob, target, predicted, instances)
    assert scores.compute()["dice"] == [1.0, 0.0, 0.0]
