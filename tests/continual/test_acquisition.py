"""The new scanner's acquisition, measured without labels and imitated on stored patches (selftrain's
``style_share``): each measurement against a constructed scanner whose resolution, intensity curve and noise are
known."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import write_nifti


def _anatomy(seed: int, shape: tuple[int, int, int] = (32, 32, 32)) -> np.ndarray:
    """A smooth body of nested ellipsoids with z-scored-like intensities (no noise), background 0."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    c = rng.uniform(-0.1, 0.1, 3)
    d = np.sqrt((xx - c[0]) ** 2 + ((yy - c[1]) / 0.9) ** 2 + ((zz - c[2]) / 0.8) ** 2)
    body = d < 0.9
    image = np.where(body, np.cos(3.0 * d) + 0.5 * np.sin(5.0 * xx + 2.0 * zz), 0.0)
    return image.astype(np.float32)


def _curve(x: np.ndarray) -> np.ndarray:
    """The constructed scanner's monotone intensity curve (a compressed, bent contrast)."""
    return (0.6 * np.tanh(1.5 * x) + 0.2).astype(np.float32)


def test_native_spacing_reads_the_header_on_the_ras_grid(tmp_path: Path) -> None:
    from medattn.data.fingerprint import native_spacing

    affine = np.array([[0, 0, 3.0, 0], [-1.2, 0, 0, 0], [0, 0.9, 0, 0], [0, 0, 0, 1]])  # stored axes: A, S, R
    path = write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 5, 6), np.float32), affine)
    assert native_spacing(path) == pytest.approx((3.0, 1.2, 0.9))  # R, A, S
    assert native_spacing(path) == tuple(float(v) for v in nib.as_closest_canonical(nib.load(path)).header.get_zooms())


def test_degrade_is_block_averaging_then_interpolation() -> None:
    """An integer factor along z is the mean over blocks of slices (NumPy), then a linear interpolation back;
    the other axes are left as they are."""
    from medattn.continual.methods._acquisition import degrade

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 8, 8, 12)).astype(np.float32))
    out = degrade(x, (1.0, 1.0, 3.0))
    blocks = x.numpy().reshape(1, 8, 8, 4, 3).mean(-1)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(blocks)[None], size=(8, 8, 12), mode="trilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    assert out.shape == x.shape and float(out.std()) < 0.7 * float(x.std())  # averaging three slices of noise
    assert degrade(x, (1.0, 1.0, 1.0)) is x  # a scanner at least as fine as the plan changes nothing


def test_the_noise_estimate_recovers_white_noise_on_a_smooth_image() -> None:
    from medattn.continual.methods._acquisition import residual_sd

    rng = np.random.default_rng(1)
    base = torch.from_numpy(_anatomy(0, (40, 40, 40)))
    mask = base != 0
    for sigma in (0.05, 0.2):
        noisy = base + torch.from_numpy(rng.normal(0, sigma, base.shape).astype(np.float32)) * mask
        assert abs(residual_sd(noisy, mask) - sigma) < 0.15 * sigma + 0.01


def test_measure_and_style_turn_a_stored_patch_into_the_target_scanner() -> None:
    """Target volumes: the same kind of anatomy acquired with slices three times thicker, through a monotone
    intensity curve, with noise 0.15. Measured from them alone: the resolution factors from their spacing, the curve
    (a clean patch styled without noise matches curve(degraded patch) within 0.05 on average) and the noise."""
    from medattn.continual.methods._acquisition import Acquisition, TargetStyle, degrade, measure

    rng = np.random.default_rng(2)
    targets, spacing = [], []
    for seed in range(6):
        clean = torch.from_numpy(_anatomy(100 + seed))[None]
        thick = degrade(clean, (1.0, 1.0, 3.0))[0].numpy()
        body = thick != 0
        image = np.where(body, _curve(thick) + rng.normal(0, 0.15, thick.shape), 0.0).astype(np.float32)
        targets.append({"image": torch.from_numpy(image)[None]})
        spacing.append((1.0, 1.0, 3.0))
    patches = torch.stack([torch.from_numpy(_anatomy(s))[None] for s in range(8)]).half()
    acq = measure(targets, spacing, (1.0, 1.0, 1.0), patches, seed=0)
    assert acq.factors == [(1.0, 1.0, 3.0)] * 6
    assert abs(acq.target_noise[0] - 0.15) < 0.03 and abs(acq.noise[0] - acq.target_noise[0]) < 0.03

    quiet = Acquisition(acq.factors, acq.target_quantiles, acq.source_quantiles, [0.0], [0.0], [0.0])
    patch = patches[0].float()
    styled = TargetStyle(quiet, seed=0)({"image": patch, "label": torch.zeros_like(patch)})["image"]
    expected = degrade(patch, (1.0, 1.0, 3.0))
    body = expected[0] != 0
    error = (styled[0][body] - torch.from_numpy(_curve(expected[0][body].numpy()))).abs().mean()
    assert float(error) < 0.05, f"styled patch off the target curve by {float(error):.3f} on average"
    assert float((styled[0][~body]).abs().max()) == 0.0  # the background stays the background
    noisy = TargetStyle(acq, seed=0)({"image": patch, "label": torch.zeros_like(patch)})["image"]
    assert abs(float((noisy - styled)[0][body].std()) - acq.noise[0]) < 0.02  # the noise that was measured


