"""Export the full trained model (stage 1 + enhancer) to TorchScript or ONNX.

The exported graph maps an RGB batch (N, 3, H, W) in 0..1 to the final probabilities
(N, C, H, W): the nucleus first, then an instance-aware model's other channels
(``output_kind=contour|distance|hover``: the checkpoint's ``model.channels``), with dynamic batch,
height and width for U-Net and U-Net++ (their padding to a multiple of 32 is traced as
shape arithmetic; tracing happens on a size that needs padding, and every export is checked
against PyTorch on a second size). Micro-Net's tiling depends on the input size in Python,
so it exports for one fixed ``size``.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nucleiseg.files.atomic import write_atomic
from nucleiseg.models.enhancer import enhance
from nucleiseg.models.micronet import MicroNet

TRACE_SIZE = (97, 83)  # not a multiple of 32 in either side: the padding path is traced
CHECK_SIZE = (131, 200)
TOLERANCE = 1e-4
ONNX_SINGLE_FILE_LIMIT = 2**31  # protobuf's limit on one serialised message


class ExportedModel(nn.Module):
    """Plain nn.Module of the two-stage (or stage-1-only) model returning probabilities."""

    def __init__(
        self,
        stage1: nn.Module,
        enhancer: nn.Module | None,
        sees_image: bool = True,
        residual: bool = False,
    ):
        super().__init__()
        self.stage1 = stage1
        self.enhancer = enhancer
        self.sees_image = sees_image
        self.residual = residual

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits1 = self.stage1(image)
        if self.enhancer is None:
            return torch.sigmoid(logits1)
        return torch.sigmoid(enhance(self.enhancer, image, logits1, self.sees_image, self.residual))


class ExportedEnsemble(nn.Module):
    """Several exported models as one graph: their probabilities averaged
    (``nucleiseg.lightning.ensemble``)."""

    def __init__(self, members: list[ExportedModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(image) for member in self.members]).mean(0)


def exported_model(module) -> ExportedModel | ExportedEnsemble:
    """The plain nn.Module of a loaded module (an ensemble's: its members averaged)."""
    members = getattr(module, "members", None)
    if members is not None:
        return ExportedEnsemble([exported_model(member) for member in members]).eval()
    enhancer = getattr(module, "enhancer", None)
    sees_image = getattr(module, "enhancer_sees_image", True)
    residual = getattr(module, "residual", False)
    return ExportedModel(module.stage1, enhancer, sees_image, residual).eval()


def export(
    model: ExportedModel | ExportedEnsemble,
    path: str | Path,
    fmt: str,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` or ``torchscript``) and check it against PyTorch.

    The file is written beside ``path`` under a temporary name and renamed over ``path``
    only once the check passes: a good model already there is never replaced by a failed one.
    An ONNX file holds its weights (no external-data sidecar): it runs when copied alone.
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"unknown format '{fmt}'; use onnx or torchscript")
    if fmt == "onnx":  # both before anything is written
        require_single_file_onnx_export()
        size_bytes = weight_bytes(model)
        if size_bytes >= ONNX_SINGLE_FILE_LIMIT:
            raise ValueError(
                f"the model's weights take {size_bytes / 2**30:.1f} GiB, over the 2 GiB an "
                "ONNX file can hold in one piece; export format=torchscript instead"
            )

    def write(tmp: Path) -> None:
        try:
            _write_and_check(model, tmp, fmt, size)
        finally:  # the weights sidecar torch writes for external data: never left behind
            Path(f"{tmp}.data").unlink(missing_ok=True)

    return write_atomic(Path(path), write)


def require_single_file_onnx_export() -> None:
    """The torch.export-based exporter with ``external_data`` (torch >= 2.6): fail clearly
    on an older torch rather than write an ONNX file whose weights lie beside it."""
    parameters = inspect.signature(torch.onnx.export).parameters
    if "dynamo" not in parameters or "external_data" not in parameters:
        raise RuntimeError(
            f"ONNX export needs torch.onnx.export(dynamo=True, external_data=False), which "
            f"torch {torch.__version__} lacks; upgrade torch (>= 2.6) or use format=torchscript"
        )


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _write_and_check(model: nn.Module, path: Path, fmt: str, size: tuple[int, int] | None) -> None:
    fixed = any(isinstance(part, MicroNet) for part in model.modules())
    if fixed and size is None:
        raise ValueError(
            "Micro-Net tiles its input in Python and cannot export with a dynamic size; "
            "pass size=[H,W] (e.g. size=[512,512])"
        )
    trace_size = tuple(size) if size else TRACE_SIZE
    check_size = tuple(size) if size else CHECK_SIZE
    example = torch.rand(1, 3, *trace_size)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit deprecation and tracer notes
            torch.jit.trace(model, example, check_trace=False).save(str(path))
    elif fmt == "onnx":
        dims = None
        if not size:
            dims = {
                "image": {
                    0: torch.export.Dim("batch", min=1, max=1024),
                    2: torch.export.Dim("height", min=32, max=16384),
                    3: torch.export.Dim("width", min=32, max=16384),
                }
            }
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, dynamic_shapes=dims,
            input_names=["image"], output_names=["probability"], external_data=False,
        )  # fmt: skip
    difference = check_export(model, path, fmt, (2, 3, *check_size))
    if difference > TOLERANCE:
        raise RuntimeError(
            f"the exported {fmt} model differs from PyTorch by {difference:.2e} on a "
            f"{check_size} input; nothing was written"
        )


def run_exported(path: Path, fmt: str, image: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": image})[0]
    with torch.no_grad():
        return torch.jit.load(str(path))(torch.from_numpy(image)).numpy()


def check_export(model: nn.Module, path: Path, fmt: str, shape: tuple[int, ...]) -> float:
    image = torch.rand(*shape)
    with torch.no_grad():
        expected = model(image).numpy()
    return float(np.abs(run_exported(path, fmt, image.numpy()) - expected).max())
