"""Tiled inference, TTA, instance post-processing and the predict command."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from nucleiseg.inference.loading import CheckpointError, load_model
from nucleiseg.inference.tiling import predict_tiled, predict_whole
from nucleiseg.models.dihedral import dihedral_tta
from nucleiseg.postprocessing.watershed import (
    InstanceSettings,
    describe_nuclei,
    instances_from_mask,
)

from conftest import ROOT


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random((h, w, 3)), (6, 6, 0))
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).astype(np.uint8)


def small_receptive_field_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
    ).eval()


def test_tiled_equals_whole_image_where_context_is_the_same():
    net = small_receptive_field_model()  # receptive radius 2 < margin 8

    def predict(x):
        return torch.sigmoid(net(x))

    image = smooth_image(700, 1000)
    tiled = predict_tiled(predict, image, tile=128, overlap=32, margin=8, batch_size=4)
    whole = predict_whole(predict, image, margin=8)
    assert tiled.shape == (700, 1000)
    assert np.abs(tiled - whole).max() < 1e-4


def seam_excess(blend: str) -> tuple[float, float]:
    """How much tiling adds to the column-to-column change, vs. the image's median change."""
    pool = torch.nn.AvgPool2d(41, stride=1, padding=20)  # sees further than the margin

    def predict(x):
        return pool(x.mean(1, keepdim=True))

    image = smooth_image(300, 700)
    whole = predict_whole(predict, image, margin=16)
    tiled = predict_tiled(predict, image, tile=128, overlap=64, blend=blend)
    grad_tiled = np.abs(np.diff(tiled, axis=1)).mean(0)
    grad_whole = np.abs(np.diff(whole, axis=1)).mean(0)
    return float((grad_tiled - grad_whole).max()), float(np.median(grad_whole))


def test_gaussian_blending_leaves_no_seam_along_tile_edges():
    excess, typical = seam_excess("gaussian")
    assert excess < 0.1 * typical
    excess_constant, _ = seam_excess("constant")  # without blending the seams do show
    assert excess_constant > 5 * typical


def test_tiles_go_through_the_model_in_bounded_batches():
    sizes = []

    def predict(x):
        sizes.append(x.shape)
        return x[:, :1]

    predict_tiled(predict, smooth_image(500, 600), tile=128, overlap=32, batch_size=3)
    assert max(s[0] for s in sizes) == 3 and all(s[-2:] == (128, 128) for s in sizes)


def test_image_smaller_than_a_tile_is_padded_and_cropped_back():
    out = predict_tiled(lambda x: x[:, :1], smooth_image(50, 61), tile=128, overlap=32)
    assert out.shape == (50, 61)
    assert np.allclose(out, smooth_image(50, 61)[..., 0] / 255.0, atol=1e-6)


def test_tta_averages_the_eight_dihedral_views():
    net = small_receptive_field_model()
    x = torch.rand(2, 3, 24, 24)
    views = []
    for flip in (False, True):
        v = x.flip(-1) if flip else x
        for k in range(4):
            out = torch.rot90(net(torch.rot90(v, k, (-2, -1))), -k, (-2, -1))
            views.append(out.flip(-1) if flip else out)
    with torch.no_grad():
        expected = torch.stack(views).mean(0)
        got = dihedral_tta(net)(x)
        assert torch.allclose(got, expected, atol=1e-6)
        # and the averaged model commutes with every dihedral transform of its input
        assert torch.allclose(
            dihedral_tta(net)(torch.rot90(x, 1, (-2, -1))), torch.rot90(got, 1, (-2, -1)), atol=1e-5
        )


def test_dihedral_tta_averages_every_output_of_a_two_stage_model_alike():
    torch.manual_seed(0)
    nets = {
        "stage1": torch.nn.Conv2d(3, 1, 3, padding=1),
        "two_stage": torch.nn.Conv2d(3, 2, 5, padding=2),
    }
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        got = dihedral_tta(lambda b: {k: torch.sigmoid(n(b)) for k, n in nets.items()})(x)
        for name, net in nets.items():
            alone = dihedral_tta(lambda b, net=net: torch.sigmoid(net(b)))(x)
            assert torch.allclose(got[name], alone, atol=1e-6)


