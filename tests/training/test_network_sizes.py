"""Which network widths a command trains: the synthetic default picks CPU widths, the
paper's commands (real datasets) keep the published ones, and ``size=...`` beats both."""

from __future__ import annotations

import itertools

import pytest

from conftest import compose_config

#: the published widths the paper's sweep must build (base_channels of each classic network)
PAPER_WIDTHS = {"unet": 64, "micronet": 64, "unetpp": 32}


@pytest.mark.parametrize(
    ("dataset", "backbone"), itertools.product(["lizard", "tnbc"], sorted(PAPER_WIDTHS))
)
def test_the_paper_sweep_builds_the_published_widths(dataset, backbone):
    # python -m nucleiseg.train -m dataset=lizard,tnbc backbone=unet,micronet,unetpp (make paper)
    cfg = compose_config([f"dataset={dataset}", f"backbone={backbone}"])
    assert cfg.size.name == "paper"
    assert cfg.backbone.net.base_channels == PAPER_WIDTHS[backbone]


def test_the_default_run_trains_the_cpu_width_unet():
    cfg = compose_config([])  # python -m nucleiseg.train
    assert (cfg.dataset.name, cfg.backbone.name, cfg.size.name) == ("synthetic", "unet", "cpu")
    assert cfg.backbone.net.base_channels == 16


@pytest.mark.parametrize(("size", "width"), [("paper", 64), ("small", 8)])
def test_size_on_the_command_line_beats_the_datasets_choice(size, width):
    cfg = compose_config([f"size={size}"])
    assert cfg.size.name == size and cfg.backbone.net.base_channels == width


def test_the_smoke_preset_stays_at_toy_size():
    cfg = compose_config(["experiment=smoke"])
    assert cfg.size.name == "small" and cfg.backbone.net.base_channels == 8
    assert cfg.dataset.datamodule.source.size == 64
