"""U-Net and U-Net++ stage-1 backbones from segmentation-models-pytorch.

``encoder_weights`` defaults to ``None`` so nothing is downloaded; asking for pretrained
weights without network access fails at once with a message saying what to do.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp

from nucleiseg.models.padding import PadToMultiple


class PretrainedWeightsUnavailableError(RuntimeError):
    """Raised when pretrained encoder weights cannot be fetched or found."""


def build_smp_model(
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    pad_multiple: int = 32,
    **kwargs,
) -> PadToMultiple:
    """Create an smp model by name, wrapped so that it takes any input size."""
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except (OSError, ConnectionError) as err:  # hub errors subclass OSError
        if encoder_weights is None:
            raise
        raise PretrainedWeightsUnavailableError(
            f"could not load '{encoder_weights}' weights for encoder '{encoder_name}' "
            f"({type(err).__name__}: {err}). Without network access set "
            "backbone.net.encoder_weights=null, or pre-download the weights into the "
            "Hugging Face / torch hub cache on a connected machine."
        ) from err
    return PadToMultiple(model, multiple=pad_multiple)