def test_dihedral_tta_turns_hover_offsets_with_the_views():
    """A model that draws the true HV maps of the nuclei in its input is equivariant; its
    TTA average must equal its plain output (channel-blind averaging would not)."""
    from skimage.draw import ellipse
    from skimage.measure import label

    from nucleiseg.data.instance_targets import instance_targets

    channels = ("nucleus", "horizontal", "vertical")
    drawn = np.zeros((48, 64), np.float32)
    drawn[ellipse(15, 20, 8, 12, rotation=0.4)] = 1
    drawn[ellipse(30, 45, 10, 6, rotation=1.0)] = 1

    def true_maps(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([
            torch.from_numpy(instance_targets(label(x[0].numpy() > 0.5), channels))
            for x in batch
        ])  # fmt: skip

    image = torch.from_numpy(drawn)[None, None]
    plain = true_maps(image)
    assert torch.allclose(dihedral_tta(true_maps, channels)(image), plain, atol=1e-5)
    assert (dihedral_tta(true_maps)(image) - plain).abs().max() > 0.4  # scalar-only TTA


def test_a_module_with_tta_gives_outputs_that_turn_with_its_input(smoke_run):
    from nucleiseg.inference.loading import load_model

    run_dir, _ = smoke_run
    module, output = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    x = torch.rand(1, 3, 32, 32)
    turned = torch.rot90(x, 1, (-2, -1))

    def rotation_gap() -> float:
        with torch.no_grad():
            plain, rotated = module(x)[output], module(turned)[output]
        return float((torch.rot90(plain, 1, (-2, -1)) - rotated).abs().max())

    assert rotation_gap() > 1e-3  # an untrained-looking net is not rotation-equivariant
    module.tta = True
    assert rotation_gap() < 1e-4


def test_watershed_splits_touching_nuclei():
    yy, xx = np.mgrid[:40, :60]
    mask = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 < 100)
    assert ndimage.label(mask)[1] == 1  # one touching blob
    instances = instances_from_mask(mask, InstanceSettings(min_distance=5))
    assert instances.max() == 2
    rows = describe_nuclei(instances, mask.astype(float))
    centroids = sorted(round(r["centroid_x"]) for r in rows)
    assert abs(centroids[0] - 20) <= 2 and abs(centroids[1] - 37) <= 2
    assert all(r["mean_probability"] == 1.0 for r in rows)


