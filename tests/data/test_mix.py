"""dataset=mix: several sources at the model's pixel size, drawn by weight, each validated
and tested apart, the pooled validation loss weighted as they are drawn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from nucleiseg.data.io import DatasetError

from conftest import MIX_OVERRIDES as MIX
from conftest import compose_config, shared_dataset


def mix_datamodule(tmp_path, *extra: str):
    cfg = compose_config([*MIX, *extra], tmp_path)
    return instantiate(cfg.dataset.datamodule)


def test_a_mix_resamples_each_source_to_the_model_pixel_size(tmp_path):
    datamodule = mix_datamodule(tmp_path)
    datamodule.setup("fit")
    a, b = datamodule.members["a"], datamodule.members["b"]
    assert (a.mpp, b.mpp, a.model_mpp, b.model_mpp) == (0.5, 1.0, 0.5, 0.5)
    # b's 32 px images at 1 µm per pixel are 64 px at the model's 0.5
    assert np.shape(b.samples["train"].images[0])[:2] == (64, 64)
    assert np.shape(a.samples["train"].images[0])[:2] == (64, 64)
    assert datamodule.samples["val"].names[:1] == ["a/synthetic_val_0000"]
    assert datamodule.samples["val"].names[-1].startswith("b/")


def test_a_split_is_read_before_setup_as_a_single_source_reads_it(tmp_path):
    """A resumed run reuses its finished phases without fitting, then draws its figures from
    the test split: the mix sets its sources up on demand, as NucleiDataModule does."""
    datamodule = mix_datamodule(tmp_path)
    test = datamodule.dataset("test")
    assert len(test) == 8
    assert test.samples.names[0].startswith("a/") and test.samples.names[-1].startswith("b/")
    assert test[len(test) - 1]["image"].shape[-2:] == (64, 64)


def test_training_batches_draw_both_sources_by_weight(tmp_path):
    datamodule = mix_datamodule(tmp_path, "dataset.weights.b=3")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    assert batch["image"].shape[1:] == (3, 64, 64)
    size_a = len(datamodule.members["a"].dataset("train"))
    draws = torch.tensor([i for _ in range(50) for i in loader.sampler])
    share_b = float((draws >= size_a).float().mean())
    assert share_b == pytest.approx(0.75, abs=0.03)  # weights 1 : 3, whatever the sizes


def test_a_weight_for_a_source_the_mix_lacks_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"dataset.weights names \['c'\]") as info:
        mix_datamodule(tmp_path, "+dataset.weights.c=1")
    assert isinstance(info.value.__cause__ or info.value, DatasetError)


def test_sources_with_different_crop_sizes_are_refused(tmp_path):
    with pytest.raises(Exception, match="crops of one size"):
        mix_datamodule(tmp_path, "dataset.sources.b.datamodule.crop_size=32")


def metric_rows(run_dir) -> list[dict[str, str]]:
    (path,) = run_dir.glob("csv/**/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_validation_is_logged_per_source_and_pooled_as_the_sources_are_drawn(mix_run):
    run_dir, _ = mix_run
    rows = [r for r in metric_rows(run_dir) if r.get("stage1/val/loss")]
    assert rows, "no validation epoch logged"
    for row in rows:
        a, b = float(row["stage1/val/a/loss"]), float(row["stage1/val/b/loss"])
        assert float(row["stage1/val/loss"]) == pytest.approx(0.25 * a + 0.75 * b, rel=1e-4)
        assert row["stage1/val/a/stage1/dice"] != "" and row["stage1/val/b/stage1/dice"] != ""
    assert any(float(r["stage1/val/a/loss"]) != float(r["stage1/val/b/loss"]) for r in rows)


@pytest.mark.slow
def test_results_have_a_test_row_per_source_that_evaluate_reproduces(mix_run, tmp_path):
    from nucleiseg.evaluate import evaluate

    run_dir, results = mix_run
    two_stage = results["test"]["two_stage"]
    assert set(two_stage["sources"]) == {"a", "b"}
    for row in two_stage["sources"].values():
        assert {"dice", "precision", "recall", "iou"} <= set(row)
        assert {"aji", "pq", "det_f1"} <= set(row["objects"])
    assert len(results["test_images"]) == 8 and len(two_stage["per_image"]["dice"]) == 8
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]
    # source a alone, scored by evaluate at its own (the model's) grid: the same figures
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    alone = evaluate(compose_config([
        "experiment=smoke", "dataset=synthetic", "dataset.datamodule.source.num_test=4",
        f"+ckpt={ckpt}", "+whole_dataset=false",
    ], tmp_path))  # fmt: skip
    assert alone["test"]["two_stage"]["dice"] == pytest.approx(
        two_stage["sources"]["a"]["dice"], abs=1e-6
    )


def test_tuning_a_mix_scores_its_choice_on_each_source_apart(mix_run, tmp_path):
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import TINY_GRID

    run_dir, _ = mix_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    cfg = compose_config([*MIX, f"+ckpt={ckpt}", f"+tuned_ckpt={tmp_path / 'tuned.ckpt'}",
                          *(f"+{g}" for g in TINY_GRID)], tmp_path / "tuning")  # fmt: skip
    result = run(cfg)
    by_source = result["chosen_by_source"]
    assert set(by_source) == {"a", "b"}
    # the sources' images make the pooled figures: their true nuclei add up
    pooled = result["chosen_scores"]
    sizes = {"a": 4, "b": 4}  # validation images of each toy source
    total = sum(sizes[n] * by_source[n]["true_count"] for n in sizes)
    assert total == pytest.approx(sum(sizes.values()) * pooled["true_count"], rel=1e-5)
    stored = json.loads((tmp_path / "tuning" / "postprocess_tuning.json").read_text())
    assert set(stored["chosen_by_source"]) == {"a", "b"}


def test_a_source_the_choice_fails_shows_in_its_own_figures():
    from nucleiseg.inference.postprocess_tuning import chosen_by_source

    truth = np.zeros((64, 64), dtype=np.int32)
    truth[8:20, 8:20], truth[30:44, 30:44] = 1, 2
    found = (truth > 0).astype(np.float32)  # source 0: every nucleus; source 1: none
    settings = {"threshold": 0.5, "min_size": 10, "markers": "peaks", "min_distance": 4}
    figures = chosen_by_source(settings, [found, np.zeros_like(found)], [truth, truth],
                               [0, 1], ["kept", "missed"])  # fmt: skip
    assert figures["kept"]["det_f1"] == pytest.approx(1.0)
    assert figures["kept"]["count_error"] == 0
    assert figures["missed"]["det_f1"] == 0.0 and figures["missed"]["count_error"] == -2


def generalist_datamodule(tmp_path):
    """experiment=generalist_cpu's mix on the shared TNBC and CoNSeP copies."""
    data = shared_dataset("consep").parent
    shared_dataset("TNBC_NucleiSegmentation")
    cfg = compose_config(["experiment=generalist_cpu", f"paths.data_dir={data}"], tmp_path)
    return instantiate(cfg.dataset.datamodule)