def test_translate_undoes_a_monotone_curve_and_a_contrast_inversion_inside_the_body() -> None:
    """A target volume is the reference anatomy through an increasing curve, or through a decreasing one (an
    inverted contrast): translated onto the reference's body quantiles in the right direction it is the reference
    again (NumPy's own values, within the quantile grid's error); in the wrong direction it is not; the background
    is left as stored."""
    from medattn.continual.methods._acquisition import body_quantiles, translate

    rng = np.random.default_rng(0)
    ref = torch.from_numpy(_anatomy(7))[None]
    refq = body_quantiles(ref, rng)
    body = ref[0] != 0
    for direction, target in ((1, _curve(ref.numpy())), (-1, 3.0 - 2.0 * _curve(ref.numpy()))):
        image = torch.from_numpy(np.where(body.numpy(), target, 0.0).astype(np.float32))
        back = translate(image, refq, direction, rng)
        error = (back[0][body] - ref[0][body]).abs().mean()
        assert float(error) < 0.03, f"direction {direction}: {float(error):.3f} from the reference on average"
        wrong = translate(image, refq, -direction, rng)
        assert float(np.corrcoef(wrong[0][body].numpy(), ref[0][body].numpy())[0, 1]) < -0.9
        assert float(back[0][~body].abs().max()) == 0.0


def test_an_inverted_style_shows_stored_patches_through_a_decreasing_curve() -> None:
    """``measure(direction=-1)``: the styled patch's body intensities fall where the stored patch's rise (rank
    correlation near -1), and they cover the target's intensity range; the record names the contrast."""
    from medattn.continual.methods._acquisition import TargetStyle, measure

    targets = [
        {"image": torch.from_numpy(np.where(_anatomy(s) != 0, 2.0 - _anatomy(s), 0.0))[None].float()}
        for s in range(100, 104)
    ]
    patches = torch.stack([torch.from_numpy(_anatomy(s))[None] for s in range(4)])
    acq = measure(targets, [(1.0, 1.0, 1.0)] * 4, (1.0, 1.0, 1.0), patches, seed=0, direction=-1)
    assert acq.record()["contrast"] == "inverted"
    patch = patches[0]
    styled = TargetStyle(acq, seed=0)({"image": patch, "label": torch.zeros_like(patch)})["image"]
    body = patch[0] != 0
    a, b = patch[0][body].numpy(), styled[0][body].numpy()
    rank = np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
    assert rank < -0.95, rank
    t = np.concatenate([t["image"][0][t["image"][0] != 0].numpy() for t in targets])
    assert abs(np.median(b) - np.median(t)) < 0.1 * (t.max() - t.min())


def test_selftrain_measures_a_thick_slice_site_and_trains_on_styled_labelled_patches(
    model_a: Path, tmp_path: Path
) -> None:
    """A site stored with 3 mm slices (every third slice of A-like volumes, affine saying so), no label of it: with
    ``style_share`` selftrain reads the slice thickness from the headers (factor 3 along z against the 1 mm plan),
    measures its curve and noise, and its domain's data gains the styled stored patches; without it, nothing is
    measured. A negative share is refused before anything runs."""
    import warnings

    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset
    from medattn.errors import ConfigError
    from tests.continual.conftest import bias_case, tiny_config, write_shift_dataset

    manifest_path = write_shift_dataset(tmp_path / "data", {"A": (0, False), "B": (1000, True)}, make_case=bias_case)
    thick = np.diag([1.0, 1.0, 3.0, 1.0])
    for i in range(6):
        image, label = bias_case(1000 + i, True)
        box = image.reshape(24, 24, 8, 3).mean(axis=3)  # 3 mm slices, a box slice profile
        write_nifti(tmp_path / "data" / "B" / f"B_{i}.nii.gz", box.astype(np.float32), thick)
        write_nifti(tmp_path / "data" / "B" / f"B_{i}_seg.nii.gz", label[:, :, 1::3], thick)
    records = {}
    for share in (0.0, 1.0):
        cfg = tiny_config(epochs=1, strategies="selftrain", labelled=0, methods={"selftrain": {"style_share": share}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = adapt(model_a, load_dataset(str(manifest_path)), tmp_path / f"run{share}", cfg, quiet=True)
        run = result.runs["selftrain"]
        assert not run.decisions  # B was trained on
        records[share] = [r for r in run.extras["pseudo_labels"] if r["domain"] == "B"]
    assert all("acquisition" not in r for r in records[0.0])
    acq = records[1.0][-1]["acquisition"]
    assert acq["resolution_factor_median"] == pytest.approx([1.0, 1.0, 3.0], abs=0.01)
    assert acq["resolution_factor_max"] == pytest.approx([1.0, 1.0, 3.0], abs=0.01)
    assert acq["target_noise"][0] > 0 and acq["added_noise"][0] >= 0
    assert records[1.0][-1]["styled_patches"] == 4 * 2  # one item per pseudo-labelled volume, 2 patches each
    bad = tiny_config(strategies="selftrain", labelled=0, methods={"selftrain": {"style_share": -1}})
    with pytest.raises(ConfigError, match="style_share must be a share >= 0"):
        adapt(model_a, load_dataset(str(manifest_path)), tmp_path / "bad", bad, quiet=True)
    assert not (tmp_path / "bad" / "selftrain").exists()