def test_predict_command_writes_outputs_and_reports_bad_files(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    inputs = tmp_path / "tiles"
    inputs.mkdir()
    Image.fromarray(smooth_image(150, 170)).save(inputs / "tile_a.png")
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    command = [
        sys.executable, "-m", "nucleiseg.predict",
        f"ckpt={run_dir / 'checkpoints' / 'finetune' / 'best.ckpt'}",
        f"input={inputs}", f"output={out}", "tiling.tile=128", "tiling.overlap=32",
        "input_mpp=1.0",  # twice the model's 0.5: upsampled for it, outputs at the input's size
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]  # one input failed
    assert "broken.png" in done.stdout + done.stderr
    mask = np.asarray(Image.open(out / "tile_a_mask.png"))
    assert mask.shape == (150, 170) and set(np.unique(mask)) <= {0, 255}
    instances = Image.open(out / "tile_a_instances.png")
    assert instances.mode.startswith("I") and instances.size == (170, 150)
    header = next(csv.reader((out / "tile_a_nuclei.csv").open()))
    assert header[:4] == ["id", "centroid_y", "centroid_x", "area"] and "area_um2" in header
    assert (out / "tile_a_overlay.png").is_file()


def test_loading_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a nucleiseg training checkpoint"):
        load_model(tmp_path / "other.ckpt")


def test_checkpoint_rebuilds_the_trained_two_stage_model(smoke_run):
    run_dir, _ = smoke_run
    module, output = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    assert output == "two_stage" and not module.training
    module1, output1 = load_model(run_dir / "checkpoints" / "stage1" / "best.ckpt")
    assert output1 == "stage1"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert module(x)["two_stage"].shape == module1(x)["stage1"].shape == (1, 1, 64, 64)


def test_evaluate_scores_a_checkpoint_like_training_does(smoke_run, tmp_path):
    from nucleiseg.evaluate import evaluate

    from conftest import compose_config

    run_dir, results = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    with_ckpt = ["experiment=smoke", f"+ckpt={ckpt}", "+whole_dataset=false"]
    scored = evaluate(compose_config(with_ckpt, tmp_path))
    assert scored["output"] == "two_stage" and scored["images"] == 4
    assert scored["test"]["two_stage"]["dice"] == pytest.approx(
        results["test"]["two_stage"]["dice"], abs=1e-6
    )
    assert "objects" in scored["test"]["two_stage"]
    whole = evaluate(compose_config([*with_ckpt[:2], "+whole_dataset=true"], tmp_path / "all"))
    assert whole["images"] == 16 and whole["split"] == "all"


def test_evaluate_counts_the_images_it_scored_and_warns_when_batches_were_cut(
    smoke_run, tmp_path, caplog
):
    from nucleiseg.evaluate import evaluate

    from conftest import compose_config

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    cut = ["experiment=smoke", f"+ckpt={ckpt}", "+whole_dataset=true",
           "dataset.datamodule.eval_batch_size=3", "++trainer.limit_test_batches=2"]  # fmt: skip
    with caplog.at_level("WARNING", logger="nucleiseg.metrics.per_image"):
        scored = evaluate(compose_config(cut, tmp_path))
    assert scored["images"] == 6 == len(scored["test"]["two_stage"]["per_image"]["dice"])
    assert "scored 6 of the 16 images of split 'all'" in caplog.text


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_runs_outside_pytorch_and_matches_it(smoke_run, tmp_path, fmt):
    from nucleiseg.inference.export import export, exported_model

    from conftest import assert_export_matches

    run_dir, _ = smoke_run
    module, _ = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    model = exported_model(module)
    path = export(model, tmp_path / f"model.{fmt}", fmt)
    assert_export_matches(model, path, fmt, [(1, 3, 64, 64), (3, 3, 150, 97)])


def test_an_onnx_export_is_one_self_contained_file(smoke_run, tmp_path):
    import shutil

    from nucleiseg.inference.export import export, exported_model

    from conftest import assert_export_matches

    run_dir, _ = smoke_run
    module, _ = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    model = exported_model(module)
    path = export(model, tmp_path / "made" / "model.onnx", "onnx")
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no weights sidecar
    alone = tmp_path / "elsewhere" / "copied.onnx"
    alone.parent.mkdir()
    shutil.copy(path, alone)  # the file alone, as a user would send it
    assert_export_matches(model, alone, "onnx", [(2, 3, 80, 72)])


def test_micronet_export_needs_a_fixed_size(tmp_path):
    from nucleiseg.inference.export import ExportedModel, export
    from nucleiseg.models import EnhancementNet, MicroNet

    model = ExportedModel(MicroNet(base_channels=2), EnhancementNet()).eval()
    with pytest.raises(ValueError, match="size=\\[H,W\\]"):
        export(model, tmp_path / "m.onnx", "onnx")
    path = export(model, tmp_path / "m.pt", "torchscript", size=(256, 256))
    assert path.is_file()


def test_evaluate_scores_a_folder_of_odd_sized_images_with_instance_masks(smoke_run, tmp_path):
    from nucleiseg.evaluate import evaluate

    from conftest import compose_config

    run_dir, _ = smoke_run
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate([(61, 75), (80, 53), (64, 64), (47, 99)]):
        Image.fromarray(smooth_image(h, w, seed=i)).save(root / "images" / f"t{i}.png")
        labels = np.zeros((h, w), np.uint16)
        labels[5:20, 5:20], labels[25:40, 30:45] = 1, 300  # instance ids, not 0/255
        Image.fromarray(labels).save(root / "masks" / f"t{i}.png")
    overrides = [
        "experiment=smoke", "dataset=folder", f"dataset.root={root}",
        "trainer.enable_progress_bar=false",
        f"+ckpt={run_dir / 'checkpoints' / 'finetune' / 'best.ckpt'}", "+whole_dataset=true",
    ]  # fmt: skip
    scored = evaluate(compose_config(overrides, tmp_path / "eval"))
    assert scored["images"] == 4
    per_image = scored["test"]["two_stage"]["per_image"]
    assert per_image["index"] == [0, 1, 2, 3] and len(per_image["dice"]) == 4
