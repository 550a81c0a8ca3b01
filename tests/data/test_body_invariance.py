"""The body rule (medattn/data/body.py): how a background is stored changes neither normalisation, crop, plan nor mask.

Generated volumes: a body of random tissue values inside a constant background. Storing the background as 0, -3.6
or +100, or rescaling the whole volume by ``a * x + b`` (``a > 0``), must leave the normalised voxels, the crop box,
the planner's decisions and the predicted mask as they are for the original. Under the old rule (body = non-zero
voxels) every variant with a non-zero background fails these tests: the z-score ran over the whole volume and the
crop kept it whole.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medattn.cli import main
from medattn.data.body import BORDER_MAJORITY, body_mask, union_body_mask
from medattn.data.importers import load_dataset
from medattn.data.plan import ChannelNorm, Plan, make_plan
from medattn.data.transforms import inference_transforms, normalise_channel
from medattn.models import build_model
from medattn.models.model_file import save_model
from tests.conftest import write_nifti
from tests.infer.conftest import small_plan

SHAPE = (26, 24, 22)
ZSCORE_IN_BODY = ChannelNorm("MRI", "MR", "zscore", 0, 1, 0, 1, use_body_mask=True)

#: How a site stores the same scan: name -> function of (original volume, whose background is 0; its body). The
#: first two are a constant offset (background -3.6 as after a z-score, +100 as a float32 offset), the next two a
#: per-volume rescale ``a * x + b``; all four map every voxel, so resampling commutes with them.
VARIANTS = {
    "x - 3.6": lambda x, body: x - 3.6,
    "x + 100": lambda x, body: x + 100.0,
    "2.5 x - 7": lambda x, body: 2.5 * x - 7.0,
    "0.5 x + 30": lambda x, body: 0.5 * x + 30.0,
}
#: The background alone restored as another constant, the tissue left as it is. Without resampling this too must
#: change nothing; resampling mixes background into the edge voxels, so there it keeps only the body and the box.
BACKGROUND_ONLY = {
    "background -3.6": lambda x, body: np.where(body, x, np.float32(-3.6)),
    "background +100": lambda x, body: np.where(body, x, np.float32(100.0)),
}


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1  # type: ignore[return-value]


def _scan(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 with background 0, body mask, label): an off-centre ellipsoid of tissue with a bright lesion."""
    rng = np.random.default_rng(seed)
    body = _ellipsoid(shape, (11.0 + seed, 12.0, 10.0), (7.0, 8.0, 6.0))
    lesion = _ellipsoid(shape, (11.0 + seed, 13.0, 10.0), (3.0, 3.0, 2.5))
    image = np.zeros(shape, np.float32)
    image[body] = rng.uniform(0.5, 3.0, int(body.sum()))
    image[lesion] += 2.0
    return image.astype(np.float32), body, lesion.astype(np.uint8)


def _stored(name: str, image: np.ndarray, body: np.ndarray) -> np.ndarray:
    return np.asarray({**VARIANTS, **BACKGROUND_ONLY}[name](image, body), dtype=np.float32)


def _crop_plan(**over: object) -> Plan:
    """The inference tests' small plan, cropping to the body and z-scoring inside it; ``over`` replaces fields."""
    fields = {"crop_foreground": True, "channels": (ZSCORE_IN_BODY,), **over}
    return replace(small_plan(), **fields)  # type: ignore[arg-type]


def _bbox(mask: np.ndarray) -> tuple[list[int], list[int]]:
    idx = np.nonzero(mask)
    return [int(i.min()) for i in idx], [int(i.max()) + 1 for i in idx]


