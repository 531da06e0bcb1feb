"""Post-processing chosen on the validation split, stored in a tuned copy of the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.draw import disk, ellipse

from nucleiseg.postprocessing.watershed import InstanceSettings, instances_from_mask


def test_h_maxima_markers_split_touching_nuclei_and_keep_an_elongated_one_whole():
    mask = np.zeros((80, 140), bool)
    mask[disk((40, 30), 12)] = True
    mask[disk((40, 52), 12)] = True  # two touching discs
    mask[ellipse(40, 105, 8, 28)] = True  # one long nucleus with a flat distance ridge
    h_maxima = instances_from_mask(mask, InstanceSettings(markers="h_maxima", h=2.0))
    assert len(np.unique(h_maxima[:, :70])) - 1 == 2
    assert len(np.unique(h_maxima[:, 75:])) - 1 == 1
    peaks = instances_from_mask(mask, InstanceSettings(markers="peaks", min_distance=3))
    assert len(np.unique(peaks[:, 75:])) - 1 > 1  # what fixed-distance peaks do to it


def test_tuning_scores_its_choice_on_the_true_masks_too():
    from nucleiseg.inference.postprocess_tuning import tune

    truth = np.zeros((64, 96), np.int32)
    truth[disk((20, 20), 8)] = 1
    truth[disk((44, 70), 10)] = 2  # two separate nuclei: post-processing alone loses nothing
    merged = np.zeros_like(truth)
    merged[disk((32, 30), 10)] = 1
    merged[disk((32, 48), 10)] = 1  # two touching discs annotated as one blob
    grid = {"threshold": [0.5], "min_size": [5], "min_distance": [6], "h": []}
    predicted = [np.where(t > 0, 0.9, 0.0) for t in (truth, merged)]
    predicted[0][disk((50, 20), 6)] = 0.9  # and one false nucleus of the model's own
    result = tune(predicted, [truth, merged], grid, {"fill_holes": True})
    floor = result["chosen_on_true_masks"]
    assert result["chosen_scores"]["count_error"] == pytest.approx(1.0)  # with the model's own
    assert floor["count_error"] == pytest.approx(0.5)  # the blob split in two, on one of two
    assert floor["det_f1"] < 1.0


def test_unknown_marker_kind_is_refused():
    with pytest.raises(ValueError, match="markers"):
        InstanceSettings(markers="watershed")


def test_tuning_picks_the_count_closest_setting_on_val_and_writes_a_tuned_copy(smoke_run, tmp_path):
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import compose_config

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    original = ckpt.read_bytes()
    cfg = compose_config(["experiment=smoke", f"+ckpt={ckpt}", "+grid.threshold=[0.3,0.5]",
                          "+grid.min_size=[5]", "+grid.min_distance=[2,6]", "+grid.h=[1.0]",
                          f"+tuned_ckpt={tmp_path / 'best.tuned.ckpt'}"],
                         tmp_path)  # fmt: skip
    result = run(cfg)
    assert len(result["candidates"]) == 2 * 1 * (2 + 1)
    best = min(r["relative_abs_count_error"] for r in result["candidates"])
    assert result["chosen_scores"]["relative_abs_count_error"] == best
    assert (tmp_path / "postprocess_tuning.json").is_file()
    assert 0 <= result["chosen_on_true_masks"]["relative_abs_count_error"] < 1
    module, _ = load_model(result["tuned_checkpoint"])
    chosen = InstanceSettings(**result["chosen"])
    assert module.instance_settings == chosen
    assert ckpt.read_bytes() == original  # the original checkpoint is never changed


def test_a_second_tuning_into_the_same_places_is_refused_unless_overwrite(smoke_run, tmp_path):
    """An earlier tuning's copy and table are kept: refused before any map is computed,
    byte for byte; ``overwrite=true`` replaces them."""
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import TINY_GRID, compose_config

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    tuned, table = tmp_path / "tuned.ckpt", tmp_path / "postprocess_tuning.json"

    def tuning(*extra: str) -> dict:
        grid = [f"+{g}" for g in TINY_GRID]
        overrides = ["experiment=smoke", f"+ckpt={ckpt}", f"+tuned_ckpt={tuned}", *grid, *extra]
        return run(compose_config(overrides, tmp_path))

    tuning()
    earlier = {p: p.read_bytes() for p in (tuned, table)}
    refused = r"would replace '.*tuned.ckpt', '.*postprocess_tuning.json'.*overwrite=true"
    with pytest.raises(FileExistsError, match=refused):
        tuning("+tta=true")
    assert {p: p.read_bytes() for p in (tuned, table)} == earlier
    assert tuning("+tta=true", "overwrite=true")["tta"] is True
    assert json.loads(table.read_text())["tta"] is True


def test_tuned_copy_goes_where_asked_and_never_over_the_checkpoint(smoke_run, tmp_path):
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import write_tuned_checkpoint

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    settings = {"threshold": 0.6, "min_distance": 5, "min_size": 12, "fill_holes": True,
                "markers": "peaks", "h": 1.0}  # fmt: skip
    default = ckpt.with_name("best.tuned.ckpt")
    before = default.read_bytes() if default.exists() else None
    written = write_tuned_checkpoint(ckpt, settings, tmp_path / "wide" / "grid.ckpt")
    assert written == tmp_path / "wide" / "grid.ckpt" and written.is_file()
    assert (default.read_bytes() if default.exists() else None) == before  # left as it was
    module, _ = load_model(written)
    assert module.instance_settings == InstanceSettings(**settings)
    with pytest.raises(ValueError, match="the checkpoint itself"):
        write_tuned_checkpoint(ckpt, settings, ckpt)


def test_the_tuned_copy_is_a_model_for_use_without_what_only_resumes_training(smoke_run, tmp_path):
    """The optimizer's moments (twice the weights) stay in the run's checkpoint; the copy a
    user ships holds the same model and predicts the same maps."""
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import write_tuned_checkpoint

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    written = write_tuned_checkpoint(ckpt, {"threshold": 0.6}, tmp_path / "tuned.ckpt")
    trained = torch.load(ckpt, weights_only=True)
    tuned = torch.load(written, weights_only=True)
    assert trained["optimizer_states"] and "loops" in trained  # what a resume reads
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & tuned.keys()
    assert tuned["state_dict"].keys() == trained["state_dict"].keys()
    assert all(torch.equal(tuned["state_dict"][k], v) for k, v in trained["state_dict"].items())
    assert written.stat().st_size < 0.6 * ckpt.stat().st_size
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        original, copy = (load_model(path)[0].eval()(image) for path in (ckpt, written))
    assert original.keys() == copy.keys()
    assert all(torch.equal(original[k], copy[k]) for k in original)


def test_tuning_scores_the_validation_images_exactly_as_evaluation_scores_them(smoke_run):
    # evaluation = the module's test loop; the same images through it give the same AJI
    import lightning as L
    from hydra.utils import instantiate

    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import score, validation_probabilities

    from conftest import compose_config

    run_dir, _ = smoke_run
    module, output = load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")
    cfg = compose_config(["experiment=smoke", "dataset.datamodule.source.size=72"])
    # an evaluation transform, which evaluation applies and tuning must too
    crop = {"_target_": "albumentations.CenterCrop", "height": 40, "width": 56}
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None, eval_transform=crop)
    datamodule.setup("fit")
    probs, truths, _ = validation_probabilities(module, output, datamodule)
    settings = dict(module.instance_settings.__dict__)
    tuned = score(settings, probs, truths)
    datamodule.samples["test"] = datamodule.samples["val"]  # evaluate the validation images
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    module.phase = "evaluate"
    trainer.test(module, datamodule=datamodule, verbose=False)
    evaluated = module.split_results("test")[output]["objects"]
    assert probs[0].shape == (40, 56)
    assert tuned["aji"] == pytest.approx(evaluated["aji"], abs=1e-6)
    assert tuned["count_error"] == pytest.approx(evaluated["count_error"], abs=1e-6)


def touching_and_faint_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """A truth of two touching nuclei and a third apart, and a map that finds the third
    faintly (only the low threshold does) beside a faint false one of the same kind."""
    truth = np.zeros((64, 96), np.int32)
    truth[disk((32, 24), 11)] = 1
    truth[disk((32, 44), 11)] = 2  # two touching nuclei
    truth[disk((32, 78), 6)] = 3
    prob = np.where(truth > 0, 0.9, 0.0)
    prob[disk((32, 78), 6)] = 0.45
    prob[disk((8, 8), 4)] = 0.45
    return truth, prob


def test_each_objective_chooses_its_own_best_candidate():
    from nucleiseg.inference.postprocess_tuning import tune

    truth, prob = touching_and_faint_nuclei()
    grid = {"threshold": [0.4, 0.5], "min_size": [5], "min_distance": [4, 30], "h": []}
    results = {o: tune([prob], [truth], grid, {"fill_holes": True}, objective=o)
               for o in ("count", "aji", "pq", "aji_pq")}  # fmt: skip
    table = results["count"]["candidates"]
    figures = {"aji": lambda r: r["aji"], "pq": lambda r: r["pq"],
               "aji_pq": lambda r: r["aji"] + r["pq"],
               "count": lambda r: -r["relative_abs_count_error"]}  # fmt: skip
    for objective, figure in figures.items():
        assert figure(results[objective]["chosen_scores"]) == max(figure(r) for r in table)
        assert results[objective]["objective"] == objective
    # on this case the count and the nucleus figures disagree, so the choice is the objective's
    assert results["count"]["chosen"] != results["aji"]["chosen"]


def test_an_unknown_objective_is_refused_before_the_checkpoint_is_read(tmp_path):
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import compose_config

    cfg = compose_config(["experiment=smoke", f"+ckpt={tmp_path / 'missing.ckpt'}",
                          "+objective=dice"], tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="objective='dice'.*count, aji, pq"):
        run(cfg)


def test_tuning_with_tta_is_stored_and_evaluation_follows_it(smoke_run, tmp_path, caplog):
    import json

    from nucleiseg.evaluate import evaluate
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import TINY_GRID, compose_config

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    tuned_ckpt = tmp_path / "tta.tuned.ckpt"
    cfg = compose_config(["experiment=smoke", f"+ckpt={ckpt}", "+tta=true",
                          f"+tuned_ckpt={tuned_ckpt}", *(f"+{g}" for g in TINY_GRID)],
                         tmp_path / "tuning")  # fmt: skip
    result = run(cfg)
    assert result["tta"] is True
    assert json.loads((tmp_path / "tuning" / "postprocess_tuning.json").read_text())["tta"]
    assert load_model(tuned_ckpt)[0].tuned_with_tta
    assert not load_model(ckpt)[0].tuned_with_tta  # the original is untouched

    def scored(checkpoint, out, *extra):
        overrides = ["experiment=smoke", f"+ckpt={checkpoint}", "+input_mpp=null",
                     "+whole_dataset=false", "+split=test", *extra]  # fmt: skip
        return evaluate(compose_config(overrides, tmp_path / out))

    with caplog.at_level("INFO", logger="nucleiseg.inference.loading"):
        followed = scored(tuned_ckpt, "followed", "+tta=null")
    assert followed["tta"] is True
    assert "8x the inference time; tta=false for one view" in caplog.text  # what it costs
    caplog.clear()
    plain = scored(ckpt, "plain", "+tta=null")
    assert plain["tta"] is False
    with caplog.at_level("WARNING"):
        overridden = scored(tuned_ckpt, "overridden", "+tta=false")
    assert overridden["tta"] is False
    assert "tuned with test-time augmentation and is now applied without it" in caplog.text


def test_halves_split_each_source_in_two_in_order():
    from nucleiseg.inference.postprocess_tuning import halves

    assert halves([0, 0, 0, 1, 1]) == [0, 0, 1, 0, 1]
    assert halves([0, 0, 0, 0]) == [0, 0, 1, 1]


def test_held_out_scores_each_objectives_choice_on_the_fold_it_was_not_chosen_on():
    from nucleiseg.inference.postprocess_tuning import OBJECTIVES, halves, score, tune

    truth, faint = touching_and_faint_nuclei()
    plain = np.where(truth > 0, 0.9, 0.0)
    probs, truths = [faint, faint, plain, plain], [truth] * 4
    folds = halves([0, 0, 0, 0])
    grid = {"threshold": [0.4, 0.5], "min_size": [5], "min_distance": [4, 30], "h": []}
    result = tune(probs, truths, grid, {"fill_holes": True}, objective="aji", folds=folds)
    settings = [row["settings"] for row in result["candidates"]]
    for objective, key in OBJECTIVES.items():
        carried = []
        for chosen_on, scored_on in (([0, 1], [2, 3]), ([2, 3], [0, 1])):
            pick = [probs[i] for i in chosen_on], [truths[i] for i in chosen_on]
            best = min(settings, key=lambda c, pick=pick: key(score(c, *pick)))
            carried.append(score(best, [probs[i] for i in scored_on],
                                 [truths[i] for i in scored_on]))  # fmt: skip
        for figure in ("aji", "pq", "relative_abs_count_error"):
            expected = np.mean([c[figure] for c in carried])
            assert result["held_out"][objective][figure] == pytest.approx(expected)
    assert "folds" not in result["chosen_scores"]
    assert "held_out" not in tune(probs, truths, grid, {"fill_holes": True})
    with pytest.raises(ValueError, match="held_out=true compares two halves"):
        tune(probs[:1], truths[:1], grid, {"fill_holes": True}, folds=halves([0]))


def composed(config_name: str, *overrides: str):
    """A command's config as its command line composes it (``conf/<config_name>.yaml``)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def tuning_config(*overrides: str):
    return composed("tune_postprocess", "ckpt=x", *overrides)


