"""The three-phase pipeline trains on real data in each layout (smoke size)."""

from __future__ import annotations

from collections import Counter

from hydra.utils import instantiate

from nucleiseg.data.splits import read_split_file
from nucleiseg.training.orchestration import train

from conftest import compose_config, smoke_overrides


def test_tnbc_smoke_run_uses_the_papers_split_and_writes_it(tnbc_root, tmp_path):
    overrides = smoke_overrides(
        "dataset=tnbc",
        f"dataset.root={tnbc_root}",
        "stage.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1",
        "figures.test_images=0",
    )
    results = train(compose_config(overrides, tmp_path))
    assert results["status"] == "finished" and results["dataset"] == "tnbc"
    assert set(results["test"]) == {"stage1", "stage2_frozen", "two_stage"}
    split = read_split_file(tmp_path / "split.csv")
    assert Counter(split.values()) == {"train": 30, "val": 10, "test": 10}


def test_lizard_conic_layout_trains_stage1(conic_root, tmp_path):
    overrides = smoke_overrides(
        "dataset=lizard", f"dataset.root={conic_root}", "stage=base", "stage.max_epochs=1"
    )
    results = train(compose_config(overrides, tmp_path))
    assert results["dataset"] == "lizard" and 0.0 <= results["test"]["stage1"]["dice"] <= 1.0
    assert len(read_split_file(tmp_path / "split.csv")) == 88


def test_study_reads_tnbc_at_20x_crops_training_and_keeps_whole_test_images(tnbc_root, tmp_path):
    cfg = compose_config(["experiment=study", f"dataset.root={tnbc_root}"], tmp_path)
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 128, 128)  # 256 px crops at 40x, resized to 20x
    val = datamodule.dataset("val")[0]
    assert val["image"].shape == (3, 256, 256) and val["instances"].shape == (256, 256)
    assert set(val["mask"].unique().tolist()) == {0.0, 1.0}
    assert len(datamodule.dataset("train")) == 30 * cfg.dataset.datamodule.train_repeats


def test_make_tnbc_cpu_trains_tunes_and_scores_tnbc_and_consep_at_toy_size(tnbc_root, tmp_path):
    """The recipe's one command end to end (train, tune post-processing on validation,
    score the TNBC test split and CoNSeP's test split), at toy size: 1 epoch of 2 batches
    per phase (validation and test: one batch of two images), narrow encoder, a 2-setting
    tuning grid, CoNSeP in its own layout with seven of its images (six training, as its 5
    validation images need, and one test)."""
    import json
    import subprocess

    from omegaconf import OmegaConf

    from nucleiseg.training.precision import cpu_precision

    from conftest import ROOT, TINY_GRID, shared_dataset

    shared, consep = shared_dataset("consep"), tmp_path / "consep"
    for split, image in [("train", i) for i in range(1, 7)] + [("test", 1)]:
        for part in ("images", "masks", "types"):
            (consep / split / part).mkdir(parents=True, exist_ok=True)
            for path in (shared / split / part).glob(f"{split}_{image}_*"):
                (consep / split / part / path.name).write_bytes(path.read_bytes())
    run = tmp_path / "run"
    # validation and test: one batch of two images (evaluate says how many it scored)
    toy = ("size=small stage.max_epochs=1 ++trainer.limit_train_batches=2 "
           "++trainer.limit_val_batches=1 ++trainer.limit_test_batches=1 "
           "dataset.datamodule.eval_batch_size=2 figures.test_images=0 "
           "dataset.datamodule.crop_size=128 trainer.enable_progress_bar=false")  # fmt: skip
    grid = " ".join(TINY_GRID)
    command = ["make", "tnbc-cpu", f"TNBC_ROOT={tnbc_root}", f"CONSEP_ROOT={consep}",
               f"RUN={run}", f"ARGS={toy}", f"TUNE_ARGS={grid}"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished" and results["backbone"] == "unet"
    assert [p["name"] for p in results["phases"]] == ["stage1", "enhance", "finetune"]
    config = OmegaConf.load(run / "config.yaml")
    assert config.trainer.precision == cpu_precision() and config.stage.patience == 10
    tuning = json.loads((run / "tuning" / "postprocess_tuning.json").read_text())
    assert tuning["chosen"]["min_distance"] in (4, 8)
    tnbc = json.loads((run / "eval_tnbc" / "results.json").read_text())
    scored_consep = json.loads((run / "eval_consep" / "results.json").read_text())
    assert (tnbc["images"], tnbc["split"]) == (2, "test")
    assert (scored_consep["images"], scored_consep["split"]) == (2, "test")
    assert scored_consep["input_mpp"] == scored_consep["model_mpp"] == 0.25
    for scored in (tnbc, scored_consep):
        assert {"dice", "objects"} <= set(scored["test"]["two_stage"])