@pytest.mark.parametrize("variant", [*VARIANTS, *BACKGROUND_ONLY])
def test_normalised_voxels_do_not_depend_on_how_the_background_is_stored(variant: str) -> None:
    image, body, _ = _scan()
    reference = normalise_channel(torch.from_numpy(image), ZSCORE_IN_BODY).numpy()
    # Independent check of the reference: z-score over the known body, 0 outside.
    vals = image[body].astype(np.float64)
    np.testing.assert_allclose(reference[body], (vals - vals.mean()) / vals.std(), atol=1e-5)
    assert np.all(reference[~body] == 0)
    out = normalise_channel(torch.from_numpy(_stored(variant, image, body)), ZSCORE_IN_BODY).numpy()
    np.testing.assert_array_equal(body_mask(_stored(variant, image, body)).numpy(), body)
    assert np.all(out[~body] == 0)
    # float32 rounding of a * x + b is the only difference left.
    assert np.allclose(out, reference, rtol=0, atol=1e-4), np.abs(out - reference).max()


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.0, 0.8)], ids=["same grid", "resampled"])
@pytest.mark.parametrize("variant", [*VARIANTS, *BACKGROUND_ONLY])
def test_crop_box_and_preprocessed_image_do_not_depend_on_the_background(
    tmp_path: Path, variant: str, spacing: tuple[float, float, float]
) -> None:
    """Through the inference pipeline (resample, normalise, crop to the body): same box, same voxels."""
    image, body, _ = _scan(seed=1)
    affine = np.diag([*spacing, 1.0])
    write_nifti(tmp_path / "original.nii.gz", image, affine)
    write_nifti(tmp_path / "stored.nii.gz", _stored(variant, image, body), affine)
    transform = inference_transforms(_crop_plan())
    ref = transform({"image": str(tmp_path / "original.nii.gz")})
    out = transform({"image": str(tmp_path / "stored.nii.gz")})
    assert ref["image"].shape[1:] != image.shape  # the crop did something
    if spacing == (1.0, 1.0, 1.0):  # no resampling: the box is the body's own bounding box
        start, end = _bbox(body)
        assert list(ref["foreground_start_coord"]) == start and list(ref["foreground_end_coord"]) == end
    assert list(out["foreground_start_coord"]) == list(ref["foreground_start_coord"])
    assert list(out["foreground_end_coord"]) == list(ref["foreground_end_coord"])
    assert out["image"].shape == ref["image"].shape
    np.testing.assert_allclose(np.asarray(out["image"].affine), np.asarray(ref["image"].affine))
    body_out, body_ref = out["image"].numpy() != 0, ref["image"].numpy() != 0
    np.testing.assert_array_equal(body_out, body_ref)
    if variant in VARIANTS or spacing == (1.0, 1.0, 1.0):
        assert np.allclose(out["image"].numpy(), ref["image"].numpy(), rtol=0, atol=1e-4)


def test_multichannel_crop_uses_the_union_and_normalisation_each_channel_body(tmp_path: Path) -> None:
    """Two channels whose bodies differ: the one crop box holds both; each channel is 0 outside its own body."""
    a, body_a, _ = _scan(seed=0)
    b, body_b, _ = _scan(seed=3)  # the same ellipsoid moved 3 voxels along X
    b = np.where(body_b, b, np.float32(-3.6))  # and stored with another background
    write_nifti(tmp_path / "two.nii.gz", np.stack([a, b], axis=-1))
    np.testing.assert_array_equal(union_body_mask(np.stack([a, b])).numpy(), body_a | body_b)
    plan = _crop_plan(channels=(replace(ZSCORE_IN_BODY, name="a"), replace(ZSCORE_IN_BODY, name="b")))
    out = inference_transforms(plan)({"image": str(tmp_path / "two.nii.gz")})
    start, end = _bbox(body_a | body_b)
    assert list(out["foreground_start_coord"]) == start and list(out["foreground_end_coord"]) == end
    box = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
    for c, body in enumerate((body_a, body_b)):
        assert np.all(out["image"][c].numpy()[~body[box]] == 0)
        assert np.abs(out["image"][c].numpy()[body[box]]).min() > 0


