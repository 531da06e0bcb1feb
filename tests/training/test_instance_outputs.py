"""Instance-aware outputs (output_kind=contour|distance|hover): targets, masked losses,
post-processing that splits what binary + watershed merges, and a trained model through every
command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nucleiseg.data.instance_targets import contour_map, distance_map, instance_targets
from nucleiseg.lightning.output_losses import (
    bce,
    check_loss_weights,
    contour_loss,
    output_loss,
    touching_contour,
)
from nucleiseg.postprocessing.watershed import InstanceSettings, instances_from_probability

from conftest import compose_config, smoke_overrides


def two_touching_squares() -> np.ndarray:
    """Two 8x8 nuclei side by side (ids 1 and 2), touching along a whole edge."""
    labels = np.zeros((12, 20), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2
    return labels


def test_contour_target_is_each_nucleus_inner_ring():
    labels = two_touching_squares()
    contour = contour_map(labels)
    expected = np.zeros_like(contour)
    for left in (2, 10):
        ring = np.ones((8, 8), np.float32)
        ring[1:-1, 1:-1] = 0
        expected[2:10, left : left + 8] = ring
    np.testing.assert_array_equal(contour, expected)  # both rings: the shared edge twice


@pytest.mark.parametrize("width", [2, 3])
def test_a_wider_contour_is_that_many_rings_inside_each_nucleus(width):
    labels = two_touching_squares()
    labels[7:9, 15:17] = 0  # a hole: the ring around it is a boundary too
    contour = contour_map(labels, width)
    assert not contour[labels == 0].any()  # inside the nuclei only
    # across the seam (row 5, away from the hole): width px on each side, then interior
    np.testing.assert_array_equal(contour[5, 10 - width : 10 + width], 1)
    assert contour[5, 10 - width - 1] == 0 and contour[5, 10 + width] == 0
    # each band is every pixel within `width` steps of its nucleus's edge (scipy's own count)
    from scipy import ndimage

    for nucleus in (1, 2):
        inside = labels == nucleus
        depth = ndimage.distance_transform_cdt(np.pad(inside, 1), metric="taxicab")[1:-1, 1:-1]
        np.testing.assert_array_equal(contour[inside], depth[inside] <= width)
    stacked = instance_targets(labels, ("nucleus", "contour"), contour_width=width)
    np.testing.assert_array_equal(stacked[1], contour)


def test_a_contour_narrower_than_a_pixel_is_refused():
    with pytest.raises(ValueError, match="contour_width"):
        contour_map(two_touching_squares(), 0)


@pytest.mark.parametrize("override, width", [([], 1), (["output_kind.contour_width=2"], 2)])
def test_the_configured_contour_width_reaches_the_training_targets(override, width, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(smoke_overrides("output_kind=contour", *override), tmp_path)
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
    datamodule.setup("fit")
    item = datamodule.dataset("train")[0]
    instances = item["instances"].numpy()
    assert instances.max() > 1  # nuclei to draw bands in
    np.testing.assert_array_equal(item["targets"][1].numpy(), contour_map(instances, width))


def test_distance_target_peaks_at_one_per_nucleus_and_dips_where_nuclei_meet():
    labels = two_touching_squares()
    distance = distance_map(labels)
    assert distance[labels == 0].max() == 0
    for nucleus in (1, 2):
        assert distance[labels == nucleus].max() == pytest.approx(1.0)
    # 1 px from its own border: 1/4 of the centre's 4 px; the same on both sides of the seam
    assert distance[5, 9] == pytest.approx(distance[5, 10]) == pytest.approx(0.25)
    assert distance[5, 9] < distance[5, 6]
    stacked = instance_targets(labels, ("nucleus", "contour", "distance"))
    assert stacked.shape == (3, 12, 20)
    np.testing.assert_array_equal(stacked[0], labels > 0)


HOVER = ("nucleus", "horizontal", "vertical")


def test_hover_targets_run_from_minus_one_to_one_across_each_nucleus():
    labels = two_touching_squares()
    maps = instance_targets(labels, HOVER)
    offsets = 2.0 * maps[1:] - 1.0  # stored as (offset + 1) / 2
    assert np.all(offsets[:, labels == 0] == 0)  # 0.5 encoded outside nuclei
    # along a row the horizontal offset climbs from -1 (left edge) to +1 (right edge) in each
    # square, then jumps back to -1 where the second begins; the vertical one is constant
    np.testing.assert_allclose(offsets[0, 5, 2:10], np.linspace(-1, 1, 8), atol=1e-6)
    np.testing.assert_allclose(offsets[0, 5, 10:18], np.linspace(-1, 1, 8), atol=1e-6)
    np.testing.assert_allclose(offsets[1, 2:10, 5], np.linspace(-1, 1, 8), atol=1e-6)
    assert np.ptp(offsets[1, 5, 2:18]) == 0


def test_the_hover_loss_is_zero_for_the_truth_and_counts_the_jump_between_nuclei():
    labels = two_touching_squares()
    target = torch.from_numpy(instance_targets(labels, HOVER))[None]
    exact = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    assert output_loss(exact, target, HOVER).item() == pytest.approx(
        bce(exact[:, :1], target[:, :1]).item(), abs=1e-4
    )
    # a prediction without the jump (one smooth ramp across both nuclei) costs more in the
    # gradient term than the same mean error spread evenly
    smooth = target.clone()
    smooth[0, 1, 2:10, 2:18] = torch.linspace(0, 1, 16)
    worse = output_loss(torch.logit(smooth.clamp(1e-6, 1 - 1e-6)), target, HOVER)
    assert worse.item() > output_loss(exact, target, HOVER).item() + 0.01


def test_a_binary_only_sample_adds_nothing_to_the_instance_channels():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    target = (torch.rand(2, 2, 16, 16) > 0.5).float()
    weight = torch.tensor([1.0, 0.0])  # sample 1 comes from binary masks (TNBC)
    loss = output_loss(logits, target, ("nucleus", "contour"), {"contour": 2.0}, weight)
    loss.backward()
    assert logits.grad[1, 1].abs().max() == 0  # its contour channel gets no gradient
    assert logits.grad[0, 1].abs().max() > 0 and logits.grad[1, 0].abs().max() > 0
    # its contour target can be anything
    other = target.clone()
    other[1, 1] = 1 - other[1, 1]
    again = output_loss(logits, other, ("nucleus", "contour"), {"contour": 2.0}, weight)
    assert again.item() == pytest.approx(loss.item())
    nucleus_only = output_loss(logits, target, ("nucleus", "contour"), {}, torch.zeros(2))
    assert nucleus_only.item() == pytest.approx(bce(logits[:, :1], target[:, :1]).item())


def test_nucleus_dice_adds_the_batch_soft_dice_of_the_nucleus_channel():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 16, 16)
    target = (torch.rand(3, 2, 16, 16) > 0.6).float()
    target[2, 0] = 0  # a crop without nuclei: counted within the batch's Dice
    channels = ("nucleus", "contour")
    plain = output_loss(logits, target, channels, {"contour": 1.0})
    with_dice = output_loss(logits, target, channels, {"contour": 1.0, "nucleus_dice": 0.5})
    p, t = torch.sigmoid(logits[:, 0]), target[:, 0]
    soft_dice = 1 - (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
    assert with_dice.item() - plain.item() == pytest.approx(0.5 * soft_dice.item(), rel=1e-4)
    # a binary model takes it too; without the key the loss is the paper's BCE alone
    binary = output_loss(logits[:, :1], target[:, :1], ("nucleus",), {"nucleus_dice": 1.0})
    assert binary.item() == pytest.approx(
        bce(logits[:, :1], target[:, :1]).item() + soft_dice.item(), rel=1e-4
    )


def test_loss_weights_name_a_loss_of_the_channels():
    weights = check_loss_weights(("nucleus", "contour"), {"contour": 2, "nucleus_dice": 1})
    assert weights == {"contour": 2.0, "nucleus_dice": 1.0}
    with pytest.raises(
        ValueError,
        match=r"\['distance'\].*use one of \['contour', 'nucleus_dice', 'touching'\]",
    ):
        check_loss_weights(("nucleus", "contour"), {"distance": 1.0})
    with pytest.raises(ValueError, match=r"\['touching'\] name no loss"):
        check_loss_weights(("nucleus", "distance"), {"touching": 3.0})  # no contour to weigh
    with pytest.raises(ValueError, match="must be >= 0"):
        check_loss_weights(("nucleus",), {"nucleus_dice": -1.0})


def test_touching_pixels_are_the_contour_where_two_nuclei_meet():
    labels = two_touching_squares()
    targets = torch.from_numpy(instance_targets(labels, ("nucleus", "contour")))[None]
    touching = touching_contour(targets[:, 1:2], targets[:, :1])[0, 0].numpy()
    # the seam: columns 9 and 10 of rows 3..8 (its ends, rows 2 and 9, have background beside)
    expected = np.zeros(labels.shape, np.float32)
    expected[3:9, 9:11] = 1
    np.testing.assert_array_equal(touching, expected)


def test_the_touching_weight_counts_the_seam_more_and_nothing_else():
    labels = two_touching_squares()
    single = np.where(labels == 2, 0, labels)  # one nucleus alone: no seam
    for instances, seam_pixels in ((labels, 12), (single, 0)):
        targets = torch.from_numpy(instance_targets(instances, ("nucleus", "contour")))[None]
        logits = torch.zeros(1, 2, *instances.shape)  # p = 0.5 everywhere: BCE ln 2 a pixel
        plain = contour_loss(logits[:, 1:], targets[:, 1:], targets[:, :1])
        weighted = contour_loss(logits[:, 1:], targets[:, 1:], targets[:, :1], touching_weight=4.0)
        extra = 4.0 * seam_pixels * np.log(2) / instances.size
        assert (weighted - plain).item() == pytest.approx(extra, rel=1e-5)
        through_config = output_loss(
            logits, targets, ("nucleus", "contour"), {"contour": 1.0, "touching": 4.0}
        ) - output_loss(logits, targets, ("nucleus", "contour"), {"contour": 1.0})
        assert through_config.item() == pytest.approx(extra, rel=1e-5)
    # binary-only samples stay out of it (their contour loss is masked as before)
    masked = output_loss(logits, targets, ("nucleus", "contour"), {"touching": 4.0}, torch.zeros(1))
    assert masked.item() == pytest.approx(bce(logits[:, :1], targets[:, :1]).item(), rel=1e-6)


def test_instance_channels_split_touching_nuclei_that_binary_watershed_merges():
    labels = two_touching_squares()
    binary = InstanceSettings(threshold=0.5, min_size=0, markers="h_maxima", h=1.0)
    merged = instances_from_probability((labels > 0).astype(np.float32), binary)
    assert merged.max() == 1  # one flat ridge: one marker, one nucleus
    for channels in (("nucleus", "contour"), ("nucleus", "distance"), HOVER):
        maps = instance_targets(labels, channels)
        settings = InstanceSettings(min_size=0, marker_threshold=0.5, channels=channels)
        split = instances_from_probability(maps, settings)
        assert split.max() == 2, channels
        for nucleus in (1, 2):  # each found nucleus is one of the true squares
            found = np.bincount(split[labels == nucleus]).argmax()
            overlap = ((split == found) & (labels == nucleus)).sum()
            union = ((split == found) | (labels == nucleus)).sum()
            assert overlap / union > 0.9, channels


def test_channels_are_checked_by_name():
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException), match="must start with 'nucleus'"):
        compose_and_build(["output_kind=contour", "model.channels=[contour,nucleus]"])


def compose_and_build(overrides: list[str]):
    from nucleiseg.training.builders import build_modules

    return build_modules(compose_config(smoke_overrides(*overrides)))


def test_hover_maps_split_touching_discs_at_every_sobel_kernel():
    from skimage.draw import disk

    labels = np.zeros((40, 60), np.int32)
    labels[disk((20, 20), 10)] = 1
    rows, cols = disk((20, 37), 10)
    free = labels[rows, cols] == 0
    labels[rows[free], cols[free]] = 2  # two discs overlapping by a 3 px seam
    maps = instance_targets(labels, HOVER)
    for kernel in (3, 5, 11, 21):
        settings = InstanceSettings(min_size=0, marker_threshold=0.5, channels=HOVER,
                                    hover_kernel_size=kernel)  # fmt: skip
        assert instances_from_probability(maps, settings).max() == 2, kernel


def test_hover_kernel_size_is_checked_and_scales_with_the_grid():
    with pytest.raises(ValueError, match="hover_kernel_size must be an odd"):
        InstanceSettings(hover_kernel_size=4)
    assert InstanceSettings(hover_kernel_size=5).scaled(2.0).hover_kernel_size == 11
    assert InstanceSettings(hover_kernel_size=5).scaled(0.5).hover_kernel_size == 3


def test_networks_follow_the_channels_and_the_enhancer_reads_all_of_them():
    modules = compose_and_build(["output_kind=distance"])
    two_stage = modules["two_stage"]
    assert two_stage.enhancer.in_channels == 5 and two_stage.channels == ("nucleus", "distance")
    with torch.no_grad():
        outputs = two_stage(torch.rand(1, 3, 64, 64))
    assert outputs["stage1"].shape == outputs["two_stage"].shape == (1, 2, 64, 64)
    hover = compose_and_build(["output_kind=hover"])["two_stage"]
    assert hover.enhancer.in_channels == 6 and hover.channels == HOVER
    binary = compose_and_build([])["two_stage"]
    assert binary.enhancer.in_channels == 4 and binary.channels == ("nucleus",)


@pytest.fixture(scope="module")
def contour_run(tmp_path_factory):
    """A three-phase smoke run with the contour output on the synthetic data."""
    from nucleiseg.training.orchestration import train

    run_dir = tmp_path_factory.mktemp("contour_run")
    return run_dir, train(compose_config(smoke_overrides("output_kind=contour"), run_dir))


def test_a_contour_model_trains_and_every_command_uses_its_channels(contour_run, tmp_path):
    from nucleiseg.evaluate import evaluate
    from nucleiseg.inference.export import export, exported_model
    from nucleiseg.inference.loading import load_model
    from nucleiseg.tune_postprocess import main as tune_main  # noqa: F401 (the entry point)

    from conftest import assert_export_matches

    run_dir, results = contour_run
    assert {"stage1", "two_stage"} <= set(results["test"])
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    module, output = load_model(ckpt)  # no flag: the checkpoint says what it outputs
    assert module.channels == ("nucleus", "contour")
    assert module.instance_settings.channels == module.channels
    with torch.no_grad():
        assert module(torch.rand(1, 3, 48, 40))[output].shape == (1, 2, 48, 40)
    model = exported_model(module)
    onnx = export(model, tmp_path / "model.onnx", "onnx")
    assert_export_matches(model, onnx, "onnx", [(1, 3, 64, 64)])  # both channels
    scored = evaluate(
        compose_config(["experiment=smoke", f"+ckpt={ckpt}", "+whole_dataset=false"], tmp_path)
    )
    assert scored["test"]["two_stage"]["dice"] == pytest.approx(
        results["test"]["two_stage"]["dice"], abs=1e-6
    )


def test_tuning_an_instance_aware_model_tunes_its_marker_level(contour_run, tmp_path):
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import run

    run_dir, _ = contour_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    cfg = compose_config(
        ["experiment=smoke", f"+ckpt={ckpt}", f"+tuned_ckpt={tmp_path / 'tuned.ckpt'}",
         "+grid={threshold:[0.5],min_size:[10],min_distance:[4],h:[1.0],"
         "marker_threshold:[0.3,0.6]}"],
        tmp_path,
    )  # fmt: skip
    result = run(cfg)
    assert [c["settings"]["marker_threshold"] for c in result["candidates"]] == [0.3, 0.6]
    tuned, _ = load_model(result["tuned_checkpoint"])
    assert tuned.instance_settings.marker_threshold == result["chosen"]["marker_threshold"]
    assert tuned.instance_settings.channels == ("nucleus", "contour")
    written = json.loads((tmp_path / "postprocess_tuning.json").read_text())
    assert written["chosen"] == result["chosen"]


def test_predict_writes_nuclei_of_a_contour_model(contour_run, tmp_path):
    from PIL import Image

    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.predictor import predict_files
    from nucleiseg.inference.tiling import module_predictor

    run_dir, _ = contour_run
    module, output = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "tile.png")
    report = predict_files(
        module_predictor(module, output), [tmp_path / "tile.png"], tmp_path / "out",
        module.input_settings(), tile=64, overlap=16, save_probability=True,
    )  # fmt: skip
    assert not report.failed
    maps = np.load(tmp_path / "out" / "tile_probability.npy")
    assert maps.shape == (2, 70, 90)  # nucleus and contour, stitched across tiles
    mask = np.asarray(Image.open(tmp_path / "out" / "tile_mask.png"))
    np.testing.assert_array_equal(mask > 0, maps[0] >= module.instance_settings.threshold)


def test_a_hover_model_trains_exports_tunes_its_kernel_and_predicts_with_tta(tmp_path):
    from PIL import Image

    from nucleiseg.inference.export import export, exported_model
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import run
    from nucleiseg.inference.predictor import predict_files
    from nucleiseg.inference.tiling import module_predictor
    from nucleiseg.models.dihedral import dihedral_tta
    from nucleiseg.training.orchestration import train

    from conftest import assert_export_matches

    run_dir = tmp_path / "hover_run"
    results = train(compose_config(smoke_overrides("output_kind=hover"), run_dir))
    assert {"stage1", "two_stage"} <= set(results["test"])
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    module, output = load_model(ckpt)
    assert module.channels == HOVER
    model = exported_model(module)
    onnx = export(model, tmp_path / "model.onnx", "onnx")
    assert_export_matches(model, onnx, "onnx", [(1, 3, 64, 64)])  # all three channels
    cfg = compose_config(
        ["experiment=smoke", f"+ckpt={ckpt}", f"+tuned_ckpt={tmp_path / 'tuned.ckpt'}",
         "+grid={threshold:[0.5],min_size:[10],min_distance:[4],h:[1.0],"
         "marker_threshold:[0.5],hover_kernel_size:[5,11]}"],
        tmp_path / "tuning",
    )  # fmt: skip
    result = run(cfg)
    assert [c["settings"]["hover_kernel_size"] for c in result["candidates"]] == [5, 11]
    tuned, _ = load_model(result["tuned_checkpoint"])
    assert tuned.instance_settings.hover_kernel_size == result["chosen"]["hover_kernel_size"]
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "tile.png")
    predict = dihedral_tta(module_predictor(tuned, output), tuned.channels)
    report = predict_files(
        predict, [tmp_path / "tile.png"], tmp_path / "out", tuned.input_settings(),
        tile=64, overlap=16, save_probability=True,
    )  # fmt: skip
    assert not report.failed
    assert np.load(tmp_path / "out" / "tile_probability.npy").shape == (3, 70, 90)


def test_the_touching_weight_with_a_wider_contour_band_is_refused_naming_both_keys():
    from nucleiseg.training.builders import build_modules

    wide = compose_config(
        [
            "output_kind=contour",
            "output_kind.contour_width=2",
            "output_kind.loss_weights.touching=3",
        ]
    )
    with pytest.raises(ValueError, match=r"touching=3.*contour_width=2.*set contour_width to 1"):
        build_modules(wide)
    ring = compose_config(["output_kind=contour", "output_kind.loss_weights.touching=3"])
    assert build_modules(ring)["two_stage"].loss_weights["touching"] == 3.0