def test_a_recipe_sets_its_tuning_objective_and_the_command_line_wins():
    assert tuning_config().objective == "count"
    # held-out validation (session 55): AJI + PQ carried PQ +0.02-0.03 at the same AJI
    for preset in ("generalist_cpu", "consep_cpu"):
        assert tuning_config(f"experiment={preset}").objective == "aji_pq"
    assert tuning_config("experiment=generalist_cpu", "objective=pq").objective == "pq"


def test_the_cpu_presets_tune_on_averaged_views_and_the_matrix_on_one_view_for_every_row():
    """Chosen on validation (sessions 54, 55): 8 averaged views raised the generalist's Dice,
    AJI and PQ on both sources and the CoNSeP model's held-out AJI by 0.02; the matrix keeps
    every row alike."""
    for preset in ("generalist_cpu", "consep_cpu"):
        assert tuning_config(f"experiment={preset}").tta is True
        assert tuning_config(f"experiment={preset}", "tta=false").tta is False
    assert tuning_config().tta is False and tuning_config("experiment=tnbc_cpu").tta is False
    assert list(composed("generalization").tune) == ["tta=false"]


@pytest.mark.parametrize("output_kind", ["contour", "hover"])
def test_marker_variants_scored_together_score_as_each_alone(output_kind):
    """Tuning makes an instance-aware model's mask and marker map once per image for all
    marker levels and merges (HV maps' border is the dear part): the figures are each
    variant's own."""
    from nucleiseg.data.instance_targets import instance_targets
    from nucleiseg.inference.postprocess_tuning import (
        candidates,
        marker_variant_groups,
        score,
        score_marker_variants,
        tune,
    )

    channels = {"contour": ("nucleus", "contour"), "hover": ("nucleus", "horizontal", "vertical")}
    channels = channels[output_kind]
    truth, _ = touching_and_faint_nuclei()
    noise = np.random.default_rng(0).normal(0.0, 0.15, (len(channels), *truth.shape))
    maps = np.clip(instance_targets(truth, channels) + noise, 0, 1).astype(np.float32)
    grid = {"threshold": [0.4, 0.6], "min_size": [5], "marker_threshold": [0.2, 0.5, 0.8],
            "marker_min_size": [0, 40], "hover_kernel_size": [5, 11],
            "merge_below": [None, 0.5], "merge_convex": [None, 0.9]}  # fmt: skip
    settings = candidates(grid, {"fill_holes": True}, channels)
    groups = marker_variant_groups(settings)
    assert [c for g in groups for c in g] == settings
    assert len(groups) == len(settings) // 24  # one group per threshold (and kernel)
    together = score_marker_variants(groups[-1], [maps], [truth], channels=channels)
    alone = [score(c, [maps], [truth], channels=channels) for c in groups[-1]]
    assert together == alone
    with pytest.raises(ValueError, match="merge_convex alone"):  # the knobs it may vary
        score_marker_variants([groups[0][0], groups[-1][0]], [maps], [truth], channels=channels)
    assert len({r["count_error"] for r in alone}) > 1  # the levels do differ on this case
    assert {r["count_error"] for r in alone[:3]} != {r["count_error"] for r in alone[3:]}
    table = tune([maps], [truth], grid, {"fill_holes": True}, channels=channels)["candidates"]
    assert [r["settings"] for r in table] == settings
