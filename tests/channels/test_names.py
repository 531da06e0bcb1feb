"""The output channels' vocabulary: one check of the names for the data, the losses and the
modules, and one encoding of the offset channels for targets, losses, TTA and watershed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleiseg.channels.names import (
    check_channels,
    decode_offsets,
    encode_offsets,
    negated_offsets,
    offset_indices,
)


@pytest.mark.parametrize(
    "channels",
    [(), ("contour", "nucleus"), ("nucleus", "nucleus"), ("nucleus", "edges"),
     ("nucleus", "horizontal"), ("nucleus", "vertical", "contour")],
)  # fmt: skip
def test_channels_out_of_the_rules_are_refused_with_the_key_and_the_rules(channels):
    with pytest.raises(ValueError, match=r"output_kind.channels must start with 'nucleus'"):
        check_channels(channels)


def test_hover_channels_come_in_pairs_and_are_found_in_either_order():
    with pytest.raises(ValueError, match="'horizontal' and 'vertical' together"):
        check_channels(("nucleus", "horizontal"))
    assert check_channels(["nucleus", "vertical", "horizontal"]) == (
        "nucleus", "vertical", "horizontal",
    )  # fmt: skip
    assert offset_indices(("nucleus", "vertical", "horizontal")) == (2, 1)
    assert offset_indices(("nucleus", "contour")) is None


@pytest.mark.parametrize("as_array", [np.asarray, torch.tensor])
def test_offsets_are_stored_as_a_sigmoids_range_and_back(as_array):
    offsets = as_array([-1.0, -0.25, 0.0, 0.5, 1.0])
    stored = encode_offsets(offsets)
    assert float(stored.min()) == 0.0 and float(stored.max()) == 1.0
    assert float(stored[2]) == 0.5  # a nucleus's centre and the background
    np.testing.assert_allclose(np.asarray(decode_offsets(stored)), np.asarray(offsets))
    np.testing.assert_allclose(
        np.asarray(negated_offsets(stored)), np.asarray(encode_offsets(-offsets))
    )
