"""Synthetic vehicle renderer: determinism, API contracts, distinct styles, subtle identity details."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from agnet.data.synth.render import (
    BODY_STYLES,
    CameraLook,
    Mark,
    VehicleIdentity,
    body_shape,
    render,
    sample_camera,
    sample_identity,
)

GREEN = (0, 255, 0)
MAGENTA = (200, 0, 200)


def _clean_camera(yaw: float, elevation: float = 12.0, crop_px: int = 128, **kw) -> CameraLook:
    """A camera without noise, blur, haze, occluders, clutter or yaw jitter."""
    return CameraLook(yaw_deg=yaw, elevation_deg=elevation, crop_px=crop_px, yaw_jitter_deg=0.0,
                      noise_std=0.0, blur_px=0.0, haze=0.0, occlusion_prob=0.0, clutter=0.0,
                      **kw)


def _identity(seed: int, style: str = "sedan", colour=(230, 230, 230), variant: int = 0):
    return sample_identity(np.random.default_rng(seed), body_shape(style, variant), colour)


def _pixels(identity: VehicleIdentity, camera: CameraLook, seed: int) -> np.ndarray:
    return np.asarray(render(identity, camera, np.random.default_rng(seed)))


def _resized(pixels: np.ndarray, size=(64, 64)) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR), dtype=float)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_pixels():
    camera = sample_camera(np.random.default_rng(3))
    assert camera == sample_camera(np.random.default_rng(3))
    identity = _identity(5, "suv", (40, 80, 170))
    assert identity == _identity(5, "suv", (40, 80, 170))
    first = _pixels(identity, camera, 11)
    assert np.array_equal(first, _pixels(identity, camera, 11))
    # a freshly sampled (equal but distinct) identity object renders the same
    assert np.array_equal(first, _pixels(_identity(5, "suv", (40, 80, 170)), camera, 11))


def test_different_seeds_give_different_images():
    camera = sample_camera(np.random.default_rng(3))
    identity = _identity(5)
    a, b = _pixels(identity, camera, 1), _pixels(identity, camera, 2)
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert _identity(1) != _identity(2)
    assert sample_camera(np.random.default_rng(1)) != sample_camera(np.random.default_rng(2))


# ------------------------------------------------------------------------------ output format


@pytest.mark.parametrize("crop_px", [72, 120, 160])
def test_output_is_rgb_uint8_and_longer_side_follows_crop_px(crop_px):
    rng = np.random.default_rng(crop_px)
    for k in range(12):
        camera = replace(sample_camera(rng), crop_px=crop_px)
        image = render(_identity(k, BODY_STYLES[k % 9]), camera, rng)
        assert image.mode == "RGB"
        pixels = np.asarray(image)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert 0.8 * crop_px <= max(image.size) <= 1.2 * crop_px
        assert min(image.size) >= 16


def test_crop_aspect_follows_the_silhouette():
    bus = _identity(0, "bus")
    side = render(bus, _clean_camera(90.0), np.random.default_rng(0))
    front = render(bus, _clean_camera(0.0), np.random.default_rng(0))
    assert side.width > 2 * side.height  # a bus seen from the side is long and low
    assert front.width < front.height


# ------------------------------------------------------------------------------ body styles


def test_body_shape_is_deterministic_and_variants_differ():
    for style in BODY_STYLES:
        canonical = body_shape(style)
        assert canonical == body_shape(style, 0) and canonical.style == style
        assert body_shape(style, 7) == body_shape(style, 7)
        variants = [body_shape(style, v) for v in range(1, 6)]
        assert all(v != canonical and v.style == style for v in variants)
        assert len(set(variants)) == len(variants)
        for v in variants:
            assert 0.85 < v.length / canonical.length < 1.15
            assert v.roof_length > 0.3


def test_body_shape_rejects_unknown_style():
    with pytest.raises(ValueError, match="unknown body style"):
        body_shape("tank")


def _silhouette(style: str) -> np.ndarray:
    """Foreground mask of a magenta vehicle on a pure green road, cropped to the vehicle."""
    camera = _clean_camera(90.0, 10.0, road_rgb=GREEN, lane_rgb=GREEN, scenery_rgb=GREEN)
    identity = sample_identity(np.random.default_rng(0), body_shape(style), MAGENTA)
    px = _pixels(identity, camera, 0).astype(int)
    mask = ~((px[..., 1] > px[..., 0] + 40) & (px[..., 1] > px[..., 2] + 40))
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_all_styles_have_pairwise_distinct_side_silhouettes():
    masks = {style: _silhouette(style) for style in BODY_STYLES}
    for a, b in itertools.combinations(BODY_STYLES, 2):
        ma = np.asarray(Image.fromarray(masks[a]).resize((64, 64)))
        mb = np.asarray(Image.fromarray(masks[b]).resize((64, 64)))
        iou = (ma & mb).sum() / (ma | mb).sum()
        aspect_gap = abs(np.log(masks[a].shape[1] / masks[a].shape[0])
                         - np.log(masks[b].shape[1] / masks[b].shape[0]))
        assert (1 - iou) + aspect_gap > 0.05, (a, b, iou, aspect_gap)


# ------------------------------------------------------------------------------ cameras


def test_front_rear_cameras_look_from_front_or_rear():
    rng = np.random.default_rng(0)
    yaws = np.array([sample_camera(rng, "front_rear").yaw_deg for _ in range(300)])
    off_axis = np.minimum.reduce([np.abs(yaws - 0), np.abs(yaws - 360), np.abs(yaws - 180)])
    assert off_axis.max() <= 15.0
    assert 0.3 < np.mean(np.abs(yaws - 180) <= 15) < 0.7  # both fronts and rears occur


def test_any_cameras_cover_all_azimuths_and_valid_ranges():
    rng = np.random.default_rng(0)
    cameras = [sample_camera(rng) for _ in range(300)]
    quadrant = np.array([c.yaw_deg // 90 for c in cameras])
    assert set(quadrant) == {0, 1, 2, 3}
    assert all(5 <= c.elevation_deg <= 35 and 72 <= c.crop_px <= 160 for c in cameras)
    assert all(0 <= c.occlusion_prob <= 1 for c in cameras)
    with pytest.raises(ValueError):
        sample_camera(rng, "top_down")


# ------------------------------------------------------------------------------ identities


def test_same_model_and_colour_differ_only_subtly():
    camera = _clean_camera(30.0, 20.0)
    same, other_colour = [], []
    for k in range(4):
        a = _identity(100 + k)
        b = replace(_identity(200 + k), size_jitter=a.size_jitter, body_rgb=a.body_rgb)
        pa, pb = _pixels(a, camera, k), _pixels(b, camera, k)
        assert pa.shape == pb.shape
        changed = np.abs(pa.astype(int) - pb.astype(int)).max(axis=2) > 20
        assert 0 < changed.mean() < 0.15  # details are visible, but small
        red = _identity(100 + k, colour=(200, 30, 30))
        pr = _pixels(red, camera, k)
        same.append(np.abs(_resized(pa) - _resized(pb)).mean())
        other_colour.append(np.abs(_resized(pa) - _resized(pr)).mean())
    assert max(same) < min(other_colour)


def test_details_show_only_when_their_face_is_visible():
    plain = replace(_identity(7), marks=())
    stickered = replace(plain, marks=(Mark("windshield", 0.5, 0.7, 0.3, 0.2, (240, 205, 50)),))
    front, rear = _clean_camera(0.0, 20.0), _clean_camera(180.0, 20.0)
    assert not np.array_equal(_pixels(plain, front, 0), _pixels(stickered, front, 0))
    assert np.array_equal(_pixels(plain, rear, 0), _pixels(stickered, rear, 0))


def test_identity_fields_are_in_range():
    for k in range(50):
        identity = _identity(k, BODY_STYLES[k % 9], (120, 120, 120))
        assert all(0.96 <= s <= 1.04 for s in identity.size_jitter)
        assert all(abs(c - 120) <= 18 for c in identity.body_rgb)  # ±6 % · ±3 % gain, ±6 levels
        assert 1 <= sum(m.face == "windshield" for m in identity.marks) <= 4
        assert hash(identity) == hash(_identity(k, BODY_STYLES[k % 9], (120, 120, 120)))


# ------------------------------------------------------------------------------ speed