def test_noisy_volume_without_a_constant_background_is_normalised_whole() -> None:
    """Noise everywhere, clipped at 0 as some converters store magnitude images: 0 is frequent (about 40% of the
    voxels) but does not fill half of the border, so there is no background and the body is the whole volume
    (a non-zero rule would leave those zeros out of the z-score and at 0)."""
    rng = np.random.default_rng(5)
    x = np.clip(rng.normal(0.3, 1.0, SHAPE), 0, None).astype(np.float32)
    border = np.ones(SHAPE, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert 0.3 < np.mean(x[border] == 0) < BORDER_MAJORITY
    assert bool(body_mask(x).all())
    out = normalise_channel(torch.from_numpy(x), ZSCORE_IN_BODY).numpy()
    v = x.astype(np.float64)
    np.testing.assert_allclose(out, (v - v.mean()) / v.std(), atol=1e-5)
    # A constant volume has nothing that differs from its border: the whole volume, normalised to 0.
    assert bool(body_mask(np.full(SHAPE, 7.0, np.float32)).all())
    assert np.all(normalise_channel(torch.full(SHAPE, 7.0), ZSCORE_IN_BODY).numpy() == 0)


def _dataset(root: Path, variant: str | None) -> Path:
    training = []
    for i in range(3):
        image, body, label = _scan(seed=i)
        stored = image if variant is None else _stored(variant, image, body)
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", stored)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    doc = {"name": "Bodies", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion"}}
    (root / "dataset.json").write_text(json.dumps({**doc, "training": training}))
    return root


def test_planner_treats_an_offset_background_like_a_zero_background(tmp_path: Path) -> None:
    zero = make_plan(load_dataset(_dataset(tmp_path / "zero", None)))
    offset = make_plan(load_dataset(_dataset(tmp_path / "offset", "background -3.6")))
    shifted = make_plan(load_dataset(_dataset(tmp_path / "shifted", "x + 100")))
    rescaled = make_plan(load_dataset(_dataset(tmp_path / "rescaled", "2.5 x - 7")))
    assert zero.crop_foreground and all(c.use_body_mask for c in zero.channels)
    # Only the background changed, so the foreground statistics agree too: the same plan.
    assert offset == zero
    for plan in (shifted, rescaled):  # the foreground statistics move with the intensities, nothing else does
        assert replace(plan, channels=zero.channels) == zero
        assert [c.use_body_mask for c in plan.channels] == [c.use_body_mask for c in zero.channels]
    fraction = zero.fingerprint["overall"]["body_bbox_fraction_median"]
    assert fraction < 0.75
    for plan in (offset, shifted, rescaled):
        assert plan.fingerprint["overall"]["body_bbox_fraction_median"] == pytest.approx(fraction)


def test_predicted_mask_does_not_depend_on_the_background(tmp_path: Path) -> None:
    """``medattn predict`` with a (random) model that crops to the body and z-scores inside it writes the same
    mask for the original, the offset-background and the rescaled copies of a scan."""
    plan = _crop_plan(patch_size=(16, 16, 16))
    torch.manual_seed(0)
    net = build_model("ag_unet", plan.num_channels, plan.num_classes, channels=(4, 8, 16))
    model = save_model(tmp_path / "model.pt", net, plan)
    image, body, _ = _scan(seed=2)
    affine = np.diag([-1.0, 1.0, 1.2, 1.0])
    names = ["original", *(f"v{i}" for i in range(len(VARIANTS)))]
    write_nifti(tmp_path / "in" / "original.nii.gz", image, affine)
    for i, variant in enumerate(VARIANTS):
        write_nifti(tmp_path / "in" / f"v{i}.nii.gz", _stored(variant, image, body), affine)
    assert main(["predict", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"]) == 0
    masks = {n: np.asarray(nib.load(str(tmp_path / "out" / f"{n}.nii.gz")).dataobj) for n in names}
    reference = masks.pop("original")
    assert reference.shape == SHAPE and len(np.unique(reference[body])) >= 2  # the model's output varies
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, reference, err_msg=name)
