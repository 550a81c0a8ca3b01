"""Fixtures of the continual-learning tests: a designed scanner shift and tiny start models.

The shift: domain A images show two touching half-spheres (labels 1 and 2) brighter than the body; domain B is the
same anatomy with the body's contrast inverted (the labelled structures are darker than the body). A network that
learned A segments nothing on B, and fine-tuning on B alone teaches it the opposite intensity rule.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_nifti

SIZE = 24
PATCH = (16, 16, 16)
CASES = 6  # per domain: 4 train, 2 test
LABELS = {"0": "background", "1": "left", "2": "right"}
#: The tiny network of the tests, every topology field explicit so model-default changes do not move the results.
TINY_NET = {
    "channels": (4, 8, 16),
    "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
    "kernel_sizes": 3,
    "encoder_convs": (1, 2, 2),
    "decoder_convs": (0, 1),
    "fusion": "add",
    "upsample": "transposed",
    "norm": "instance",
    "act": "leakyrelu",
    "deep_supervision": 1,
}


def shift_case(seed: int, invert: bool, dark_air: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of one case: a sphere split into left (1) and right (2) halves inside a body; noise
    everywhere, or with ``dark_air`` inside the body only (the air exact zeros)."""
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE, SIZE)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
    r = SIZE / 4 + rng.uniform(-1, 1)
    d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    label = np.zeros(shape, np.uint8)
    label[d < r] = 1
    label[(d < r) & (xx > c[2])] = 2
    body = d < SIZE / 2.2
    image = 1.0 * body + 1.0 * (label == 1) + 2.0 * (label == 2)
    if invert:
        image = np.where(body, 5.0 - image, 0.0)
    image = image + rng.normal(0, 0.3, shape) * (body if dark_air else 1.0)
    return image.astype(np.float32), label


def stored_dark_case(seed: int, invert: bool) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`shift_case` volume with its air stored as exact zeros (noise inside the body only), as a scanner or
    a skull-stripping tool writes it: the body is then what differs from the constant background, and an inverted
    contrast (``invert``) is an encoding that a decreasing intensity curve undoes."""
    return shift_case(seed, invert, dark_air=True)


def bias_case(seed: int, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`shift_case` volume; ``shifted``: under a strong multiplicative bias field along x (0.1 to 1.9) and
    more noise. A model of A gets most of it right and is sure where it is right (precision of its confident
    foreground 0.95), the setting self-training can learn from."""
    image, label = shift_case(seed, False)
    if shifted:
        rng = np.random.default_rng(seed + 7)
        field = np.linspace(0.1, 1.9, image.shape[2])[None, None, :]
        image = image * field + rng.normal(0, 0.2, image.shape)
    return image.astype(np.float32), label


def write_shift_dataset(
    root: Path,
    domains: dict[str, tuple[int, bool]] | None = None,
    cases: int = CASES,
    test_cases: int = 2,
    name: str = "inverted-contrast shift",
    metadata: bool = True,
    make_case: Callable[[int, bool], tuple[np.ndarray, np.ndarray]] = shift_case,
) -> Path:
    """Domains of :func:`shift_case` volumes, each ``name: (seed offset, inverted)`` (default: A, then B with its
    contrast inverted), with fixed train/test splits (the last ``test_cases`` of each domain are its test split);
    returns the manifest path. ``make_case(seed, shifted)`` makes a volume (:func:`shift_case`: the shift inverts
    the contrast). ``metadata`` gives odd cases a metadata dict whose keys differ from the even ones'."""
    domains = {"A": (0, False), "B": (1000, True)} if domains is None else domains
    docs = []
    for dom, (offset, invert) in domains.items():
        items = []
        for i in range(cases):
            image, label = make_case(offset + i, invert)
            write_nifti(root / dom / f"{dom}_{i}.nii.gz", image)
            write_nifti(root / dom / f"{dom}_{i}_seg.nii.gz", label)
            item: dict[str, object] = {
                "id": f"{dom}_{i}",
                "images": [f"{dom}/{dom}_{i}.nii.gz"],
                "label": f"{dom}/{dom}_{i}_seg.nii.gz",
            }
            if metadata:  # differing keys must not break collation
                item["metadata"] = {"Manufacturer": "Acme", "index": i} if i % 2 else {}
            items.append(item)
        ids = [c["id"] for c in items]
        docs.append({"name": dom, "cases": items, "splits": {"train": ids[:-test_cases], "test": ids[-test_cases:]}})
    doc = {
        "format": "medattn-manifest",
        "version": 1,
        "name": name,
        "channels": [{"name": "MR", "modality": "MR"}],
        "labels": LABELS,
        "domains": docs,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="session")
def shift_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shift_dataset(tmp_path_factory.mktemp("shift"))


@pytest.fixture(scope="session")
def start_model(shift_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny attention-gated U-Net (:data:`TINY_NET`)."""
    import torch

    from medattn.data.importers import load_dataset
    from medattn.data.plan import make_plan
    from medattn.models.model_file import save_model
    from medattn.models.registry import build_model

    manifest = load_dataset(str(shift_manifest))
    plan = make_plan(manifest)
    torch.manual_seed(0)
    net = build_model("ag_unet", 1, 3, **TINY_NET)
    return save_model(tmp_path_factory.mktemp("start") / "model.pt", net, plan, {"note": "random init"})


def tiny_config(**overrides: object) -> object:
    """An AdaptConfig for the tiny tests: 16^3 patches, no augmentation, constant lr, no loggers."""
    from medattn.continual.config import AdaptConfig

    base: dict[str, object] = dict(
        epochs=1,
        batch_size=2,
        samples_per_volume=2,
        patch_size=PATCH,
        lr=1e-2,
        augment="none",
        poly_power=0.0,
        loggers=(),
    )
    base.update(overrides)
    return AdaptConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def model_a(shift_manifest: Path, start_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start model trained on domain A only (80 steps), through `adapt` itself: the model file of its one
    experience."""
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    manifest = load_dataset(f"{shift_manifest}:A")
    out = tmp_path_factory.mktemp("pretrain") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapt(start_model, manifest, out, tiny_config(epochs=40, eval_before=False), quiet=True)
    return out / "naive" / "00_A" / "model.pt"
