"""Shared fixtures: Hydra composition of the real configs, and one smoke run per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "offline")  # tests never talk to a W&B server


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test) each worker, and every training it starts, keeps to its
    share of the cores (cores / workers torch threads), so the workers do not oversubscribe;
    set before any test module is collected, and on torch too in case a plugin imported it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = str(max(1, (os.cpu_count() or 1) // workers))
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", share)))


ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config a command line would give, with the run dir pointed at ``output_dir``."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def smoke_overrides(*extra: str) -> list[str]:
    return ["experiment=smoke", "trainer.enable_progress_bar=false", *extra]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One full three-phase smoke run of U-Net, shared by the tests that read its outputs."""
    from nucleiseg.training.orchestration import train

    run_dir = tmp_path_factory.mktemp("smoke_run")
    cfg = compose_config(smoke_overrides(), run_dir)
    return run_dir, train(cfg)


# a 2-candidate post-processing grid (tune_postprocess), for toy runs that tune
TINY_GRID = ["grid.threshold=[0.5]", "grid.core_threshold=[null]", "grid.min_size=[10]",
             "grid.min_distance=[4,8]", "grid.h=[]"]  # fmt: skip

MIX_OVERRIDES = ["experiment=smoke", "dataset=mix_synthetic", "trainer.enable_progress_bar=false"]

# a weight average with a short memory, so that a smoke run's few steps move it far from its start
EMA_OVERRIDES = ["callbacks=ema", "callbacks.weight_averaging.decay=0.5"]


@pytest.fixture(scope="session")
def mix_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One smoke run on the toy mix (dataset=mix_synthetic), source b drawn three times as
    often as a; shared by the tests that read its outputs."""
    from nucleiseg.training.orchestration import train

    run_dir = tmp_path_factory.mktemp("mix_run")
    cfg = compose_config([*MIX_OVERRIDES, "dataset.weights.b=3"], run_dir)
    return run_dir, train(cfg)


@pytest.fixture(scope="session")
def lizard_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The 22 real Lizard/CoNSeP pairs: (stem, RGB image, binary mask)."""
    from PIL import Image

    root = shared_dataset("lizard_consep_aug")
    pairs = []
    for image_path in sorted((root / "images").glob("*.jpg")):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(root / "masks" / f"{image_path.stem}.png")) > 127
        pairs.append((image_path.stem, image, mask))
    assert len(pairs) == 22
    return pairs


@pytest.fixture(scope="session")
def conic_root(tmp_path_factory, lizard_pairs) -> Path:
    """CoNIC layout built from the real images: 4 patches of 256x256 per image (88)."""
    from scipy import ndimage

    root = tmp_path_factory.mktemp("conic")
    images, labels, names = [], [], []
    for stem, image, mask in lizard_pairs:
        for k, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
            inst, _ = ndimage.label(mask[y : y + 256, x : x + 256])
            classes = np.where(inst > 0, 1 + inst % 6, 0)  # six nucleus classes, pooled later
            images.append(image[y : y + 256, x : x + 256])
            labels.append(np.stack([inst, classes], axis=-1))
            names.append(f"{stem}-{k}")
    np.save(root / "images.npy", np.stack(images).astype(np.uint8))
    np.save(root / "labels.npy", np.stack(labels).astype(np.int32))
    (root / "patch_info.csv").write_text("patch_info\n" + "\n".join(names) + "\n")
    return root


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data; skipped when absent, but a failure under CI=true."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real test data '{path}' is missing (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tnbc_root() -> Path:
    return shared_dataset("TNBC_NucleiSegmentation")


def assert_export_matches(model, path: Path, fmt: str, shapes) -> None:
    """The exported file gives the PyTorch model's output at every shape (dynamic sizes)."""
    import torch

    from nucleiseg.inference.export import run_exported

    for shape in shapes:
        image = torch.rand(*shape)
        with torch.no_grad():
            expected = model(image).numpy()
        got = run_exported(path, fmt, image.numpy())
        assert got.shape == (shape[0], expected.shape[1], *shape[2:])  # every output channel
        assert np.abs(got - expected).max() < 1e-4


def reference_pq_aji(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """PQ and AJI straight from their published definitions, nucleus by nucleus."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [j for j in np.unique(pred) if j]

    def iou(i, j):
        a, b = true == i, pred == j
        return (a & b).sum() / (a | b).sum()

    pairs = [(i, j, iou(i, j)) for i in t_ids for j in p_ids if iou(i, j) > 0.5]
    tp = len(pairs)
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    pq = sum(x for _, _, x in pairs) / (tp + fp / 2 + fn / 2) if (tp + fp + fn) else 1.0
    c = u = 0
    used = set()
    for i in t_ids:
        best = max(p_ids, key=lambda j: iou(i, j), default=None)
        if best is not None and iou(i, best) > 0:
            c += ((true == i) & (pred == best)).sum()
            u += ((true == i) | (pred == best)).sum()
            used.add(best)
        else:
            u += (true == i).sum()
    u += sum((pred == j).sum() for j in p_ids if j not in used)
    return pq, (c / u if u else 1.0)
