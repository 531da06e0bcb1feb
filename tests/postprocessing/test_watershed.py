"""Probability -> nuclei: the minimum size, the fragments of nuclei cut by the image's edge, the
smallest marker of instance-aware maps, and merging neighbours the model draws no border
between."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from nucleiseg.data.instance_targets import instance_targets
from nucleiseg.inference.postprocess_tuning import candidates
from nucleiseg.postprocessing.watershed import (
    InstanceSettings,
    instances_from_maps,
    instances_from_mask,
    instances_from_probability,
    merge_convex_neighbours,
    merge_weak_borders,
    solidity,
)


def fragment_speck_and_nucleus() -> np.ndarray:
    """A 64 px image: a nucleus cut by the left edge (a 12 px sliver), a 13 px speck inside,
    and a whole nucleus."""
    mask = np.zeros((64, 64), bool)
    mask[30:34, 0:3] = True  # the sliver of a nucleus whose rest lies beyond the edge
    mask[disk((12, 40), 2)] = True  # an interior speck
    mask[disk((45, 40), 7)] = True  # a whole nucleus
    return mask


def test_a_nucleus_cut_by_the_image_edge_is_kept_down_to_border_min_size():
    mask = fragment_speck_and_nucleus()
    kept = instances_from_mask(mask, InstanceSettings(min_size=30, border_min_size=5))
    assert kept[31, 1] > 0  # the sliver at the edge
    assert kept[12, 40] == 0  # the speck inside is still dropped
    assert kept[45, 40] > 0
    assert len(np.unique(kept)) - 1 == 2


def test_without_border_min_size_every_object_under_min_size_is_dropped():
    mask = fragment_speck_and_nucleus()
    for border_min_size in (None, 30):
        settings = InstanceSettings(min_size=30, border_min_size=border_min_size)
        kept = instances_from_mask(mask, settings)
        assert kept[31, 1] == 0 and kept[12, 40] == 0
        assert len(np.unique(kept)) - 1 == 1


def test_a_fragment_under_border_min_size_is_dropped_too():
    kept = instances_from_mask(
        fragment_speck_and_nucleus(), InstanceSettings(min_size=30, border_min_size=20)
    )
    assert kept[31, 1] == 0


def test_instance_aware_maps_keep_edge_fragments_alike():
    mask = fragment_speck_and_nucleus()
    maps = np.stack([mask.astype(np.float32), np.zeros(mask.shape, np.float32)])
    settings = InstanceSettings(min_size=30, border_min_size=5, channels=("nucleus", "contour"))
    kept = instances_from_maps(maps, settings)
    assert kept[31, 1] > 0 and kept[12, 40] == 0


def test_border_min_size_scales_with_the_grid_as_an_area():
    settings = InstanceSettings(min_size=10, border_min_size=4)
    assert settings.scaled(2.0).border_min_size == 16
    assert settings.scaled(2.0).min_size == 40
    assert InstanceSettings(min_size=10).scaled(2.0).border_min_size is None


def test_the_tuning_grid_tries_each_border_min_size_and_keeps_the_base_without_one():
    grid = {"threshold": [0.5], "min_size": [10, 30], "min_distance": [4], "h": []}
    base = {"fill_holes": True, "border_min_size": 3}
    assert {c["border_min_size"] for c in candidates(grid, base)} == {3}
    found = candidates({**grid, "border_min_size": [None, 5]}, base)
    assert len(found) == 4
    assert sorted((c["min_size"], c["border_min_size"] or 0) for c in found) == [
        (10, 0), (10, 5), (30, 0), (30, 5)
    ]  # fmt: skip


def nucleus_with_a_speck_of_marker() -> np.ndarray:
    """Contour maps (2, 64, 64) of one nucleus (radius 12) whose contour probability dips
    twice inside: a broad core (the nucleus's own marker) and a 2 px speck off to its side."""
    nucleus = np.zeros((64, 64), np.float32)
    nucleus[disk((32, 32), 12)] = 1.0
    contour = np.where(nucleus > 0, 0.5, 0.0).astype(np.float32)
    contour[disk((32, 28), 5)] = 0.0  # the core
    contour[32:34, 40] = 0.0  # a speck of the marker map, apart from the core
    return np.stack([nucleus, contour])


def test_markers_under_marker_min_size_split_no_nucleus():
    maps = nucleus_with_a_speck_of_marker()
    channels = ("nucleus", "contour")
    every = instances_from_maps(maps, InstanceSettings(marker_threshold=0.9, channels=channels))
    assert len(np.unique(every)) - 1 == 2  # the speck's marker splits the nucleus
    kept = InstanceSettings(marker_threshold=0.9, marker_min_size=5, channels=channels)
    one = instances_from_maps(maps, kept)
    assert len(np.unique(one)) - 1 == 1
    assert (one > 0).sum() == (maps[0] > 0).sum()  # the whole nucleus, from the core


def test_marker_min_size_scales_as_an_area_and_the_grid_tries_each():
    assert InstanceSettings(marker_min_size=5).scaled(2.0).marker_min_size == 20
    grid = {"threshold": [0.5], "min_size": [10], "marker_threshold": [0.5, 0.9]}
    channels = ("nucleus", "contour")
    assert {c["marker_min_size"] for c in candidates(grid, {}, channels)} == {0}
    found = candidates({**grid, "marker_min_size": [0, 10]}, {}, channels)
    assert sorted((c["marker_min_size"], c["marker_threshold"]) for c in found) == [
        (0, 0.5), (0, 0.9), (10, 0.5), (10, 0.9)
    ]  # fmt: skip


def touching_discs_and_a_long_nucleus() -> np.ndarray:
    """True instances (96, 96): two touching discs (1, 2) and a long ellipse (3)."""
    truth = np.zeros((96, 96), np.int32)
    truth[disk((30, 30), 10)] = 1
    truth[disk((30, 48), 10)] = 2  # touches nucleus 1
    truth[ellipse(72, 48, 9, 30)] = 3
    return truth


def split_nucleus_beside_touching_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Contour maps (2, 96, 96) and their true instances: a long nucleus whose marker map has
    two cores with a faint ridge between them (contour 0.2: no border drawn), and two
    touching discs with their drawn contours (1.0 along each one's rim)."""
    truth = touching_discs_and_a_long_nucleus()
    maps = instance_targets(truth, ("nucleus", "contour")).astype(np.float32)
    long = truth == 3
    maps[1][long] = 0.2  # the model draws no border inside the long nucleus ...
    maps[1][disk((72, 30), 6)] = 0.0  # ... but its marker map peaks at two cores
    maps[1][disk((72, 66), 6)] = 0.0
    return maps, truth


def test_neighbours_without_a_drawn_border_are_merged_into_one_nucleus():
    maps, truth = split_nucleus_beside_touching_nuclei()
    channels = ("nucleus", "contour")
    split = instances_from_maps(maps, InstanceSettings(marker_threshold=0.9, channels=channels))
    assert len(np.unique(split[truth == 3])) == 2  # two markers split the long nucleus
    merged = instances_from_maps(
        maps, InstanceSettings(marker_threshold=0.9, merge_below=0.5, channels=channels)
    )
    assert len(np.unique(merged[truth == 3])) == 1  # whole again
    assert merged[30, 30] != merged[30, 48]  # the touching discs keep their drawn border
    assert len(np.unique(merged)) - 1 == 3
    assert ((merged > 0) == (split > 0)).all()  # merging moves no pixel in or out


def test_merging_never_joins_a_nucleus_to_the_background():
    maps, truth = split_nucleus_beside_touching_nuclei()
    split = instances_from_maps(
        maps, InstanceSettings(marker_threshold=0.9, channels=("nucleus", "contour"))
    )
    everything = merge_weak_borders(split, maps[1], 1.0 + 1e-6)  # every border is weak
    assert ((everything > 0) == (split > 0)).all()
    assert len(np.unique(everything)) - 1 == 2  # the touching pair and the long nucleus


def test_merge_below_outside_zero_to_one_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="postprocess.merge_below"):
        InstanceSettings(merge_below=0.0)


def test_the_tuning_grid_tries_each_merge_level_and_keeps_the_base_without_one():
    grid = {"threshold": [0.5], "min_size": [10], "marker_threshold": [0.9]}
    channels = ("nucleus", "contour")
    assert {c["merge_below"] for c in candidates(grid, {"merge_below": 0.3}, channels)} == {0.3}
    found = candidates({**grid, "merge_below": [None, 0.5], "merge_convex": [None, 0.9]}, {},
                       channels)  # fmt: skip
    assert [(c["merge_below"], c["merge_convex"]) for c in found] == [
        (None, None), (None, 0.9), (0.5, None), (0.5, 0.9)
    ]  # fmt: skip


def halved_ellipse_beside_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """An instance map (96, 96) as the watershed may leave it: an ellipse cut into two halves
    (one nucleus two markers split) and two touching discs (two nuclei), with their truth."""
    truth = touching_discs_and_a_long_nucleus()
    split = truth.copy()
    split[(truth == 3) & (np.arange(96)[None, :] >= 48)] = 4  # the ellipse's right half
    return split, truth


def test_halves_whose_union_is_convex_are_merged_and_touching_discs_are_not():
    split, truth = halved_ellipse_beside_touching_discs()
    assert solidity(np.argwhere(truth == 3)) > 0.95
    assert solidity(np.argwhere(np.isin(truth, [1, 2]))) < 0.95  # the pair has a waist
    merged = merge_convex_neighbours(split, 0.95)
    assert len(np.unique(merged[truth == 3])) == 1  # the ellipse whole again
    assert merged[30, 30] != merged[30, 48]  # the two discs stay two
    assert len(np.unique(merged)) - 1 == 3
    assert ((merged > 0) == (split > 0)).all()
    assert (merge_convex_neighbours(split, 1.0) == split).all()  # nothing is that convex


def test_merge_convex_acts_in_instances_from_maps_and_is_validated():
    maps, truth = split_nucleus_beside_touching_nuclei()
    channels = ("nucleus", "contour")
    merged = instances_from_maps(
        maps, InstanceSettings(marker_threshold=0.9, merge_convex=0.95, channels=channels)
    )
    assert len(np.unique(merged[truth == 3])) == 1
    assert merged[30, 30] != merged[30, 48]
    with pytest.raises(ValueError, match="postprocess.merge_convex"):
        InstanceSettings(merge_convex=1.5)


def faint_speck_and_confident_nucleus_with_faint_rim() -> np.ndarray:
    """A nucleus probability (64, 64): a faint blob (0.55 everywhere) and a nucleus with a
    confident core (0.9) whose rim is as faint (0.55)."""
    prob = np.zeros((64, 64), np.float32)
    prob[disk((16, 16), 6)] = 0.55  # faint everywhere
    prob[disk((44, 44), 10)] = 0.55  # the rim ...
    prob[disk((44, 44), 6)] = 0.9  # ... of a confident nucleus
    return prob


@pytest.mark.parametrize("output_kind", ["binary", "contour"])
def test_core_threshold_drops_faint_objects_and_keeps_a_confident_nucleus_whole(output_kind):
    prob = faint_speck_and_confident_nucleus_with_faint_rim()
    channels = ("nucleus",) if output_kind == "binary" else ("nucleus", "contour")
    maps = prob if output_kind == "binary" else np.stack([prob, np.zeros_like(prob)])

    def nuclei(**knobs) -> np.ndarray:
        return instances_from_probability(maps, InstanceSettings(channels=channels, **knobs))

    every = nuclei(threshold=0.5)
    assert every[16, 16] > 0 and every[44, 44] > 0  # without a core level both are nuclei
    cored = nuclei(threshold=0.5, core_threshold=0.8)
    assert cored[16, 16] == 0  # the faint blob has no confident pixel
    assert len(np.unique(cored)) - 1 == 1
    assert (cored > 0).sum() == (prob[disk((44, 44), 10)] >= 0.5).sum()  # its rim kept too
    # the levels are inclusive, as threshold is: a core exactly at the level counts
    assert nuclei(threshold=0.55, core_threshold=0.9)[44, 44] > 0
    assert (nuclei(threshold=0.5, core_threshold=0.4) == every).all()  # under threshold: none


def test_core_threshold_outside_zero_to_one_is_refused_and_the_grid_tries_each():
    with pytest.raises(ValueError, match="postprocess.core_threshold"):
        InstanceSettings(core_threshold=1.5)
    grid = {"threshold": [0.5], "min_size": [10], "marker_threshold": [0.9]}
    channels = ("nucleus", "contour")
    assert {c["core_threshold"] for c in candidates(grid, {"core_threshold": 0.7}, channels)} == {
        0.7
    }
    found = candidates({**grid, "core_threshold": [None, 0.8]}, {}, channels)
    assert [c["core_threshold"] for c in found] == [None, 0.8]
