"""Recipes (config group ``stage``) compose their phases from ``conf/phase/``: each phase
is defined once, and every recipe runs the phases it always ran."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from nucleiseg.lightning.phases import build_phases

from conftest import compose_config

# (name, module, trainable, max_epochs, min_epochs, patience, test_as, lr) at max_epochs=5,
# patience=2, finetune_lr=0.001: the phases each recipe had when it wrote them out in full
E, P, LR = 5, 2, 0.001
STAGE1 = ("stage1", "stage1", ["stage1"], E, 1, P, "stage1", None)
ENHANCE = ("enhance", "two_stage", ["enhancer"], E, 1, P, "stage2_frozen", None)
FINETUNE = ("finetune", "two_stage", ["stage1", "enhancer"], E, 1, P, "two_stage", LR)
EXPECTED = {
    "two_stage": [STAGE1, ENHANCE, FINETUNE],
    "base": [STAGE1],
    "base_extended": [STAGE1, ("extend", "stage1", ["stage1"], 2 * E, 1, P, "control", LR)],
    "base_wider": [
        ("joint", "two_stage", ["stage1", "enhancer"], 3 * E, P, 2 * P, "control", None)
    ],
    "enhance": [ENHANCE],
    "finetune": [FINETUNE],
    "enhance_no_image": [STAGE1, ENHANCE[:6] + (None, None), FINETUNE[:6] + ("control", LR)],
    "enhance_residual": [STAGE1, ENHANCE[:6] + (None, None), FINETUNE[:6] + ("control", LR)],
}
FIELDS = ("name", "module", "trainable", "max_epochs", "min_epochs", "patience", "test_as", "lr")


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_every_recipe_composes_the_phases_it_always_ran(recipe):
    overrides = [f"stage={recipe}", "stage.max_epochs=5", "stage.patience=2",
                 "stage.finetune_lr=0.001", "stage.init_from=x.ckpt"]  # fmt: skip
    phases = build_phases(compose_config(overrides))
    got = [tuple(asdict(p)[f] for f in FIELDS) for p in phases]
    assert got == EXPECTED[recipe]


def test_a_phase_override_on_the_command_line_reaches_that_phase_only():
    cfg = compose_config(["stage.phases.enhance.patience=7"])
    assert [p.patience for p in build_phases(cfg)] == [3, 7, 3]  # synthetic: patience 3


@pytest.mark.parametrize(("backbone", "study", "cpu"), [("micronet", 4, 16), ("unetpp", 8, 16)])
def test_the_study_narrows_the_papers_networks_and_tnbc_cpu_keeps_its_widths(backbone, study, cpu):
    from hydra.utils import instantiate

    narrow = compose_config(["experiment=study", f"backbone={backbone}"])
    recipe = compose_config(["experiment=tnbc_cpu", f"backbone={backbone}"])
    assert narrow.backbone.net.base_channels == study
    assert recipe.backbone.net.base_channels == cpu
    assert narrow.stage.max_epochs == 200  # a guard: early stopping ends every phase
    weights = sum(p.numel() for p in instantiate(narrow.backbone.net).parameters())
    assert weights < 1_000_000  # the study widths: 0.72 M (Micro-Net), 0.57 M (U-Net++)


@pytest.mark.parametrize("experiment", ["tnbc_cpu", "study", "study_v1"])
def test_presets_read_data_from_paths_data_dir_like_every_dataset(experiment, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_TNBC", "/somewhere/else")  # no environment variable decides
    cfg = compose_config([f"experiment={experiment}", "paths.data_dir=/my/data"])
    assert cfg.dataset.root == "/my/data/TNBC_NucleiSegmentation"
