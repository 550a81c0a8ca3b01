"""Scanner-shift transforms against independent computations, and the samplers' determinism and ranges."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from medattn.data.acquisition import (
    SHIFT_FORMAT,
    apply_shift,
    bias_field,
    change_resolution,
    contrast_curve,
    decode_intensity,
    encode_intensity,
    gibbs_ringing,
    legendre_exponents,
    reorient,
    resample_grid,
    rician_noise,
)
from medattn.data.io import spacing_from_affine
from medattn.data.scanner_table import PROFILES, get_profiles
from medattn.data.scanners import ScannerProfile, simulate_scanner


def _affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine @ np.append(np.asarray(ijk, dtype=float), 1.0))[:3]


def _test_volume(shape: tuple[int, int, int] = (20, 22, 18), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[5:12, 6:14, 4:10] = 1
    label[12:15, 6:14, 4:10] = 2
    image = (100 + 300 * (label == 1) + 500 * (label == 2) + rng.normal(0, 10, shape)).astype(np.float32)
    return image, label


# ---- contrast ----------------------------------------------------------------------------------------------------


def test_gamma_curve_values() -> None:
    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(contrast_curve(x, 2.0, (0.0, 1.0)), x.astype(np.float64) ** 2, atol=1e-6)
    np.testing.assert_allclose(contrast_curve(x, 0.5, (0.0, 1.0)), np.sqrt(x), atol=1e-6)
    # outside the window saturates
    np.testing.assert_allclose(contrast_curve(np.array([-0.5, 1.7]), 1.0, (0.0, 1.0)), [0.0, 1.0])


def test_knots_invert_tissue_contrast_but_keep_air_dark() -> None:
    knots, pos = (0.0, 0.9, 0.2), (0.0, 0.1, 1.0)
    out = contrast_curve(np.array([0.0, 0.1, 0.55, 1.0]), 1.0, knots, pos)
    np.testing.assert_allclose(out, [0.0, 0.9, 0.55, 0.2], atol=1e-6)
    with pytest.raises(ValueError, match="increase"):
        contrast_curve(np.zeros(3), 1.0, (0.0, 1.0, 0.5), (0.0, 0.5, 0.4))


# ---- bias field --------------------------------------------------------------------------------------------------


def test_bias_field_matches_monai_rand_bias_field() -> None:
    from monai.transforms import RandBiasField

    shape = (16, 18, 20)
    t = RandBiasField(degree=3, coeff_range=(-0.3, 0.3), prob=1.0)
    t.set_random_state(seed=3)
    t.randomize(img_size=shape)
    image = np.random.default_rng(0).uniform(1, 2, (1, *shape)).astype(np.float32)
    expected = np.asarray(t(image, randomize=False))[0] / image[0]
    np.testing.assert_allclose(bias_field(shape, t._coeff, 3), expected, rtol=1e-4)


def test_bias_field_is_multiplicative_and_smooth() -> None:
    shape = (24, 20, 22)
    coeffs = list(np.random.default_rng(1).uniform(-0.3, 0.3, len(legendre_exponents(3))))
    params = PROFILES["A"].get_params(np.random.default_rng(0), (1.0, 1.0, 1.0))
    params.update(
        window=[[0.0, 1.0]],
        bias={"degree": 3, "coeffs": coeffs},
        noise={"sigma": 0.0, "seed": 0},
        contrast={"gamma": 1.0, "knots": [0.0, 1.0], "positions": [0.0, 1.0]},
        encoding={"dtype": "float32", "scale": 1.0, "offset": 0.0, "slope": 1.0, "inter": 0.0},
    )
    image = np.random.default_rng(2).uniform(0.2, 0.8, shape).astype(np.float32)
    out, _, _ = apply_shift(image, None, np.eye(4), params)
    field = bias_field(shape, coeffs, 3)
    np.testing.assert_allclose(out / image, field, rtol=1e-5)  # multiplicative, independent of the image
    # log field is a polynomial of total degree 3: fourth differences vanish along every axis
    log_field = np.log(field.astype(np.float64))
    for axis in range(3):
        assert np.abs(np.diff(log_field, n=4, axis=axis)).max() < 1e-3
        assert np.abs(np.diff(log_field, n=1, axis=axis)).max() > 1e-3  # ...but it is not constant
    with pytest.raises(ValueError, match="coefficients"):
        bias_field(shape, coeffs[:-1], 3)


# ---- noise -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", [0.0, 0.05, 0.5])
def test_rician_noise_matches_rice_distribution(signal: float) -> None:
    sigma = 0.05
    out = rician_noise(np.full((48, 48, 48), signal, np.float32), sigma, seed=7)
    rice = stats.rice(b=signal / sigma, scale=sigma)
    assert out.mean() == pytest.approx(rice.mean(), rel=0.01)
    assert out.std() == pytest.approx(rice.std(), rel=0.02)
    if signal == 0.0:  # Rayleigh: std = sigma * sqrt((4 - pi) / 2)
        assert out.std() == pytest.approx(sigma * np.sqrt((4 - np.pi) / 2), rel=0.02)
    np.testing.assert_array_equal(out, rician_noise(np.full((48, 48, 48), signal, np.float32), sigma, seed=7))
    assert not np.array_equal(out, rician_noise(np.full((48, 48, 48), signal, np.float32), sigma, seed=8))


def test_gibbs_ringing_keeps_mean_and_rings_at_an_edge() -> None:
    x = np.zeros((32, 32, 32), np.float32)
    x[8:24, 8:24, 8:24] = 1.0
    np.testing.assert_array_equal(gibbs_ringing(x, 0.0), x)
    out = gibbs_ringing(x, 0.4)
    assert out.mean() == pytest.approx(x.mean(), abs=1e-5)  # the k-space centre is kept
    assert out.max() > 1.02  # overshoot at the edge


# ---- geometry ----------------------------------------------------------------------------------------------------


def test_resample_grid_spacing_shape_and_centre() -> None:
    affine = _affine((1.0, 1.0, 1.2), (-10.0, 5.0, 3.0))
    shape = (32, 30, 30)
    new_shape, new_affine, zoom, _ = resample_grid(shape, affine, (2.0, 1.5, 3.6))
    assert new_shape == (16, 20, 10)
    np.testing.assert_allclose(spacing_from_affine(new_affine), [2.0, 1.5, 3.6])
    np.testing.assert_allclose(zoom, [2.0, 1.5, 3.0])
    centre = _world(affine, (np.array(shape) - 1) / 2)
    np.testing.assert_allclose(_world(new_affine, (np.array(new_shape) - 1) / 2), centre, atol=1e-9)


def test_change_resolution_label_follows_nearest_neighbour_on_the_image_grid() -> None:
    image, label = _test_volume((21, 23, 19))
    affine = _affine((1.0, 0.9, 1.1), (3.0, -4.0, 7.0))
    spacing = (1.3, 1.7, 3.1)
    new_image, new_label, new_affine = change_resolution(image, label, affine, spacing, spacing)
    assert new_label is not None and new_image.shape == new_label.shape
    np.testing.assert_allclose(spacing_from_affine(new_affine), spacing)
    assert new_label.dtype == np.uint8 and set(np.unique(new_label)) == {0, 1, 2}
    # independent check: map each new voxel to source indices through the two affines
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in new_label.shape], indexing="ij"), -1).reshape(-1, 3)
    to_src = np.linalg.inv(affine) @ new_affine
    src = idx @ to_src[:3, :3].T + to_src[:3, 3]
    clear = np.all(np.abs(src - np.floor(src) - 0.5) > 0.01, axis=1)  # skip exact ties between two voxels
    nearest = np.clip(np.rint(src[clear]).astype(int), 0, np.array(label.shape) - 1)
    np.testing.assert_array_equal(new_label.reshape(-1)[clear], label[tuple(nearest.T)])


def test_change_resolution_slice_profile() -> None:
    affine = np.eye(4)
    const = np.full((16, 16, 30), 5.0, np.float32)
    out, _, _ = change_resolution(const, None, affine, (1.0, 1.0, 3.0), (1.0, 1.0, 4.0))
    np.testing.assert_allclose(out, 5.0, rtol=1e-5)  # blur and resampling preserve a constant
    plane = np.zeros((8, 8, 31), np.float32)
    plane[:, :, 15] = 1.0
    same, _, _ = change_resolution(plane, None, affine, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(same, plane, atol=1e-6)  # zoom 1, no extra blur: identity
    thick, _, _ = change_resolution(plane, None, affine, (1.0, 1.0, 1.0), (1.0, 1.0, 5.0))
    profile = thick[4, 4]
    half = profile >= profile.max() / 2
    assert 4 <= half.sum() <= 6  # FWHM of the slice profile is 5 mm
    assert profile.sum() == pytest.approx(1.0, rel=1e-3)


def test_reorient_keeps_world_coordinates() -> None:
    image, label = _test_volume()
    label[3, 5, 7] = 3  # one marked voxel
    affine = _affine((1.0, 2.0, 3.0), (10.0, -20.0, 30.0))
    for codes in ("LPS", "PSL", "ASR"):
        new_image, new_label, new_affine = reorient(image, label, affine, codes)
        assert "".join(nib.aff2axcodes(new_affine)) == codes
        assert new_label is not None
        hits = np.argwhere(new_label == 3)
        assert len(hits) == 1
        np.testing.assert_allclose(_world(new_affine, hits[0]), _world(affine, (3, 5, 7)))
        assert new_image[tuple(hits[0])] == image[3, 5, 7]
        assert sorted(new_image.shape) == sorted(image.shape) and new_image.dtype == image.dtype


# ---- encoding ----------------------------------------------------------------------------------------------------


def test_encode_intensity() -> None:
    x = np.array([-0.1, 0.0, 0.5, 1.0, 1.4])
    u8 = encode_intensity(x, "uint8", 200.0, 5.0)
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, [0, 5, 105, 205, 255])  # rounded, saturated
    i16 = encode_intensity(x, "int16", 3000.0, 0.0, slope=0.6)
    assert i16.dtype == np.int16
    np.testing.assert_allclose(decode_intensity(i16, 0.6), x * 3000.0, atol=0.3 + 1e-3)
    f32 = encode_intensity(x, "float32", 400.0, 250.0)
    np.testing.assert_allclose(f32, x * 400 + 250, rtol=1e-6)


# ---- profiles and the whole shift --------------------------------------------------------------------------------


def test_params_deterministic_json_and_replayable() -> None:
    image, label = _test_volume()
    affine = _affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for profile in PROFILES.values():
        out1 = simulate_scanner(image, label, affine, profile, np.random.default_rng(5))
        out2 = simulate_scanner(image, label, affine, profile, np.random.default_rng(5))
        out3 = simulate_scanner(image, label, affine, profile, np.random.default_rng(6))
        assert out1[3] == out2[3] and out1[3] != out3[3]
        np.testing.assert_array_equal(out1[0], out2[0])
        assert out1[0].shape != out3[0].shape or not np.array_equal(out1[0], out3[0])
        params = json.loads(json.dumps(out1[3]))  # as saved beside the output
        assert params["format"] == SHIFT_FORMAT and params["profile"] == profile.name
        replay = apply_shift(image, label, affine, params)
        np.testing.assert_array_equal(replay[0], out1[0])
        np.testing.assert_array_equal(replay[1], out1[1])
        np.testing.assert_array_equal(replay[2], out1[2])
        assert replay[0].dtype == np.dtype(profile.dtype)
        assert replay[0].shape[:3] == replay[1].shape


def test_params_respect_profile_ranges() -> None:
    spacing = (1.0, 0.8, 1.5)
    for profile in PROFILES.values():
        for seed in range(5):
            p = profile.get_params(np.random.default_rng(seed), spacing)
            assert profile.gamma[0] <= p["contrast"]["gamma"] <= profile.gamma[1]
            assert profile.noise_sigma[0] <= p["noise"]["sigma"] <= profile.noise_sigma[1]
            assert profile.gibbs_alpha[0] <= p["gibbs"]["alpha"] <= profile.gibbs_alpha[1]
            assert len(p["bias"]["coeffs"]) == 20 and max(map(abs, p["bias"]["coeffs"])) <= profile.bias_coeff
            factors = np.array(p["resolution"]["spacing"]) / spacing
            ax = profile.slice_axis
            assert profile.slice_factor[0] - 1e-9 <= factors[ax] <= profile.slice_factor[1] + 1e-9
            others = np.delete(factors, ax)
            assert np.all((profile.inplane_factor[0] - 1e-9 <= others) & (others <= profile.inplane_factor[1] + 1e-9))
            assert p["encoding"]["dtype"] == profile.dtype
            assert profile.scale[0] <= p["encoding"]["scale"] <= profile.scale[1]
            assert p["orientation"]["axcodes"] in profile.orientations


def test_every_profile_argument_is_honoured() -> None:
    custom = ScannerProfile(
        "X",
        "fixed values",
        gamma=(2.0, 2.0),
        knots=(0.0, 0.5, 0.2),
        knot_positions=(0.0, 0.3, 1.0),
        bias_degree=2,
        bias_coeff=0.0,
        inplane_factor=(1.5, 1.5),
        slice_factor=(2.0, 2.0),
        slice_axis=0,
        thickness_ratio=(1.5, 1.5),
        gibbs_alpha=(0.25, 0.25),
        noise_sigma=(0.1, 0.1),
        dtype="int16",
        scale=(1000.0, 1000.0),
        offset=(-5.0, -5.0),
        slope=(0.5, 0.5),
        orientations=("PIR",),
    )
    p = custom.get_params(np.random.default_rng(0), (1.0, 1.0, 2.0))
    assert p["contrast"] == {"gamma": 2.0, "knots": [0.0, 0.5, 0.2], "positions": [0.0, 0.3, 1.0]}
    assert p["bias"] == {"degree": 2, "coeffs": [0.0] * 10}
    assert p["resolution"] == {"spacing": [2.0, 1.5, 3.0], "thickness": [3.0, 1.5, 3.0]}
    assert p["gibbs"]["alpha"] == 0.25 and p["noise"]["sigma"] == 0.1
    assert {k: p["encoding"][k] for k in ("dtype", "scale", "offset", "slope")} == {
        "dtype": "int16",
        "scale": 1000.0,
        "offset": -5.0,
        "slope": 0.5,
    }
    assert p["orientation"]["axcodes"] == "PIR"
    with pytest.raises(ValueError, match="slice_axis"):
        ScannerProfile("bad", "", slice_axis=3)
    with pytest.raises(ValueError, match="knot_positions"):
        ScannerProfile("bad", "", knots=(0.0, 1.0), knot_positions=(0.0, 0.5))
    with pytest.raises(ValueError, match="dtype"):
        ScannerProfile("bad", "", dtype="float16")


def test_multichannel_shift_shares_geometry() -> None:
    image, label = _test_volume()
    two = np.stack([image, 2000 - image], axis=-1)
    out, lab, _, params = simulate_scanner(two, label, np.eye(4), PROFILES["C"], np.random.default_rng(1))
    assert out.ndim == 4 and out.shape[3] == 2 and lab is not None and out.shape[:3] == lab.shape
    assert len(params["window"]) == 2
    params["window"] = params["window"][:1]
    with pytest.raises(ValueError, match="windows"):
        apply_shift(two, label, np.eye(4), params)


def test_inverted_profile_reverses_tissue_order_and_keeps_air_dark() -> None:
    _, label = _test_volume()
    label[:, :, :2] = 9  # air
    image = np.choose(np.minimum(label, 3), [300.0, 500.0, 700.0, 0.0]).astype(np.float32)
    out, lab, _, _ = simulate_scanner(image, label, np.eye(4), PROFILES["B"], np.random.default_rng(0))
    assert lab is not None
    air, *tissues = (float(out[lab == v].mean()) for v in (9, 0, 1, 2))
    assert tissues[0] > tissues[1] > tissues[2] > air  # source order was air < 0 < 1 < 2


def test_get_profiles() -> None:
    assert [p.name for p in get_profiles(None)] == list(PROFILES)
    assert len(PROFILES) >= 3
    assert [p.name for p in get_profiles("C, A")] == ["C", "A"]
    with pytest.raises(ValueError, match="unknown scanner profile"):
        get_profiles("A,Z")
