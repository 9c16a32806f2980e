"""Augmentation: the --augment syntax, the affine resampling kernel against its slow
twin, scipy and torch, and what each augmentation does to a batch."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_cli import augment as A
from cnn_cli.augment import AugmentError, Augmenter, canonical, parse
from cnn_cli.kernels.affine import FILL_CONSTANT, FILL_EDGE, FILL_REFLECT, affine_bilinear

from naive import FILLS, naive_affine_bilinear

MODES = {"zeros": FILL_CONSTANT, "edge": FILL_EDGE, "reflect": FILL_REFLECT}


def resample(x, m, fill, values):
    out = np.empty_like(x)
    affine_bilinear(x, np.asarray(m, np.float64), MODES[fill], np.asarray(values, np.float32), out, 0, len(x))
    return out


def random_maps(rng, n, h, w, reach=1.5):
    """Maps that rotate, zoom, shear and move well past the borders."""
    m = np.empty((n, 2, 3))
    m[:, :, :2] = rng.uniform(-reach, reach, (n, 2, 2))
    m[:, 0, 2] = rng.uniform(-h, 2 * h, n)
    m[:, 1, 2] = rng.uniform(-w, 2 * w, n)
    return m


# --------------------------------------------------------------------------- the --augment syntax


def test_bare_names_take_the_documented_defaults():
    assert canonical("shift,rotate,flip,vflip,scale,brightness,contrast,erase,noise") == [
        "shift=0.0625", "rotate=15", "flip", "vflip", "scale=0.1", "brightness=0.2", "contrast=0.2",
        "erase=0.5", "noise=0.05"]
    assert set(A.DEFAULTS) == set(A.AUGMENTATIONS)


def test_values_pixels_and_spaces():
    got = parse(" shift=4px , rotate = 7.5,flip")
    assert got == [A.Augmentation("shift", 4.0, pixels=True), A.Augmentation("rotate", 7.5), A.Augmentation("flip")]
    assert canonical(["shift=4PX", "noise=0.1"]) == ["shift=4px", "noise=0.1"]
    assert canonical("shift=0.125") == ["shift=0.125"]
    assert parse("") == [] and parse([]) == []


def test_canonical_form_reads_back_as_itself():
    once = canonical("shift=3px,rotate,scale=0.2,erase=0.25")
    assert canonical(once) == once


@pytest.mark.parametrize("spec, message", [
    ("bogus", "unknown augmentation 'bogus'"),
    ("flip,shift,flip", "flip is given twice"),
    ("flip=0.3", "flip takes no value"),
    ("shift=0", "above 0"),
    ("shift=1.5", "at most 1"),
    ("shift=0px", "pixels must be a whole number"),
    ("shift=2.5px", "pixels must be a whole number"),
    ("rotate=200", "at most 180"),
    ("noise=abc", "must be a number"),
    ("erase=nan", "above 0"),
    ("brightness=-0.1", "above 0"),
])
def test_bad_items_are_refused_naming_them(spec, message):
    with pytest.raises(AugmentError, match=message):
        parse(spec)


def test_a_bad_fill_is_refused():
    with pytest.raises(AugmentError, match="fill"):
        Augmenter("flip", mean=[0.5], std=[0.25], fill="wrap")


# --------------------------------------------------------------------------- the resampling kernel


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("shape", [(3, 1, 7, 9), (2, 3, 8, 8), (2, 2, 1, 5), (1, 1, 2, 2)])
def test_kernel_matches_its_naive_twin(fill, shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    m = random_maps(rng, shape[0], shape[2], shape[3])
    values = rng.standard_normal(shape[1]).astype(np.float32)
    expected = naive_affine_bilinear(x, m, fill, values)
    np.testing.assert_allclose(resample(x, m, fill, values), expected, atol=1e-5, err_msg=fill)


@pytest.mark.parametrize("fill, scipy_mode", [("zeros", "grid-constant"), ("edge", "nearest"),
                                               ("reflect", "mirror")])
def test_kernel_matches_scipy_affine_transform(fill, scipy_mode):
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(7)
    x = rng.random((2, 1, 12, 10)).astype(np.float32)
    m = random_maps(rng, 2, 12, 10, reach=1.2)
    got = resample(x, m, fill, [0.0])
    for i in range(2):
        want = affine_transform(x[i, 0].astype(np.float64), m[i, :, :2], offset=m[i, :, 2], order=1,
                                mode=scipy_mode, cval=0.0)
        np.testing.assert_allclose(got[i, 0], want, atol=1e-5, err_msg=f"{fill} image {i}")


@pytest.mark.parametrize("fill, torch_mode", [("zeros", "zeros"), ("edge", "border")])
def test_kernel_matches_torch_grid_sample(fill, torch_mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n, h, w = 3, 9, 11
    x = rng.standard_normal((n, 2, h, w)).astype(np.float32)
    m = random_maps(rng, n, h, w, reach=1.0)
    oy, ox = np.mgrid[0:h, 0:w].astype(np.float64)
    sy = m[:, 0, 0, None, None] * oy + m[:, 0, 1, None, None] * ox + m[:, 0, 2, None, None]
    sx = m[:, 1, 0, None, None] * oy + m[:, 1, 1, None, None] * ox + m[:, 1, 2, None, None]
    # grid_sample's (x, y) in [-1, 1] with align_corners=False: pixel centre i is (2i + 1) / size - 1.
    grid = np.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], axis=-1)
    want = torch.nn.functional.grid_sample(torch.from_numpy(x).double(), torch.from_numpy(grid), mode="bilinear",
                                           padding_mode=torch_mode, align_corners=False).numpy()
    np.testing.assert_allclose(resample(x, m, fill, [0.0, 0.0]), want, atol=1e-5)


def test_flips_and_whole_pixel_shifts_copy_pixels_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    flip = np.array([[[1, 0, 0], [0, -1, 6]]], np.float64)
    assert np.array_equal(resample(x, flip, "zeros", [0, 0]), x[:, :, :, ::-1])
    down_right = np.array([[[1, 0, -2], [0, 1, -1]]], np.float64)  # moves the image 2 down, 1 right
    got = resample(x, down_right, "zeros", [9, 8])
    assert np.array_equal(got[:, :, 2:, 1:], x[:, :, :-2, :-1])
    assert (got[:, 0, :2] == 9).all() and (got[:, 1, :, :1] == 8).all()
    both = resample(x, np.array([[[-1, 0, 5], [0, -1, 6]]], np.float64), "edge", [0, 0])
    assert np.array_equal(both, x[:, :, ::-1, ::-1])


def test_kernel_keeps_nan_where_it_reads_it():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    out = resample(x, np.array([[[1, 0, 0], [0, 1, 0]]], np.float64), "zeros", [0])
    assert np.isnan(out[0, 0, 1, 1]) and np.isfinite(np.delete(out.ravel(), 5)).all()


# --------------------------------------------------------------------------- the augmentations


MEAN, STD = np.array([0.25], np.float32), np.array([0.5], np.float32)


def normalised(pixels):
    return ((pixels - MEAN[None, :, None, None]) / STD[None, :, None, None]).astype(np.float32)


def pixels_of(batch):
    return batch * STD[None, :, None, None] + MEAN[None, :, None, None]


def dots(n=64, size=16):
    """One bright pixel per image at the centre, on black: where it lands shows the move."""
    px = np.zeros((n, 1, size, size), np.float32)
    px[:, 0, size // 2, size // 2] = 1
    return px


def displacement(out, size=16):
    ys, xs = np.unravel_index(pixels_of(out)[:, 0].reshape(len(out), -1).argmax(axis=1), (size, size))
    return ys - size // 2, xs - size // 2


def test_the_same_generator_seed_gives_the_same_batch_and_the_input_is_kept():
    x = normalised(np.random.default_rng(0).random((8, 1, 12, 12)).astype(np.float32))
    before = x.copy()
    aug = Augmenter("shift,rotate,flip,vflip,scale,brightness,contrast,erase,noise", mean=MEAN, std=STD)
    a, b = aug(x, np.random.default_rng([1, 2])), aug(x, np.random.default_rng([1, 2]))
    c = aug(x, np.random.default_rng([1, 3]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(x, before)
    assert a.dtype == np.float32 and a.shape == x.shape


@pytest.mark.parametrize("spec, most", [("shift", 1), ("shift=4px", 4), ("shift=0.25", 4)])
def test_shift_moves_by_whole_pixels_up_to_its_limit(spec, most):
    x = normalised(dots())
    out = Augmenter(spec, mean=MEAN, std=STD)(x, np.random.default_rng(0))
    dy, dx = displacement(out)
    assert max(abs(dy).max(), abs(dx).max()) == most
    assert np.allclose(pixels_of(out).max(axis=(1, 2, 3)), 1)  # whole pixels: the dot stays one pixel
    assert np.allclose(np.sort(pixels_of(out).reshape(len(out), -1), axis=1)[:, :-1], 0, atol=1e-6)


def test_bare_shift_is_a_sixteenth_of_the_side_at_least_one_pixel():
    for size, most in ((32, 2), (48, 3), (20, 1), (8, 1)):
        x = normalised(dots(200, size))
        dy, dx = displacement(Augmenter("shift", mean=MEAN, std=STD)(x, np.random.default_rng(1)), size)
        assert max(abs(dy).max(), abs(dx).max()) == most, size


def test_flip_mirrors_about_half_the_images():
    x = normalised(np.random.default_rng(0).random((400, 1, 5, 6)).astype(np.float32))
    out = Augmenter("flip", mean=MEAN, std=STD)(x, np.random.default_rng(0))
    mirrored = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (mirrored | kept).all() and 150 < mirrored.sum() < 250
    out = Augmenter("vflip", mean=MEAN, std=STD)(x, np.random.default_rng(0))
    assert all(np.array_equal(o, i) or np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x))


def test_rotate_keeps_angles_within_the_limit():
    size = 33
    x = np.zeros((300, 1, size, size), np.float32)
    x[:, 0, 16, 16:] = 1  # a ray from the centre to the right
    aug = Augmenter("rotate=20", mean=MEAN, std=STD)
    out = pixels_of(aug(normalised(x), np.random.default_rng(0)))[:, 0]
    ys, xs = np.mgrid[0:size, 0:size] - 16
    far = np.hypot(ys, xs) > 8
    angles = np.array([np.degrees(np.arctan2((o * ys * far).sum(), (o * xs * far).sum())) for o in out])
    assert np.abs(angles).max() <= 20.5 and np.abs(angles).max() > 17
    assert abs(np.median(angles)) < 3


@pytest.mark.parametrize("fill", ["zeros", "edge", "reflect"])
def test_fill_sets_what_shifted_in_borders_show(fill):
    px = np.random.default_rng(0).uniform(0.2, 1, (50, 1, 8, 8)).astype(np.float32)
    x = normalised(px)
    out = Augmenter("shift=3px", mean=MEAN, std=STD, fill=fill)(x, np.random.default_rng(0))
    black = np.isclose(pixels_of(out), 0, atol=1e-6)
    assert black.any() if fill == "zeros" else not black.any()
    for o, i, b in zip(out, x, black):  # whole-pixel shifts: every other pixel is one of the image's own
        assert np.isin(o[~b], i).all()


def test_scale_zooms_within_its_range():
    x = np.zeros((200, 1, 41, 41), np.float32)
    x[:, 0, 20, 30] = 1  # 10 px right of the centre
    out = pixels_of(Augmenter("scale=0.3", mean=MEAN, std=STD)(normalised(x), np.random.default_rng(0)))[:, 0]
    xs = np.arange(41) - 20
    reach = np.array([(o.sum(axis=0) * xs).sum() / o.sum() for o in out])
    assert 7 - 0.2 < reach.min() < 8 and 12 < reach.max() < 13 + 0.2


def test_brightness_and_contrast_scale_and_blend_on_the_pixel_scale():
    rng = np.random.default_rng(0)
    px = rng.uniform(0.2, 0.6, (300, 1, 6, 6)).astype(np.float32)
    out = pixels_of(Augmenter("brightness=0.5", mean=MEAN, std=STD)(normalised(px), np.random.default_rng(0)))
    ratio = out / px
    assert np.allclose(ratio, ratio[:, :, :1, :1], atol=1e-4)  # one factor per image
    assert 0.5 <= ratio.min() < 0.55 and 1.45 < ratio.max() <= 1.5
    out = pixels_of(Augmenter("contrast=0.5", mean=MEAN, std=STD)(normalised(px), np.random.default_rng(0)))
    assert np.allclose(out.mean(axis=(2, 3)), px.mean(axis=(2, 3)), atol=1e-5)  # the mean grey stays
    spread = out.std(axis=(2, 3)) / px.std(axis=(2, 3))
    assert 0.5 <= spread.min() < 0.55 and 1.45 < spread.max() <= 1.5


def test_contrast_blends_colour_images_with_their_luminance():
    px = np.zeros((1, 3, 4, 4), np.float32)
    px[0, 0] = 1  # pure red: luminance 0.299
    aug = Augmenter("contrast=1", mean=[0.5] * 3, std=[0.5] * 3)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        factor = rng.uniform(0, 2)
        out = aug(px * 2 - 1, np.random.default_rng(seed)) * 0.5 + 0.5
        want = np.clip(factor * px + (1 - factor) * 0.299, 0, 1)
        np.testing.assert_allclose(out, want, atol=1e-5)


def test_brightness_clips_to_the_pixel_range():
    px = np.full((100, 1, 3, 3), 0.9, np.float32)
    out = pixels_of(Augmenter("brightness=1", mean=MEAN, std=STD)(normalised(px), np.random.default_rng(0)))
    assert out.max() <= 1 + 1e-6 and out.min() >= 0 and (np.abs(out - 1) < 1e-6).any()


def test_noise_adds_gaussian_noise_of_the_given_deviation():
    px = np.full((50, 1, 20, 20), 0.5, np.float32)
    out = pixels_of(Augmenter("noise=0.1", mean=MEAN, std=STD)(normalised(px), np.random.default_rng(0)))
    assert abs((out - 0.5).std() - 0.1) < 0.005 and abs((out - 0.5).mean()) < 0.005


def test_erase_sets_one_rectangle_to_the_mean_in_about_p_of_the_images():
    size = 20
    px = np.random.default_rng(0).uniform(0.5, 1, (400, 1, size, size)).astype(np.float32)
    x = normalised(px)
    out = Augmenter("erase=0.5", mean=MEAN, std=STD)(x, np.random.default_rng(0))
    erased = out == 0  # the mean, after normalisation
    hit = erased.any(axis=(1, 2, 3))
    assert 150 < hit.sum() < 250
    for o, e in zip(out[hit], erased[hit]):
        rows, cols = np.flatnonzero(e[0].any(axis=1)), np.flatnonzero(e[0].any(axis=0))
        assert e[0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one solid rectangle
        area = len(rows) * len(cols) / size**2
        assert 0.01 <= area <= 0.36 and 0.2 <= len(rows) / len(cols) <= 5
    assert np.array_equal(out[~hit], x[~hit])


def test_no_augmentation_returns_the_batch_itself():
    x = np.zeros((2, 1, 4, 4), np.float32)
    assert Augmenter([], mean=MEAN, std=STD)(x, np.random.default_rng(0)) is x


def test_the_public_affine_entry_resamples_as_the_kernel_and_says_what_is_wrong():
    from cnn_cli import functional as F

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    m = np.array([[[0.9, 0.2, 0.4], [-0.1, 1.1, -0.3]], [[-1, 0, 4], [0, 1, 0]]], np.float64)
    value = np.array([0.5, -1, 2], np.float32)
    for fill, mode in (("constant", FILL_CONSTANT), ("edge", FILL_EDGE), ("reflect", FILL_REFLECT)):
        want = np.empty_like(x)
        affine_bilinear(x, m, mode, value, want, 0, len(x))
        assert np.array_equal(F.affine_bilinear(x, m, fill=fill, value=value), want), fill
    for kwargs, words in (({"matrices": m[:1]}, "one per image"), ({"fill": "wrap"}, "fill must be one of"),
                          ({"value": value[:2]}, "one number per channel")):
        with pytest.raises(ValueError, match=words):
            F.affine_bilinear(x, kwargs.pop("matrices", m), **kwargs)
