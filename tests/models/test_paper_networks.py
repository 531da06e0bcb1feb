"""The paper's networks: Ronneberger's U-Net and Zhou's U-Net++ with deep supervision (MONAI),
weight counts checked layer by layer, deep supervision through the loss, any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nucleiseg.lightning.stage1 import stage1_logits
from nucleiseg.models import ClassicUNet, UNetPlusPlus

from conftest import assert_export_matches, compose_config, smoke_overrides

LEVELS = 4


def conv3x3_bn(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + c_out + 2 * c_out  # weights + bias, BatchNorm scale + shift


def block(c_in: int, c_out: int) -> int:
    return conv3x3_bn(c_in, c_out) + conv3x3_bn(c_out, c_out)


def up_conv(c_in: int, c_out: int) -> int:
    return 4 * c_in * c_out + c_out  # 2x2 transposed convolution


def published_unet(base: int = 64, monai_top: bool = False) -> int:
    """Ronneberger et al. 2015 with BatchNorm, layer by layer (3 input channels, 1 class)."""
    w = [base * 2**k for k in range(LEVELS + 1)]
    n = block(3, w[0]) + sum(block(w[k - 1], w[k]) for k in range(1, LEVELS + 1))
    for k in range(LEVELS, 1, -1):
        n += up_conv(w[k], w[k - 1]) + block(2 * w[k - 1], w[k - 1])
    top_up = w[1] if monai_top else w[0]  # MONAI keeps the width of the top up-sampling
    n += up_conv(w[1], top_up) + block(w[0] + top_up, w[0])
    return n + w[0] + 1  # 1x1 head


def published_unetpp(base: int = 32, monai_top: bool = False) -> int:
    """Zhou et al. 2018 (nested nodes X^{i,j}, four deep-supervision heads), layer by layer."""
    w = [base * 2**k for k in range(LEVELS + 1)]
    n = block(3, w[0]) + sum(block(w[k - 1], w[k]) for k in range(1, LEVELS + 1))
    for i in range(LEVELS):
        for j in range(1, LEVELS + 1 - i):
            up = w[i + 1] if (i == 0 and monai_top) else w[i]
            n += up_conv(w[i + 1], up) + block(j * w[i] + up, w[i])
    return n + LEVELS * (w[0] + 1)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_classic_unet_has_the_published_layout_at_paper_width():
    got, published = count(ClassicUNet()), published_unet()
    print(f"classic U-Net: {got:,} weights; Ronneberger with BatchNorm {published:,}")
    assert got == published_unet(monai_top=True)
    assert 0 < got - published < 0.003 * published  # MONAI's top up-sampling only


def test_unetpp_has_the_published_layout_at_paper_width():
    got, published = count(UNetPlusPlus()), published_unetpp()
    print(f"U-Net++: {got:,} weights; Zhou with BatchNorm {published:,}")
    assert got == published_unetpp(monai_top=True)
    assert 0 < got - published < 0.01 * published


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 17, 100)])
def test_odd_input_sizes_round_trip(shape):
    for model in (ClassicUNet(base_channels=4), UNetPlusPlus(base_channels=4)):
        assert model(torch.rand(*shape)).shape == (shape[0], 1, *shape[2:])


def test_deep_supervision_loss_is_the_mean_of_the_per_head_bces():
    torch.manual_seed(0)
    model = UNetPlusPlus(base_channels=4)
    image, target = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits, extra = stage1_logits(model, image, target, aux_weight=3.0)
    main_bce = F.binary_cross_entropy_with_logits(logits, target)
    heads = model.heads(image)
    per_head = [F.binary_cross_entropy_with_logits(h, target) for h in heads]
    assert torch.equal(logits, heads[-1])
    assert float(main_bce + extra) == pytest.approx(float(torch.stack(per_head).mean()), rel=1e-5)


def test_inference_uses_the_last_head_or_the_mean_of_heads():
    torch.manual_seed(0)
    model = UNetPlusPlus(base_channels=4).eval()
    image = torch.rand(1, 3, 32, 32)
    heads = model.heads(image)
    assert torch.equal(model(image), heads[-1])
    model.inference_head = "mean"
    assert torch.allclose(model(image), heads.mean(dim=0))


@pytest.mark.parametrize("backbone", ["unet", "unetpp", "smp_unet", "smp_unetpp", "micronet"])
def test_every_backbone_builds_at_small_size_and_the_paper_ones_are_monai(backbone):
    from nucleiseg.training.builders import build_modules

    cfg = compose_config(smoke_overrides(f"backbone={backbone}"))
    stage1 = build_modules(cfg)["stage1"].stage1
    expected = {"unet": ClassicUNet, "unetpp": UNetPlusPlus}.get(backbone)
    if expected is not None:
        assert isinstance(stage1, expected)
    assert stage1(torch.rand(1, 3, 48, 40)).shape == (1, 1, 48, 40)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("network", [ClassicUNet, UNetPlusPlus])
def test_export_of_the_paper_networks_matches_pytorch_at_any_size(tmp_path, network, fmt):
    from nucleiseg.inference.export import ExportedModel, export
    from nucleiseg.models import EnhancementNet

    torch.manual_seed(0)
    model = ExportedModel(network(base_channels=4), EnhancementNet()).eval()
    path = export(model, tmp_path / f"model.{fmt}", fmt)
    assert_export_matches(model, path, fmt, [(1, 3, 64, 64), (2, 3, 75, 50)])
