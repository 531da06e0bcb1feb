"""Backbones and the enhancement network: sizes, weight counts, shape contracts."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from nucleiseg.models import EnhancementNet, MicroNet, PadToMultiple, build_smp_model
from nucleiseg.models.micronet import MicroNetTile
from nucleiseg.models.smp_backbones import PretrainedWeightsUnavailableError

from conftest import compose_config


def count(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def test_enhancer_has_the_papers_76289_trainable_weights():
    assert count(EnhancementNet()) == 76_289


def test_enhancer_from_config_matches_paper():
    cfg = compose_config([])
    assert count(instantiate(cfg.model.enhancer)) == 76_289


def test_enhancer_keeps_resolution_and_returns_one_channel():
    out = EnhancementNet()(torch.rand(2, 4, 37, 51))
    assert out.shape == (2, 1, 37, 51)


def test_enhancer_rejects_input_without_probability_channel():
    with pytest.raises(ValueError, match="4 input channels"):
        EnhancementNet()(torch.rand(1, 3, 16, 16))


def test_micronet_at_published_width_has_tiatoolbox_weight_count():
    with torch.device("meta"):
        tile = MicroNetTile(in_channels=3, classes=2, base_channels=64)
    assert count(tile, trainable_only=False) == 184_400_264


def test_micronet_tile_only_takes_252_pixel_tiles():
    tile = MicroNetTile(base_channels=2)
    assert tile(torch.rand(1, 3, 252, 252))[0].shape == (1, 1, 252, 252)
    with pytest.raises(ValueError, match="252x252"):
        tile(torch.rand(1, 3, 256, 256))


def test_micronet_auxiliary_outputs_cover_the_input():
    main, aux = MicroNet(base_channels=2).forward_with_aux(torch.rand(1, 3, 300, 260))
    assert main.shape == (1, 1, 300, 260)
    assert len(aux) == 3 and all(a.shape == main.shape for a in aux)


@pytest.mark.parametrize("backbone", ["unet", "unetpp", "micronet"])
@pytest.mark.parametrize("size", [(67, 93), (128, 128), (256, 200)])
def test_backbone_returns_map_of_input_size(backbone, size):
    cfg = compose_config([f"backbone={backbone}", "size=small"])
    net = instantiate(cfg.backbone.net).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_pad_to_multiple_crops_back_to_the_exact_input():
    identity = torch.nn.Identity()
    x = torch.rand(1, 3, 45, 70)
    assert torch.equal(PadToMultiple(identity, multiple=32)(x), x)


def test_micronet_tiling_keeps_each_tiles_trusted_centre():
    """Whole-tile inference equals the tiled model on a 252 image (one tile, no stitching)."""
    model = MicroNet(base_channels=2).eval()
    x = torch.rand(1, 3, 200, 200)
    with torch.no_grad():
        tiled = model(x)
        padded = torch.nn.functional.pad(x, (26, 26, 26, 26), mode="reflect")
        direct = model.net(padded)[0][..., 26:226, 26:226]
    assert torch.allclose(tiled, direct, atol=1e-6)


def test_pretrained_weights_offline_fail_with_a_clear_message(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as with no network
    with pytest.raises(PretrainedWeightsUnavailableError, match="encoder_weights=null"):
        build_smp_model("Unet", encoder_name="resnet18", encoder_weights="imagenet")
