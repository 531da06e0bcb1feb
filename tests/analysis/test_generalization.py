"""The generalization matrix: every training run scored on every test set, resumable."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from nucleiseg.analysis.generalization import cell, generalization_call, plan

from conftest import CONF_DIR, TINY_GRID, compose_config

TINY = ["experiment=smoke", "stage.max_epochs=1", "figures.test_images=0",
        "trainer.enable_progress_bar=false"]  # fmt: skip
SOURCE_B = ["dataset=synthetic", "dataset.split_seed=1", "dataset.mpp=1.0",
            "dataset.datamodule.source.size=32"]  # fmt: skip


def matrix_config(out, **changes):
    cfg = OmegaConf.load(CONF_DIR / "generalization.yaml")
    for key in ("hydra", "defaults"):
        cfg.pop(key)
    plan = {
        "output_dir": str(out),
        "train": {
            "a": [*TINY, "dataset=synthetic"],
            "b": [*TINY, *SOURCE_B],
            "mix": [*TINY, "dataset=mix_synthetic"],
        },  # fmt: skip
        "test": {
            "a": ["experiment=smoke", "dataset=synthetic"],
            "b": ["experiment=smoke", *SOURCE_B],
        },  # fmt: skip
        "models": ["stage1", "two_stage"],
    }
    for key, value in {**plan, **changes}.items():  # assigned, not merged
        cfg[key] = value
    return cfg


def test_the_plan_tunes_each_model_on_its_own_rows_data_before_scoring_it(tmp_path):
    steps = plan(matrix_config(tmp_path, extra_test=[str(tmp_path / "lab_x")]))
    assert len(steps) == 3 * (1 + 2 * (1 + 3))  # train; per model: tune, 3 test sets
    tune = next(s for s in steps if s.name == "b: tune stage1")
    assert "dataset.split_seed=1" in tune.args and any("stage1/best.ckpt" in a for a in tune.args)
    small = plan(matrix_config(tmp_path, tune=["grid.h=[]"]))
    assert all(s.args[-1] == "grid.h=[]" for s in small if "tune_postprocess" in s.module)
    scored = next(s for s in steps if s.name == "mix: two_stage on lab_x")
    assert {"dataset=folder", "whole_dataset=true"} <= set(scored.args)
    assert not any(a.startswith("split=") for a in scored.args)  # a folder: every image
    with pytest.raises(ValueError, match="split='train'"):
        plan(matrix_config(tmp_path, split="train"))


def test_restain_like_adds_a_restained_column_per_test_set_and_refuses_a_missing_slide(tmp_path):
    slide = tmp_path / "lab_y.png"
    slide.write_bytes(b"")  # only its existence is checked here
    steps = plan(matrix_config(tmp_path, restain_like={"y": str(slide)}))
    assert len(steps) == 3 * (1 + 2 * (1 + 4))  # a, b, a_like_y, b_like_y
    scored = next(s for s in steps if s.name == "mix: stage1 on b_like_y")
    plain = next(s for s in steps if s.name == "mix: stage1 on b")
    assert f"restain_like={slide.resolve()}" in scored.args
    assert set(plain.args) - set(scored.args) == {a for a in plain.args if "output_dir" in a
                                                  or "run.dir" in a}  # fmt: skip
    assert not any(a.startswith("restain_like") for a in plain.args)
    with pytest.raises(ValueError, match=r"restain_like.z '.*nowhere.svs' does not exist"):
        plan(matrix_config(tmp_path, restain_like={"z": str(tmp_path / "nowhere.svs")}))


def test_the_documented_restain_like_parses_as_a_command_line_gives_it():
    import re

    from hydra import compose, initialize_config_dir

    comment = (CONF_DIR / "generalization.yaml").read_text()
    example = re.search(r"'(restain_like=\{.*\})'", comment).group(1)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("generalization", overrides=[example])
    assert dict(cfg.restain_like) == {"my_lab": "/data/my_lab/slide_01.svs"}


@pytest.mark.slow
def test_the_matrix_on_two_toy_sources_writes_every_cell_and_resumes_without_retraining(
    tmp_path, mix_run
):
    # source a alone, trained here, and the mix, the session's toy-mix run (its training
    # already done: the matrix tunes and scores it); the plan test covers every row
    run_dir, _ = mix_run
    shutil.copytree(run_dir, tmp_path / "runs" / "mix")
    cfg = matrix_config(tmp_path, models=["two_stage"], tune=TINY_GRID)
    cfg.train.pop("b")
    assert generalization_call(cfg) == 0
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert [s for s in progress["seconds_this_call"] if s.endswith("train")] == ["a: train"]
    with (tmp_path / "matrix.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2  # training runs x test sets
    for row in rows:
        for key in ("dice", "aji", "pq", "det_f1"):
            value = float(row[key])
            assert 0.0 <= value <= 1.0 and not math.isnan(value), row
    markdown = (tmp_path / "matrix.md").read_text()
    assert "## two_stage: pixel Dice" in markdown and "| mix |" in markdown
    assert "early_stopping" in markdown or "max_epochs" in markdown  # how each phase ended
    assert (tmp_path / "matrix.png").stat().st_size > 0
    # the mix's cell on b holds what evaluate wrote for it
    scored = tmp_path / "runs" / "mix" / "eval" / "test" / "two_stage" / "b" / "results.json"
    cell = next(r for r in rows if (r["train"], r["test"]) == ("mix", "b"))
    assert float(cell["dice"]) == pytest.approx(
        json.loads(scored.read_text())["test"]["two_stage"]["dice"]
    )

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    assert generalization_call(cfg) == 0  # everything done: nothing runs again
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["seconds_this_call"] == {} and progress["done"] == progress["steps"]
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()
    } == stamps


@pytest.mark.slow
def test_a_restained_column_scores_the_images_in_the_other_labs_stains(tmp_path, mix_run):
    from PIL import Image

    from nucleiseg.data.stain_normalization import MacenkoNormalizer
    from nucleiseg.data.synthetic import generate_tile

    run_dir, _ = mix_run
    shutil.copytree(run_dir, tmp_path / "runs" / "mix")
    image, _ = generate_tile(np.random.default_rng(3), 128, 1.0)
    lab = tmp_path / "lab_y.png"
    Image.fromarray(np.ascontiguousarray(image[..., ::-1])).save(lab)  # another lab's hues
    cfg = matrix_config(tmp_path, models=["two_stage"], tune=TINY_GRID,
                        train={"mix": []}, test={"b": ["experiment=smoke", *SOURCE_B]},
                        restain_like={"y": str(lab)})  # fmt: skip
    assert generalization_call(cfg) == 0
    with (tmp_path / "matrix.csv").open() as f:
        rows = {r["test"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"b", "b_like_y"} and all(rows[c]["dice"] for c in rows)
    scored = tmp_path / "runs" / "mix" / "eval" / "test" / "two_stage"
    record = json.loads((scored / "b_like_y" / "results.json").read_text())
    assert record["restained_like"]["path"] == str(lab.resolve())
    assert json.loads((scored / "b" / "results.json").read_text())["restained_like"] is None
    assert float(rows["b_like_y"]["dice"]) == pytest.approx(record["test"]["two_stage"]["dice"])
    fitted = MacenkoNormalizer.fit(image[..., ::-1].copy())  # the lab's stains, as scored
    assert np.allclose(record["restained_like"]["stain_matrix"], fitted.stain_matrix, atol=1e-4)
    assert "`*_like_y`: the same images re-stained as" in (tmp_path / "matrix.md").read_text()


def test_the_documented_smaller_tuning_grid_parses_as_a_command_line_gives_it():
    import re

    from hydra import compose, initialize_config_dir

    comment = (CONF_DIR / "generalization.yaml").read_text()
    example = re.search(r"'(tune=\[.*\])'", comment).group(1)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("generalization", overrides=[example])
    assert list(cfg.tune) == ["tta=false", "grid.threshold=[0.5]", "grid.min_distance=[4,8]"]


def dataset_roots(cfg) -> list[str]:
    """The data folders a composed training config reads (a mix: each source's)."""
    sources = cfg.dataset.get("sources") or {"": cfg.dataset}
    return [str(source.root) for source in sources.values()]


def rows_training_configs(rows: str, *overrides: str) -> dict:
    """conf/rows/<rows>.yaml's training runs: name -> the config its overrides compose."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        matrix = compose("generalization", overrides=[f"rows={rows}", *overrides])
    return {name: compose_config([str(o) for o in row]) for name, row in matrix.train.items()}


@pytest.mark.parametrize("rows", sorted(p.stem for p in (CONF_DIR / "rows").glob("*.yaml")))
def test_every_row_of_every_rows_file_composes_as_a_training_run_on_data_dir(rows):
    configs = rows_training_configs(rows, "data_dir=/my/data")
    assert configs, f"conf/rows/{rows}.yaml trains nothing"
    for name, cfg in configs.items():
        roots = dataset_roots(cfg)
        assert roots and all(r.startswith("/my/data/") for r in roots), (rows, name, roots)


def test_the_stain_rows_switch_off_every_lever_but_the_stain_re_mixing():
    for name, cfg in rows_training_configs("stain").items():
        levers = cfg.robustness
        on = {k for k, p in levers.items() if k != "scale_range" and p > 0}
        assert on == {"stain"}, (name, dict(levers))


@pytest.mark.parametrize("stored", [True, False])
def test_a_cell_reads_the_signed_count_error_percent_or_derives_it_from_an_older_file(
    stored, tmp_path
):
    objects = {"aji": 0.5, "pq": 0.4, "det_f1": 0.6, "count_error": -3.0, "true_count": 20.0}
    if stored:
        objects["count_error_pct"] = -15.0
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"test": {"two_stage": {"dice": 0.8, "objects": objects}}}))
    figures = cell(results, "two_stage")
    assert figures["count_error_pct"] == pytest.approx(-15.0)  # -3 of 20 nuclei per image
    assert figures["dice"] == pytest.approx(0.8) and figures["aji"] == pytest.approx(0.5)
    assert cell(tmp_path / "absent.json", "two_stage") is None