def test_the_generalist_mix_reads_tnbc_and_consep_split_by_their_own_rules(tmp_path):
    datamodule = generalist_datamodule(tmp_path)
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [10, 80]  # TNBC 10, CoNSeP 5 x 16
    assert list(datamodule.source_weights) == ["tnbc", "consep"]
    consep = datamodule.members["consep"].samples["val"].names
    assert len({n.rsplit("_", 1)[0] for n in consep}) == 5  # whole source images


def test_the_generalist_draws_each_source_as_often_as_its_own_preset_does(tmp_path):
    datamodule = generalist_datamodule(tmp_path)
    datamodule.setup("fit")
    sizes = [len(d) for d in datamodule.dataset("train").datasets]
    assert sizes == [60, 352]  # TNBC's 30 training images twice, CoNSeP's 352 tiles once
    draws = [share * sum(sizes) for share in datamodule.source_weights.values()]
    assert draws == pytest.approx(sizes, abs=1)


def test_a_resumed_mix_draws_the_batches_the_uninterrupted_one_draws(tmp_path):
    """The sampling generator and every source's augmentation states travel in the
    checkpoint (``state_dict``): a resumed run's next batch is the one it would have drawn."""
    overrides = ["+augmentation=robust", "dataset.weights.b=2"]
    first = mix_datamodule(tmp_path, *overrides)
    first.setup("fit")
    next(iter(first.train_dataloader()))  # an epoch under way
    saved = first.state_dict()
    expected = next(iter(first.train_dataloader()))

    resumed = mix_datamodule(tmp_path, *overrides)
    resumed.setup("fit")
    resumed.load_state_dict(saved)
    batch = next(iter(resumed.train_dataloader()))
    assert torch.equal(batch["image"], expected["image"])
    assert torch.equal(batch["instances"], expected["instances"])
    with pytest.raises(ValueError, match="resume with the sources"):
        resumed.load_state_dict({**saved, "members": {"a": saved["members"]["a"]}})
