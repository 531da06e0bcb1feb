"""Nucleus-level metrics against hand-computed values and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleiseg.metrics.objects import MissedNuclei, NucleusMetrics

from conftest import reference_pq_aji


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    metric = NucleusMetrics()
    metric.update(torch.from_numpy(pred), torch.from_numpy(true))
    return {k: float(v) for k, v in metric.compute().items()}


def canvas() -> np.ndarray:
    return np.zeros((12, 12), np.int32)


def test_identical_maps_score_perfectly():
    true = canvas()
    true[1:5, 1:5], true[6:10, 6:9] = 1, 2
    s = scores(true.copy(), true)
    assert s["pq"] == s["aji"] == s["det_f1"] == 1.0 and s["count_error"] == 0


def test_split_nucleus_is_no_match_and_aji_counts_the_extra_half():
    true, pred = canvas(), canvas()
    true[0:4, 0:4] = 1  # 16 px
    pred[0:4, 0:2], pred[0:4, 2:4] = 1, 2  # two halves, IoU 0.5 each: not above 0.5
    s = scores(pred, true)
    assert (s["det_precision"], s["det_recall"], s["pq"]) == (0.0, 0.0, 0.0)
    assert s["aji"] == pytest.approx(8 / (16 + 8))  # C=8, U=16 + unpaired half 8
    assert s["count_error"] == 1


def test_merged_nuclei_count_the_merged_prediction_for_each():
    true, pred = canvas(), canvas()
    true[0:4, 0:4], true[0:4, 4:8] = 1, 2
    pred[0:4, 0:8] = 1  # IoU 16/32 = 0.5 with each: no match
    s = scores(pred, true)
    assert s["det_f1"] == 0.0 and s["dq"] == 0.0
    assert s["aji"] == pytest.approx((16 + 16) / (32 + 32))
    assert s["count_error"] == -1


def test_empty_prediction():
    true = canvas()
    true[2:6, 2:6] = 1
    s = scores(canvas(), true)
    assert (s["det_recall"], s["pq"], s["aji"]) == (0.0, 0.0, 0.0)
    assert s["det_precision"] == 1.0  # nothing was predicted, nothing falsely
    assert s["count_error"] == -1 and s["abs_count_error"] == 1
    assert s["true_count"] == 1 and s["abs_count_error_pct"] == 100.0
    assert s["count_error_pct"] == -100.0  # signed: an under-count


def test_empty_ground_truth():
    pred = canvas()
    pred[0:2, 0:5] = 3
    s = scores(pred, canvas())
    assert (s["det_precision"], s["det_f1"], s["aji"], s["pq"]) == (0.0, 0.0, 0.0, 0.0)
    assert s["det_recall"] == 1.0


def test_both_empty_is_perfect():
    s = scores(canvas(), canvas())
    assert s["pq"] == s["aji"] == s["det_f1"] == 1.0


def test_partial_overlap_and_aggregation_over_images():
    true, pred = canvas(), canvas()
    true[0:4, 0:4] = 5
    pred[0:4, 0:3] = 9  # IoU 12/16
    s = scores(pred, true)
    assert (s["dq"], s["sq"], s["pq"], s["aji"]) == pytest.approx((1.0, 0.75, 0.75, 0.75))
    missed = canvas()
    missed[6:10, 6:10] = 1
    metric = NucleusMetrics()
    metric.update(torch.from_numpy(np.stack([pred, canvas()])), np.stack([true, missed]))
    s = {k: float(v) for k, v in metric.compute().items()}
    assert s["dq"] == pytest.approx(1 / 1.5) and s["sq"] == pytest.approx(0.75)
    assert s["pq"] == pytest.approx(0.5) and s["aji"] == pytest.approx(12 / 32)


def test_per_image_means_average_each_image_s_own_figure():
    """Pooled, a small image with one missed nucleus weighs by its pixels; per image (the
    protocol of HoVer-Net's tables) it weighs as much as any other."""
    true, pred = canvas(), canvas()
    true[0:4, 0:4] = 5
    pred[0:4, 0:3] = 9  # AJI 0.75, PQ 0.75
    missed = canvas()
    missed[6:10, 6:10] = 1  # nothing found: AJI 0, PQ 0
    metric = NucleusMetrics()
    metric.update(np.stack([pred, canvas(), canvas()]), np.stack([true, missed, canvas()]))
    s = {k: float(v) for k, v in metric.compute().items()}
    assert s["aji"] == pytest.approx(12 / 32) and s["pq"] == pytest.approx(0.5)
    # the third image, empty on both sides, counts as perfect
    assert s["aji_per_image_mean"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert s["pq_per_image_mean"] == pytest.approx((0.75 + 0 + 1) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_matches_published_definitions_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    true, pred = np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32)
    for label_map in (true, pred):
        for k in range(1, 8):
            y, x = rng.integers(0, 34, 2)
            h, w = rng.integers(3, 7, 2)
            label_map[y : y + h, x : x + w] = k
    pq, aji = reference_pq_aji(pred, true)
    s = scores(pred, true)
    assert s["pq"] == pytest.approx(pq) and s["aji"] == pytest.approx(aji)
    assert s["pq_per_image_mean"] == pytest.approx(pq)  # one image: the same figure
    assert s["aji_per_image_mean"] == pytest.approx(aji)


def test_missed_nuclei_counts_what_each_output_alone_found():
    true, stage1, two_stage = canvas(), canvas(), canvas()
    true[0:4, 0:4], true[6:10, 6:10] = 1, 2
    stage1[0:4, 0:4] = 1
    two_stage[0:4, 0:4], two_stage[6:10, 6:9] = 1, 2
    metric = MissedNuclei()
    metric.update(stage1, two_stage, true)
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == {"true_nuclei": 2, "found_by_two_stage_only": 1, "found_by_stage1_only": 0}


def test_compact_ids_equal_numpy_unique_for_every_kind_of_label_map():
    from nucleiseg.metrics.objects import compact_ids

    rng = np.random.default_rng(0)
    maps = [
        rng.integers(0, 50, (64, 64)).astype(np.int32),
        rng.integers(0, 3, (9, 7)).astype(np.uint16),
        np.zeros((5, 5), np.int32),
        np.array([[0, 7], [7, 2**31 - 1]], np.int64),  # ids far above the image's size
        np.array([[-1, 0], [3, 3]]),  # negative ids
    ]
    for labels in maps:
        ids, compact = compact_ids(labels)
        expected_ids, expected = np.unique(labels, return_inverse=True)
        assert np.array_equal(ids, expected_ids)
        assert np.array_equal(compact, expected.ravel())
