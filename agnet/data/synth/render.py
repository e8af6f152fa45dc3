"""Procedural renderer of synthetic vehicle crops for the synthetic VeRi-776 / VehicleID twins.

A vehicle is modelled as a handful of convex solids in metres (lower body, cabin, truck cargo
box, mirrors, wheels). Every solid is the extrusion of a convex side profile in the (x, z)
plane across the width, with a half-width that varies linearly with height (tumblehome), so
all faces are planar. Vehicle frame: x points forward, y to the vehicle's left, z up, origin
on the ground under the centre of the body.

A camera sees the vehicle orthographically from azimuth ``yaw`` (degrees; 0 = front view,
90 = left side, 180 = rear) and elevation (degrees above the ground plane). Faces are drawn
with the painter's algorithm (wheels, then lower body, then upper solids ordered by depth;
back faces culled) and Lambert-shaded. Details (lamps, plate, windows, stickers, rims) are flat
decal polygons stored in 3-D on their face, so they move with the viewpoint and only show
while their face is visible. Drawing happens at twice the output resolution, which is then
box-downsampled for antialiasing, followed by the camera effects (blur, gain/tint, haze, noise).

Only numpy and Pillow are used; all randomness comes from the ``numpy.random.Generator``
passed in, so results are reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

BODY_STYLES: tuple[str, ...] = (
    "sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate",
)

_SUPERSAMPLE = 2          # drawing resolution / output resolution
_MIN_SIDE_PX = 16         # smallest crop side, output pixels


# --------------------------------------------------------------------------- body shapes


@dataclass(frozen=True)
class BodyShape:
    """Proportions of one car model. Lengths and heights in metres, x measured along the car.

    The side profile is: lower body from ``clearance`` up to ``belt_height`` (its front face
    ends at ``nose_height``, the hood rises from there to the windshield base); the cabin
    sits on the belt and runs, from front to rear, over ``windshield_run`` (horizontal run
    of the windshield), a flat roof at ``roof_height`` and ``rear_glass_run``; behind it the
    open ``deck_length`` (trunk lid, pickup bed or truck cargo floor). The roof length is
    whatever remains of ``length``.
    """

    style: str
    length: float
    width: float
    clearance: float
    nose_height: float
    belt_height: float
    roof_height: float
    hood_length: float
    windshield_run: float
    rear_glass_run: float
    deck_length: float
    cabin_taper: float        # roof half-width / cabin half-width at the belt (dimensionless)
    shoulder: float           # fraction of the body half-width the cabin is inset at the belt
    wheel_radius: float
    front_overhang: float     # front bumper to front axle
    rear_overhang: float      # rear bumper to (first) rear axle
    side_windows: int         # window panes per side (pillars = side_windows - 1)
    rear_axles: int = 1
    side_glass_fraction: float = 1.0  # glazed fraction of the cabin side, from the front
    cargo_height: float = 0.0  # top of the truck cargo box; 0 = no cargo box
    open_bed: bool = False    # pickup: the deck is an open bed
    lamp_style: int = 0       # 0 rectangular, 1 slim wedge, 2 round
    grille_style: int = 0     # 0 central, 1 tall narrow, 2 wide low

    @property
    def roof_length(self) -> float:
        """Horizontal length of the flat roof, metres."""
        return (self.length - self.hood_length - self.windshield_run
                - self.rear_glass_run - self.deck_length)

    def cabin_x(self) -> tuple[float, float, float, float]:
        """x (metres) of windshield base, windshield top, rear-glass top, rear-glass base."""
        ws_base = self.length / 2 - self.hood_length
        ws_top = ws_base - self.windshield_run
        rear_top = ws_top - self.roof_length
        return ws_base, ws_top, rear_top, rear_top - self.rear_glass_run

    def axle_x(self) -> tuple[float, ...]:
        """x (metres) of every axle, front first."""
        rear = -self.length / 2 + self.rear_overhang
        spacing = 2.6 * self.wheel_radius
        return (self.length / 2 - self.front_overhang,
                *(rear + spacing * (self.rear_axles - 1 - k) for k in range(self.rear_axles)))


_CANONICAL: dict[str, BodyShape] = {
    "sedan": BodyShape(
        "sedan", length=4.7, width=1.8, clearance=0.18, nose_height=0.7, belt_height=0.92, roof_height=1.45,
        hood_length=1.25, windshield_run=0.75, rear_glass_run=0.6, deck_length=0.95, cabin_taper=0.78,
        shoulder=0.06, wheel_radius=0.32, front_overhang=0.9, rear_overhang=1.05, side_windows=2),
    "suv": BodyShape(
        "suv", length=4.7, width=1.9, clearance=0.28, nose_height=0.98, belt_height=1.12, roof_height=1.8,
        hood_length=1.15, windshield_run=0.6, rear_glass_run=0.18, deck_length=0.06, cabin_taper=0.85,
        shoulder=0.04, wheel_radius=0.38, front_overhang=0.9, rear_overhang=0.95, side_windows=3),
    "van": BodyShape(
        "van", length=5.1, width=1.95, clearance=0.2, nose_height=0.95, belt_height=1.08, roof_height=2.25,
        hood_length=0.45, windshield_run=0.65, rear_glass_run=0.04, deck_length=0.04, cabin_taper=0.95,
        shoulder=0.0, wheel_radius=0.34, front_overhang=0.75, rear_overhang=0.95, side_windows=3),
    "hatchback": BodyShape(
        "hatchback", length=4.0, width=1.75, clearance=0.16, nose_height=0.7, belt_height=0.92,
        roof_height=1.44, hood_length=0.95, windshield_run=0.75, rear_glass_run=0.42, deck_length=0.08,
        cabin_taper=0.8, shoulder=0.06, wheel_radius=0.3, front_overhang=0.8, rear_overhang=0.65,
        side_windows=2),
    "mpv": BodyShape(
        "mpv", length=4.85, width=1.85, clearance=0.17, nose_height=0.78, belt_height=0.98,
        roof_height=1.85, hood_length=0.65, windshield_run=1.15, rear_glass_run=0.18, deck_length=0.06,
        cabin_taper=0.84, shoulder=0.05, wheel_radius=0.32, front_overhang=0.85, rear_overhang=0.9,
        side_windows=3),
    "pickup": BodyShape(
        "pickup", length=5.3, width=1.88, clearance=0.3, nose_height=1.0, belt_height=1.12,
        roof_height=1.85, hood_length=1.35, windshield_run=0.6, rear_glass_run=0.06, deck_length=1.75,
        cabin_taper=0.86, shoulder=0.04, wheel_radius=0.38, front_overhang=0.9, rear_overhang=1.15,
        side_windows=2, open_bed=True),
    "bus": BodyShape(
        "bus", length=10.5, width=2.5, clearance=0.32, nose_height=1.05, belt_height=1.05, roof_height=3.1,
        hood_length=0.0, windshield_run=0.15, rear_glass_run=0.08, deck_length=0.05, cabin_taper=0.97,
        shoulder=0.0, wheel_radius=0.5, front_overhang=2.3, rear_overhang=2.8, side_windows=7),
    "truck": BodyShape(
        "truck", length=7.2, width=2.4, clearance=0.5, nose_height=1.35, belt_height=1.35, roof_height=2.9,
        hood_length=0.05, windshield_run=0.2, rear_glass_run=0.0, deck_length=5.2, cabin_taper=0.95,
        shoulder=0.03, wheel_radius=0.5, front_overhang=1.3, rear_overhang=1.6, side_windows=1,
        rear_axles=2, cargo_height=3.4),
    "estate": BodyShape(
        "estate", length=4.8, width=1.82, clearance=0.17, nose_height=0.7, belt_height=0.93,
        roof_height=1.48, hood_length=1.2, windshield_run=0.75, rear_glass_run=0.22, deck_length=0.08,
        cabin_taper=0.8, shoulder=0.06, wheel_radius=0.32, front_overhang=0.9, rear_overhang=1.0,
        side_windows=3),
}


def body_shape(style: str, variant: int = 0) -> BodyShape:
    """Proportions of a body style (metres).

    ``variant`` > 0 deterministically perturbs the proportions (overall length ±8 %, width ±5 %,
    belt ±5 %, cabin height ±8 %, hood / windshield / rear glass / deck lengths ±10-15 %, so
    the cabin moves and changes length) and the lamp, grille and side-window layout, giving
    distinct car models that share a style. ``variant`` 0 is the canonical style.
    """
    if style not in _CANONICAL:
        raise ValueError(f"unknown body style {style!r}; expected one of {BODY_STYLES}")
    if variant < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")
    shape = _CANONICAL[style]
    if variant == 0:
        return shape
    rng = np.random.default_rng([BODY_STYLES.index(style), variant])
    sx, sy, sb, sh = rng.uniform([0.92, 0.95, 0.95, 0.92], [1.08, 1.05, 1.05, 1.08])
    parts = rng.uniform([0.88, 0.85, 0.85, 0.9], [1.12, 1.15, 1.15, 1.1])
    belt = shape.belt_height * sb
    shape = replace(
        _scaled(shape, sx, sy, 1.0),
        nose_height=shape.nose_height * sb,
        belt_height=belt,
        roof_height=belt + (shape.roof_height - shape.belt_height) * sh,
        cargo_height=(belt + (shape.cargo_height - shape.belt_height) * sh
                      if shape.cargo_height else 0.0),
        hood_length=shape.hood_length * sx * parts[0],
        windshield_run=shape.windshield_run * sx * parts[1],
        rear_glass_run=shape.rear_glass_run * sx * parts[2],
        deck_length=shape.deck_length * sx * parts[3],
        lamp_style=int(rng.integers(3)),
        grille_style=int(rng.integers(3)),
    )
    if style == "van" and rng.random() < 0.4:         # panel van: glass only at the doors
        shape = replace(shape, side_windows=1, side_glass_fraction=0.35)
    elif style in ("suv", "estate", "mpv") and rng.random() < 0.3:
        shape = replace(shape, side_windows=2)
    elif style == "bus":
        shape = replace(shape, side_windows=int(rng.integers(5, 10)))
    return shape


def _scaled(shape: BodyShape, sx: float, sy: float, sz: float) -> BodyShape:
    """``shape`` stretched by sx along its length, sy across, sz in height (wheels kept)."""
    return replace(
        shape,
        length=shape.length * sx, width=shape.width * sy,
        nose_height=shape.nose_height * sz, belt_height=shape.belt_height * sz,
        roof_height=shape.roof_height * sz, cargo_height=shape.cargo_height * sz,
        hood_length=shape.hood_length * sx, windshield_run=shape.windshield_run * sx,
        rear_glass_run=shape.rear_glass_run * sx, deck_length=shape.deck_length * sx,
        front_overhang=shape.front_overhang * sx, rear_overhang=shape.rear_overhang * sx,
    )


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Mark:
    """A small flat identity detail (sticker, decal, roof patch) on one face of the vehicle.

    ``face`` is ``"windshield"``, ``"rear_glass"`` (u from left to right as seen looking at
    the glass, v upward), ``"roof"`` (u across, v from front to rear), or ``"left"`` /
    ``"right"`` (the lower-body side; u from rear to front bumper, v from the body's bottom to
    the belt). ``u``, ``v`` locate the centre as fractions in [0, 1]; the size is in metres.
    """

    face: str
    u: float
    v: float
    width_m: float
    height_m: float
    rgb: RGB


@dataclass(frozen=True)
class VehicleIdentity:
    """Everything that belongs to one physical vehicle (immutable, hashable).

    ``color_rgb`` is the nominal colour (the colour label); ``body_rgb`` the actual paint after
    the per-vehicle shade jitter. ``size_jitter`` multiplies length, width and height (±4 %).
    ``plate_glyphs`` holds, per plate character, the stroke primitives drawn in its cell.
    ``rim_style``: 0 five-spoke, 1 multi-spoke, 2 hubcap, 3 plain steel.
    """

    shape: BodyShape
    color_rgb: RGB
    body_rgb: RGB
    size_jitter: tuple[float, float, float]
    marks: tuple[Mark, ...]
    plate_rgb: RGB
    plate_ink_rgb: RGB
    plate_glyphs: tuple[tuple[int, ...], ...]
    rim_style: int
    rim_rgb: RGB
    glass_rgb: RGB


_STICKER_RGB: tuple[RGB, ...] = ((238, 238, 232), (240, 205, 50), (50, 110, 215),
                                 (50, 165, 85), (215, 50, 45), (250, 140, 30), (160, 60, 170))
_ROOF_RGB: tuple[RGB, ...] = ((30, 30, 32), (235, 235, 235), (200, 40, 40), (40, 70, 160),
                              (230, 190, 30))
_RIM_RGB: tuple[RGB, ...] = ((190, 192, 198), (150, 152, 158), (70, 72, 78), (185, 165, 110),
                             (225, 225, 225))
_PLATES: tuple[tuple[RGB, RGB], ...] = (
    ((25, 65, 175), (240, 240, 240)),    # blue, white characters (small vehicles)
    ((230, 190, 30), (20, 20, 20)),      # yellow, black characters (large vehicles)
    ((110, 205, 130), (20, 20, 20)),     # green (new-energy)
    ((236, 236, 236), (20, 20, 20)),     # white
)
_PLATE_CHARS = 7
# Stroke primitives of a plate character, (u0, v0, u1, v1) in its cell (v up).
_GLYPH_STROKES = ((0.0, 0.0, 0.3, 1.0), (0.7, 0.0, 1.0, 1.0), (0.35, 0.0, 0.65, 1.0),
                  (0.0, 0.78, 1.0, 1.0), (0.0, 0.4, 1.0, 0.6), (0.0, 0.0, 1.0, 0.22),
                  (0.0, 0.5, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5))
_LARGE_STYLES = ("bus", "truck")


def sample_identity(rng: np.random.Generator, shape: BodyShape,
                    color_rgb: tuple[int, int, int]) -> VehicleIdentity:
    """Draw the identity-level details of one vehicle of model ``shape`` painted ``color_rgb``.

    Details: paint shade jitter (±6 % gain, ±3 % per channel, ±6 levels), proportion jitter
    (±4 % per axis), 1-3 windshield stickers (7-14 cm) plus an optional dashboard item, 0-2
    rear-glass stickers, 0-2 small side marks, an optional roof mark (patch, stripe, sunroof
    or rack), plate colour and character pattern, rim style and colour, window tint.
    """
    color = np.asarray(color_rgb, dtype=float)
    gain = rng.uniform(0.94, 1.06) * (1 + rng.uniform(-0.03, 0.03, 3))
    body = np.clip(color * gain + rng.uniform(-6, 6, 3), 0, 255)
    size_jitter = tuple(float(s) for s in rng.uniform(0.96, 1.04, 3))

    def colour(palette: tuple[RGB, ...]) -> RGB:
        return palette[int(rng.integers(len(palette)))]

    marks: list[Mark] = []
    for _ in range(int(rng.integers(1, 4))):
        marks.append(Mark("windshield", rng.uniform(0.08, 0.92), rng.uniform(0.5, 0.9),
                          rng.uniform(0.07, 0.14), rng.uniform(0.07, 0.12), colour(_STICKER_RGB)))
    if rng.random() < 0.5:
        marks.append(Mark("windshield", rng.uniform(0.25, 0.75), rng.uniform(0.06, 0.14),
                          rng.uniform(0.18, 0.35), rng.uniform(0.05, 0.09), colour(_STICKER_RGB)))
    for _ in range(int(rng.integers(0, 3))):
        marks.append(Mark("rear_glass", rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.8),
                          rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.12), colour(_STICKER_RGB)))
    for _ in range(int(rng.integers(0, 3))):
        side = "left" if rng.random() < 0.5 else "right"
        marks.append(Mark(side, rng.uniform(0.15, 0.85), rng.uniform(0.35, 0.75),
                          rng.uniform(0.12, 0.4), rng.uniform(0.06, 0.15), colour(_STICKER_RGB)))
    if rng.random() < 0.6:
        kind = int(rng.integers(4))
        if kind == 0:                               # patch
            marks.append(Mark("roof", rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8),
                              rng.uniform(0.25, 0.5), rng.uniform(0.25, 0.5), colour(_ROOF_RGB)))
        elif kind == 1:                             # longitudinal stripe
            marks.append(Mark("roof", rng.uniform(0.3, 0.7), 0.5, rng.uniform(0.12, 0.25),
                              rng.uniform(0.8, 1.6), colour(_ROOF_RGB)))
        elif kind == 2:                             # sunroof
            marks.append(Mark("roof", 0.5, rng.uniform(0.25, 0.45), rng.uniform(0.6, 0.8),
                              rng.uniform(0.4, 0.7), (25, 30, 40)))
        else:                                       # roof rack: two rails
            gap = rng.uniform(0.25, 0.38)
            for u in (0.5 - gap, 0.5 + gap):
                marks.append(Mark("roof", u, 0.5, 0.05, 1.4, (35, 35, 38)))

    large = shape.style in _LARGE_STYLES
    plate_p = (0.1, 0.85, 0.0, 0.05) if large else (0.83, 0.05, 0.1, 0.02)
    plate_rgb, ink_rgb = _PLATES[int(rng.choice(len(_PLATES), p=plate_p))]
    glyphs = tuple(tuple(int(g) for g in rng.choice(len(_GLYPH_STROKES), 2, replace=False))
                   for _ in range(_PLATE_CHARS))
    glass = np.clip(np.array([32, 40, 52]) + rng.uniform(-8, 8) + rng.uniform(-3, 3, 3), 0, 255)
    return VehicleIdentity(
        shape=shape, color_rgb=tuple(int(c) for c in color_rgb),
        body_rgb=_rgb(body), size_jitter=size_jitter, marks=tuple(marks),
        plate_rgb=plate_rgb, plate_ink_rgb=ink_rgb, plate_glyphs=glyphs,
        rim_style=3 if large else int(rng.integers(4)), rim_rgb=colour(_RIM_RGB),
        glass_rgb=_rgb(glass),
    )


def _rgb(values) -> RGB:
    r, g, b = (round(float(v)) for v in values)
    return r, g, b


# --------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class CameraLook:
    """Everything that belongs to one camera.

    Angles in degrees, sizes in output pixels, colours 8-bit RGB. ``yaw_deg`` is the mean
    azimuth vehicles are seen from (0 front, 90 left side, 180 rear), varied per image by
    ±``yaw_jitter_deg``. ``light_azimuth_deg`` is the sun direction relative to the viewing
    direction (0 = light from behind the camera, 180 = back-lit). ``brightness`` and
    ``tint_rgb`` are multiplicative gains, ``haze`` the fraction blended toward a flat haze
    colour, ``blur_px`` a Gaussian radius and ``noise_std`` the sensor noise (8-bit levels).
    ``ambient`` is the share of face brightness independent of the face orientation (the rest
    is Lambertian). ``clutter`` in [0, 1] scales the amount of background objects; ``occlusion_prob`` is the
    chance that an occluder covers 10-35 % of a crop; ``horizon_frac`` is the fraction of the
    crop height at the top showing scenery instead of road (low cameras only).
    """

    yaw_deg: float
    elevation_deg: float
    crop_px: int
    yaw_jitter_deg: float = 20.0
    brightness: float = 1.0
    tint_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    haze: float = 0.0
    ambient: float = 0.55
    light_azimuth_deg: float = 30.0
    light_elevation_deg: float = 45.0
    blur_px: float = 0.0
    noise_std: float = 2.0
    clutter: float = 0.5
    occlusion_prob: float = 0.1
    road_rgb: RGB = (110, 110, 112)
    lane_rgb: RGB = (225, 225, 220)
    scenery_rgb: RGB = (90, 110, 80)
    horizon_frac: float = 0.0


def sample_camera(rng: np.random.Generator, viewpoints: str = "any") -> CameraLook:
    """Draw one camera.

    ``viewpoints="any"``: yaw uniform in [0, 360) degrees with ±20 degree per-image jitter
    (VeRi: many cameras, many angles). ``"front_rear"``: yaw within ±15 degrees of 0 or 180
    and only ±8 degree per-image jitter (VehicleID shows fronts and rears only).
    Elevation 5-35 degrees, typical crop 72-160 pixels, plus illumination, clutter,
    occlusion probability and background palette.
    """
    if viewpoints == "any":
        yaw, jitter = rng.uniform(0.0, 360.0), 20.0
    elif viewpoints == "front_rear":
        base = 0.0 if rng.random() < 0.5 else 180.0
        yaw, jitter = (base + rng.uniform(-15.0, 15.0)) % 360.0, 8.0
    else:
        raise ValueError(f"viewpoints must be 'any' or 'front_rear', got {viewpoints!r}")
    elevation = rng.uniform(5.0, 35.0)
    warmth = rng.uniform(-1.0, 1.0)
    tint = np.array([1 + 0.08 * warmth, 1.0, 1 - 0.09 * warmth]) * rng.uniform(0.96, 1.04, 3)
    grey = rng.uniform(70, 150)
    road = grey + rng.uniform(-6, 6, 3)
    scenery = (rng.uniform([40, 70, 30], [110, 140, 90]) if rng.random() < 0.5
               else rng.uniform(80, 190, 3))
    horizon = rng.uniform(0.1, 0.35) if elevation < 14 and rng.random() < 0.7 else 0.0
    return CameraLook(
        yaw_deg=float(yaw), elevation_deg=float(elevation),
        crop_px=int(rng.integers(72, 161)), yaw_jitter_deg=jitter,
        brightness=float(rng.uniform(0.6, 1.3)), tint_rgb=tuple(float(t) for t in tint),
        haze=float(rng.uniform(0.0, 0.25)), ambient=float(rng.uniform(0.4, 0.65)),
        light_azimuth_deg=float(rng.uniform(-180.0, 180.0)),
        light_elevation_deg=float(rng.uniform(20.0, 70.0)),
        blur_px=float(rng.uniform(0.0, 0.9)), noise_std=float(rng.uniform(1.0, 6.0)),
        clutter=float(rng.uniform(0.0, 1.0)), occlusion_prob=float(rng.uniform(0.0, 0.35)),
        road_rgb=_rgb(np.clip(road, 0, 255)),
        lane_rgb=(230, 230, 225) if rng.random() < 0.7 else (225, 185, 40),
        scenery_rgb=_rgb(scenery), horizon_frac=float(horizon),
    )


# --------------------------------------------------------------------------- geometry


@dataclass
class _Solid:
    """A convex solid ready to draw: ``kind`` is 'wheel' (drawn as its silhouette hull),
    'lower' or 'upper'; ``faces`` index into the geometry's face arrays; vertex range
    [start, end) in the face-vertex array; ``centre`` in metres."""

    kind: str
    faces: list[int]
    start: int
    end: int
    centre: np.ndarray


@dataclass
class _Geometry:
    """Everything drawable of one identity, in metres (built once per identity, cached)."""

    face_verts: np.ndarray          # (N, 3) polygon vertices of faces
    face_spans: list[tuple[int, int]]
    face_normals: np.ndarray        # (F, 3) outward unit normals
    face_rgb: np.ndarray            # (F, 3) base colour
    face_reflect: np.ndarray        # (F,) sky reflection strength, 8-bit levels
    face_decals: list[list[int]]    # decal indices drawn after each face
    decal_verts: np.ndarray         # (M, 3)
    decal_spans: list[tuple[int, int]]
    decal_rgb: np.ndarray           # (D, 3)
    decal_face: np.ndarray          # (D,) parent face (its shading applies)
    decal_fine: np.ndarray          # (D,) bool: skipped when too small on screen
    solids: list[_Solid]
    length: float
    width: float


@dataclass
class _Builder:
    """Accumulates faces and decals while a geometry is built."""

    face_verts: list[np.ndarray] = field(default_factory=list)
    face_spans: list[tuple[int, int]] = field(default_factory=list)
    normals: list[np.ndarray] = field(default_factory=list)
    rgb: list[np.ndarray] = field(default_factory=list)
    reflect: list[float] = field(default_factory=list)
    decals_of: list[list[int]] = field(default_factory=list)
    decal_verts: list[np.ndarray] = field(default_factory=list)
    decal_spans: list[tuple[int, int]] = field(default_factory=list)
    decal_rgb: list[np.ndarray] = field(default_factory=list)
    decal_face: list[int] = field(default_factory=list)
    decal_fine: list[bool] = field(default_factory=list)
    solids: list[_Solid] = field(default_factory=list)
    n_face_verts: int = 0
    n_decal_verts: int = 0

    def face(self, verts: np.ndarray, normal: np.ndarray, rgb, reflect: float) -> int:
        self.face_verts.append(verts)
        self.face_spans.append((self.n_face_verts, self.n_face_verts + len(verts)))
        self.n_face_verts += len(verts)
        self.normals.append(normal)
        self.rgb.append(np.asarray(rgb, dtype=float))
        self.reflect.append(reflect)
        self.decals_of.append([])
        return len(self.normals) - 1

    def decal(self, face: int, verts: np.ndarray, rgb, fine: bool = False) -> None:
        if len(verts) < 3:
            return
        self.decal_verts.append(verts)
        self.decal_spans.append((self.n_decal_verts, self.n_decal_verts + len(verts)))
        self.n_decal_verts += len(verts)
        self.decal_rgb.append(np.asarray(rgb, dtype=float))
        self.decal_face.append(face)
        self.decal_fine.append(fine)
        self.decals_of[face].append(len(self.decal_rgb) - 1)

    def build(self, length: float, width: float) -> _Geometry:
        return _Geometry(
            face_verts=np.concatenate(self.face_verts), face_spans=self.face_spans,
            face_normals=np.array(self.normals), face_rgb=np.array(self.rgb),
            face_reflect=np.array(self.reflect), face_decals=self.decals_of,
            decal_verts=np.concatenate(self.decal_verts), decal_spans=self.decal_spans,
            decal_rgb=np.array(self.decal_rgb), decal_face=np.array(self.decal_face),
            decal_fine=np.array(self.decal_fine), solids=self.solids,
            length=length, width=width)


@dataclass
class _Extrusion:
    """A solid being built: profile ``(k, 2)`` counter-clockwise in (x, z), names of its edges
    (edge i runs from vertex i to i+1), lateral centre ``yc`` and half-width linear in z.

    ``quads`` holds the corners of each edge face ordered so that face coordinates (u, v)
    run u from left to right as seen by a viewer facing the face and v upward (for
    horizontal faces v runs from front to rear)."""

    profile: np.ndarray
    edge_names: list[str]
    yc: float
    hw_lo: float
    hw_hi: float
    faces: dict[str, int] = field(default_factory=dict)
    quads: dict[str, np.ndarray] = field(default_factory=dict)

    def half_width(self, z):
        z_lo, z_hi = self.profile[:, 1].min(), self.profile[:, 1].max()
        t = (np.asarray(z) - z_lo) / max(z_hi - z_lo, 1e-9)
        return self.hw_lo + (self.hw_hi - self.hw_lo) * t

    def on_side(self, side: int, xz: np.ndarray) -> np.ndarray:
        """3-D points of (x, z) pairs lying on the left (+1) or right (-1) cap."""
        xz = np.asarray(xz, dtype=float)
        y = self.yc + side * self.half_width(xz[:, 1])
        return np.column_stack([xz[:, 0], y, xz[:, 1]])


def _extrude(builder: _Builder, kind: str, profile, edge_names: list[str], yc: float,
             hw_lo: float, hw_hi: float, colours: dict[str, tuple]) -> _Extrusion:
    """Add a convex extruded solid; ``colours`` maps face name -> (rgb, reflect), with key
    ``"*"`` as default. Faces are named after profile edges plus ``"left"``/``"right"`` caps."""
    profile = np.asarray(profile, dtype=float)
    keep = np.linalg.norm(profile - np.roll(profile, -1, axis=0), axis=1) > 1e-6
    solid = _Extrusion(profile[keep], [n for n, k in zip(edge_names, keep) if k], yc, hw_lo, hw_hi)
    prof = solid.profile
    z_span = max(prof[:, 1].max() - prof[:, 1].min(), 1e-9)
    slope = (hw_hi - hw_lo) / z_span
    start = builder.n_face_verts
    ids = []
    for side, name in ((1, "left"), (-1, "right")):
        normal = np.array([0.0, side, -slope])
        rgb, reflect = colours.get(name, colours["*"])
        ids.append(builder.face(solid.on_side(side, prof), normal / np.linalg.norm(normal),
                                rgb, reflect))
        solid.faces[name] = ids[-1]
    for i, name in enumerate(solid.edge_names):
        p, q = prof[i], prof[(i + 1) % len(prof)]
        left, right = solid.on_side(1, np.array([p, q])), solid.on_side(-1, np.array([p, q]))
        quad = np.array([right[0], left[0], left[1], right[1]])   # u: -y -> +y, v: p -> q
        if p[1] > q[1]:                     # descending (rear-facing) edge: make v run upward
            quad = quad[[2, 3, 0, 1]]
        normal = np.array([q[1] - p[1], 0.0, p[0] - q[0]])
        rgb, reflect = colours.get(name, colours["*"])
        ids.append(builder.face(quad, normal / np.linalg.norm(normal), rgb, reflect))
        solid.faces[name] = ids[-1]
        solid.quads[name] = quad
    centre = np.array([prof[:, 0].mean(), yc, prof[:, 1].mean()])
    builder.solids.append(_Solid(kind, [] if kind == "wheel" else ids, start,
                                 builder.n_face_verts, centre))
    return solid


def _quad_point(quad: np.ndarray, u, v) -> np.ndarray:
    """Bilinear point(s) of a planar quad at fractions u (across) and v (along)."""
    u = np.asarray(u, dtype=float)[..., None]
    v = np.asarray(v, dtype=float)[..., None]
    return (1 - v) * ((1 - u) * quad[0] + u * quad[1]) + v * ((1 - u) * quad[3] + u * quad[2])


def _quad_rect(quad: np.ndarray, uc: float, vc: float, w_m: float, h_m: float) -> np.ndarray:
    """Rectangle of w_m x h_m metres centred at fractions (uc, vc) of a quad's face."""
    du = w_m / (2 * np.linalg.norm(quad[1] - quad[0]))
    dv = h_m / (2 * np.linalg.norm(quad[3] - quad[0]))
    return _quad_point(quad, [uc - du, uc + du, uc + du, uc - du],
                       [vc - dv, vc - dv, vc + dv, vc + dv])


def _polygon_in_quad(quad: np.ndarray, uv) -> np.ndarray:
    """3-D polygon from (k, 2) face fractions (u, v) of a quad."""
    uv = np.asarray(uv, dtype=float)
    return _quad_point(quad, uv[:, 0], uv[:, 1])


def _ellipse(cx: float, cz: float, rx: float, rz: float, n: int = 14, a0: float = 0.0,
             a1: float = 2 * math.pi) -> np.ndarray:
    """(n, 2) points on an ellipse arc (angles in radians), counter-clockwise."""
    a = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-9)
    return np.column_stack([cx + rx * np.cos(a), cz + rz * np.sin(a)])


def _circle(cx: float, cz: float, r: float, n: int = 14, a0: float = 0.0,
            a1: float = 2 * math.pi) -> np.ndarray:
    """(n, 2) points on a circle arc, counter-clockwise."""
    return _ellipse(cx, cz, r, r, n, a0, a1)


def _clip_convex(poly: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Intersection of a 2-D polygon with a convex counter-clockwise polygon (Sutherland-Hodgman)."""
    out = poly
    for i in range(len(clip)):
        if len(out) == 0:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        kept = []
        for j in range(len(out)):
            k = (j + 1) % len(out)
            if side[j] >= 0:
                kept.append(out[j])
            if (side[j] >= 0) != (side[k] >= 0):
                t = side[j] / (side[j] - side[k])
                kept.append(out[j] + t * (out[k] - out[j]))
        out = np.array(kept).reshape(-1, 2)
    return out


def _inset_convex(poly: np.ndarray, d: float) -> np.ndarray:
    """Counter-clockwise convex polygon shrunk by distance d (metres)."""
    edges = np.roll(poly, -1, axis=0) - poly
    edges /= np.linalg.norm(edges, axis=1, keepdims=True)
    inward = np.column_stack([-edges[:, 1], edges[:, 0]])
    starts = poly + d * inward
    out = []
    for i in range(len(poly)):
        p, r = starts[i - 1], edges[i - 1]
        q, s = starts[i], edges[i]
        denom = r[0] * s[1] - r[1] * s[0]
        t = ((q[0] - p[0]) * s[1] - (q[1] - p[1]) * s[0]) / denom
        out.append(p + t * r)
    return np.array(out)


def _rect2(x0: float, z0: float, x1: float, z1: float) -> np.ndarray:
    return np.array([[x0, z0], [x1, z0], [x1, z1], [x0, z1]])


_TRIM = (38, 38, 41)
_TYRE = (24, 24, 26)
_HEADLAMP = (222, 226, 230)
_TAILLAMP = (170, 28, 26)
_GRILLE = (36, 36, 40)


@lru_cache(maxsize=4096)
def _geometry(identity: VehicleIdentity) -> _Geometry:
    """Build the drawable geometry of an identity (metres)."""
    s = _scaled(identity.shape, *identity.size_jitter)
    b = _Builder()
    half_l, half_w = s.length / 2, s.width / 2
    body = np.asarray(identity.body_rgb, dtype=float)
    glass = np.asarray(identity.glass_rgb, dtype=float)
    body_col, glass_col = (body, 14.0), (glass, 55.0)
    ws_base, ws_top, rear_top, rear_base = s.cabin_x()
    r = s.wheel_radius
    tyre_half = 0.14 if s.style in _LARGE_STYLES else 0.1

    for x in s.axle_x():                                      # wheels
        for side in (1, -1):
            _extrude(b, "wheel", _circle(x, r, r, 10), ["tread"] * 10,
                     side * (half_w - tyre_half), tyre_half, tyre_half, {"*": (_TYRE, 0.0)})

    tail_run = min(0.08, s.deck_length + s.rear_glass_run)
    tail_h = s.belt_height - (0.05 if s.style not in _LARGE_STYLES else 0.0)
    lower = _extrude(
        b, "lower",
        [(-half_l, s.clearance), (half_l, s.clearance), (half_l, s.nose_height),
         (ws_base, s.belt_height), (-half_l + tail_run, s.belt_height), (-half_l, tail_h)],
        ["bottom", "front", "hood", "deck", "tail", "rear"], 0.0, half_w, half_w,
        {"*": body_col, "bottom": (_TRIM, 0.0)})
    cab_hw = half_w * (1 - s.shoulder)
    cabin = _extrude(
        b, "upper",
        [(rear_base, s.belt_height), (ws_base, s.belt_height), (ws_top, s.roof_height),
         (rear_top, s.roof_height)],
        ["bottom", "windshield", "roof", "rear_glass"], 0.0, cab_hw, cab_hw * s.cabin_taper,
        {"*": body_col, "windshield": glass_col,
         "rear_glass": glass_col if s.rear_glass_run > 0 else body_col})
    roof = cabin                                              # the solid carrying roof marks
    if s.cargo_height:
        roof = _extrude(
            b, "upper", _rect2(-half_l, s.belt_height, rear_base - 0.12, s.cargo_height),
            ["bottom", "front", "roof", "rear"], 0.0, half_w, half_w,
            {"*": (body * 0.9 + 20, 10.0)})
    if s.style != "bus":                                      # side mirrors
        size = 0.14 if s.cargo_height else 0.07
        z = s.belt_height + 0.06
        for side in (1, -1):
            _extrude(b, "upper", _rect2(ws_base - 0.16, z, ws_base - 0.06, z + size * 1.3),
                     ["bottom", "front", "top", "back"],
                     side * (cabin.half_width(z) + size), size, size,
                     {"*": body_col if s.cargo_height == 0 else (_TRIM, 5.0)})

    _front_decals(b, lower, s, identity)
    _rear_decals(b, lower, s, identity)
    _side_decals(b, lower, cabin, s, identity, body)
    if s.open_bed:                                            # dark inside of the bed
        x0, x1, inner = -half_l + 0.12, rear_base - 0.08, half_w - 0.1
        bed = np.array([[x0, -inner], [x1, -inner], [x1, inner], [x0, inner]])
        b.decal(lower.faces["deck"], np.column_stack([bed, np.full(4, s.belt_height)]),
                body * 0.35 + 10)
    if s.cargo_height:                                        # gap between the cargo doors
        door_h = 0.85 * (s.cargo_height - s.belt_height)
        b.decal(roof.faces["rear"], _quad_rect(roof.quads["rear"], 0.5, 0.5, 0.03, door_h),
                _TRIM, fine=True)
    for mark in identity.marks:
        _mark(b, mark, lower, cabin, roof, s)
    return b.build(s.length, s.width)


def _mark(b: _Builder, mark: Mark, lower: _Extrusion, cabin: _Extrusion, roof: _Extrusion,
          s: BodyShape) -> None:
    """Place one identity mark on its face (sizes clamped to 90 % of the face)."""
    if mark.face in ("left", "right"):
        side = 1 if mark.face == "left" else -1
        xc = -s.length / 2 + mark.u * s.length
        zc = s.clearance + mark.v * (s.belt_height - s.clearance)
        rect = _rect2(xc - mark.width_m / 2, zc - mark.height_m / 2,
                      xc + mark.width_m / 2, zc + mark.height_m / 2)
        b.decal(lower.faces[mark.face], lower.on_side(side, rect), mark.rgb, fine=True)
        return
    target = roof if mark.face == "roof" else cabin
    if mark.face not in target.quads:       # e.g. a truck cab has no rear glass
        return
    quad = target.quads[mark.face]
    w = min(mark.width_m, 0.9 * np.linalg.norm(quad[1] - quad[0]))
    h = min(mark.height_m, 0.9 * np.linalg.norm(quad[3] - quad[0]))
    b.decal(target.faces[mark.face], _quad_rect(quad, mark.u, mark.v, w, h), mark.rgb,
            fine=True)


def _front_decals(b: _Builder, lower: _Extrusion, s: BodyShape, idt: VehicleIdentity) -> None:
    """Lamps, grille, bumper lip and plate on the front face (u right->left, v bottom->top)."""
    face, quad = lower.faces["front"], lower.quads["front"]
    if s.style in ("suv", "pickup", "truck", "van"):
        b.decal(face, _polygon_in_quad(quad, _rect2(0.0, 0.0, 1.0, 0.16)), _TRIM)
    grille = ([(0.3, 0.4), (0.7, 0.4), (0.72, 0.78), (0.28, 0.78)],
              [(0.4, 0.32), (0.6, 0.32), (0.62, 0.9), (0.38, 0.9)],
              [(0.2, 0.46), (0.8, 0.46), (0.8, 0.68), (0.2, 0.68)])[s.grille_style]
    b.decal(face, _polygon_in_quad(quad, grille), _GRILLE)
    for mirror in (False, True):
        if s.lamp_style == 0:
            lamp = _rect2(0.05, 0.62, 0.24, 0.88)
        elif s.lamp_style == 1:
            lamp = np.array([(0.04, 0.72), (0.27, 0.7), (0.25, 0.82), (0.04, 0.9)])
        else:
            lamp = _ellipse(0.14, 0.75, 0.09, 0.15, 10)
        if mirror:
            lamp = np.column_stack([1 - lamp[:, 0], lamp[:, 1]])
        centre = lamp.mean(axis=0)
        b.decal(face, _polygon_in_quad(quad, centre + (lamp - centre) * [1.2, 1.35]), _GRILLE)
        b.decal(face, _polygon_in_quad(quad, lamp), _HEADLAMP)
    _plate(b, face, quad, idt, vc=0.26)


def _rear_decals(b: _Builder, lower: _Extrusion, s: BodyShape, idt: VehicleIdentity) -> None:
    """Tail lamps and plate on the rear face."""
    face, quad = lower.faces["rear"], lower.quads["rear"]
    height = 0.28 if s.lamp_style == 1 else 0.2
    for u in (0.11, 0.89):
        b.decal(face, _quad_rect(quad, u, 0.72, 0.17 * s.width / 1.8, height), _TAILLAMP)
    _plate(b, face, quad, idt, vc=0.4)


def _plate(b: _Builder, face: int, quad: np.ndarray, idt: VehicleIdentity, vc: float) -> None:
    """A 0.44 x 0.14 m plate with the identity's character pattern."""
    width, height = 0.44, 0.14
    b.decal(face, _quad_rect(quad, 0.5, vc, width, height), idt.plate_rgb)
    face_w = np.linalg.norm(quad[1] - quad[0])
    face_h = np.linalg.norm(quad[3] - quad[0])
    cell_w, cell_h = 0.88 * width / _PLATE_CHARS, 0.7 * height
    u_left = 0.5 - 0.44 * width / face_w
    v_low = vc - 0.35 * height / face_h
    for k, strokes in enumerate(idt.plate_glyphs):
        u0 = u_left + (k * cell_w + 0.1 * cell_w) / face_w
        for g in strokes:
            a0, c0, a1, c1 = _GLYPH_STROKES[g]
            rect = _rect2(u0 + a0 * 0.8 * cell_w / face_w, v_low + c0 * cell_h / face_h,
                          u0 + a1 * 0.8 * cell_w / face_w, v_low + c1 * cell_h / face_h)
            b.decal(face, _polygon_in_quad(quad, rect), idt.plate_ink_rgb, fine=True)


def _side_decals(b: _Builder, lower: _Extrusion, cabin: _Extrusion, s: BodyShape,
                 idt: VehicleIdentity, body: np.ndarray) -> None:
    """Wheels (arch, tyre, rim) and door lines on both lower-body sides, windows on the cabin."""
    r = s.wheel_radius
    rim = np.asarray(idt.rim_rgb, dtype=float)
    window = _inset_convex(cabin.profile, 0.1 if s.style == "bus" else 0.065)
    front_x = window[:, 0].max()
    glass_from = front_x - s.side_glass_fraction * (front_x - window[:, 0].min())
    window = _clip_convex(window, _rect2(glass_from, -1.0, 99.0, 99.0))
    x0, x1 = window[:, 0].min(), window[:, 0].max()
    pillar = 0.12 if s.style == "bus" else 0.08
    pillars = [x0 + (x1 - x0) * k / s.side_windows for k in range(1, s.side_windows)]
    door_lines = [] if s.style in _LARGE_STYLES else pillars[:2]
    for side in (1, -1):
        face = lower.faces["left" if side == 1 else "right"]
        for x in s.axle_x():
            arch = np.vstack([_circle(x, r, 1.12 * r, 10, 0.0, math.pi),
                              [(x - 1.12 * r, s.clearance), (x + 1.12 * r, s.clearance)]])
            b.decal(face, lower.on_side(side, arch), _TRIM)
            b.decal(face, lower.on_side(side, _circle(x, r, r, 14)), _TYRE)
            _rim(b, face, lower, side, x, r, idt.rim_style, rim)
        for x in door_lines:
            line = _rect2(x - 0.008, s.clearance + 0.08, x + 0.008, s.belt_height - 0.03)
            b.decal(face, lower.on_side(side, line), body * 0.45, fine=True)
        cab_face = cabin.faces["left" if side == 1 else "right"]
        b.decal(cab_face, cabin.on_side(side, window), idt.glass_rgb)
        for x in pillars:
            post = _clip_convex(_rect2(x - pillar / 2, 0.0, x + pillar / 2, 99.0), window)
            b.decal(cab_face, cabin.on_side(side, post), body)


def _rim(b: _Builder, face: int, lower: _Extrusion, side: int, x: float, r: float,
         style: int, rim: np.ndarray) -> None:
    """Rim decals of one wheel, styles as in :class:`VehicleIdentity`."""
    centre = np.array([x, r])
    radius = 0.68 * r
    if style == 3:
        b.decal(face, lower.on_side(side, _circle(x, r, radius, 12)), rim * 0.55)
        b.decal(face, lower.on_side(side, _circle(x, r, 0.3 * r, 8)), rim * 0.8, fine=True)
        return
    if style == 2:
        b.decal(face, lower.on_side(side, _circle(x, r, radius, 12)), rim)
        b.decal(face, lower.on_side(side, _circle(x, r, 0.45 * r, 10)), rim * 0.6, fine=True)
        return
    b.decal(face, lower.on_side(side, _circle(x, r, radius, 12)), (45, 45, 48))
    spokes, width = (5, 0.16 * r) if style == 0 else (9, 0.07 * r)
    for k in range(spokes):
        a = 2 * math.pi * k / spokes + 0.3
        d, n = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
        spoke = np.array([centre - n * width, centre + d * radius - n * width,
                          centre + d * radius + n * width, centre + n * width])
        b.decal(face, lower.on_side(side, spoke), rim, fine=True)
    b.decal(face, lower.on_side(side, _circle(x, r, 0.22 * r, 8)), rim * 0.8)


# --------------------------------------------------------------------------- rendering


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points (Andrew's monotone chain)."""
    pts = sorted(map(tuple, points))

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(reversed(pts)))


def _flat(points: np.ndarray) -> list[float]:
    return points.ravel().tolist()


def _fill(colour) -> RGB:
    return tuple(int(c) for c in np.clip(colour, 0, 255))


def render(identity: VehicleIdentity, camera: CameraLook,
           rng: np.random.Generator) -> Image.Image:
    """One RGB crop of ``identity`` seen by ``camera``.

    Per image: yaw jitter (±``camera.yaw_jitter_deg``), elevation jitter (±3 degrees), scale
    jitter (±15 % around ``camera.crop_px`` for the longer side), margins of 3-10 % and a small
    translation, background clutter, an occluder with probability ``camera.occlusion_prob``,
    brightness jitter and sensor noise. The aspect ratio follows the projected silhouette, as
    for a detector crop. Deterministic for a given ``rng`` state.
    """
    geo = _geometry(identity)
    yaw = math.radians(camera.yaw_deg + rng.uniform(-1.0, 1.0) * camera.yaw_jitter_deg)
    elev = math.radians(float(np.clip(camera.elevation_deg + rng.uniform(-3.0, 3.0), 2.0, 45.0)))
    toward = np.array([math.cos(yaw) * math.cos(elev), math.sin(yaw) * math.cos(elev),
                       math.sin(elev)])                       # vehicle -> camera
    right = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.cross(right, -toward)
    project = np.column_stack([right, -up])                   # metres -> (x right, y down)

    face_2d = geo.face_verts @ project
    low, high = face_2d.min(axis=0), face_2d.max(axis=0)
    extent = high - low
    margin = rng.uniform(0.03, 0.10, 2)
    box = extent * (1 + 2 * margin)
    px_per_m = camera.crop_px * rng.uniform(0.85, 1.15) / box.max()
    size = np.maximum(np.round(box * px_per_m), _MIN_SIDE_PX).astype(int)
    shift = rng.uniform(-0.6, 0.6, 2) * margin * extent * px_per_m
    scale = px_per_m * _SUPERSAMPLE
    offset = (size / 2 + shift) * _SUPERSAMPLE - (low + high) / 2 * scale

    def to_px(points_3d: np.ndarray) -> np.ndarray:
        return points_3d @ project * scale + offset

    canvas = Image.new("RGB", (int(size[0]) * _SUPERSAMPLE, int(size[1]) * _SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)
    light = _light_direction(camera, yaw)
    _draw_background(draw, canvas.size, camera, geo, to_px, light, rng)

    shade = camera.ambient + (1 - camera.ambient) * np.maximum(geo.face_normals @ light, 0.0)
    sky = np.maximum(geo.face_normals[:, 2], 0.0) * geo.face_reflect
    face_fill = geo.face_rgb * shade[:, None] + sky[:, None]
    decal_fill = geo.decal_rgb * shade[geo.decal_face, None] + sky[geo.decal_face, None] * 0.5
    facing = geo.face_normals @ toward
    face_px = face_2d * scale + offset
    decal_px = to_px(geo.decal_verts)
    show_fine = px_per_m >= 14.0

    wheels = sorted((s for s in geo.solids if s.kind == "wheel"),
                    key=lambda s: float(s.centre @ toward))
    for wheel in wheels:
        draw.polygon(_flat(_convex_hull(face_px[wheel.start:wheel.end])), fill=_TYRE)
    lower = [s for s in geo.solids if s.kind == "lower"]
    uppers = sorted((s for s in geo.solids if s.kind == "upper"),
                    key=lambda s: float(s.centre[:2] @ toward[:2]))
    for solid in lower + uppers:
        for f in solid.faces:
            if facing[f] <= 0.01:
                continue
            start, end = geo.face_spans[f]
            draw.polygon(_flat(face_px[start:end]), fill=_fill(face_fill[f]))
            if facing[f] < 0.12:
                continue
            for d in geo.face_decals[f]:
                if geo.decal_fine[d] and not (show_fine and facing[f] > 0.25):
                    continue
                start, end = geo.decal_spans[d]
                draw.polygon(_flat(decal_px[start:end]), fill=_fill(decal_fill[d]))

    if rng.random() < camera.occlusion_prob:
        _draw_occluder(draw, canvas.size, rng)
    image = canvas.reduce(_SUPERSAMPLE)
    if camera.blur_px > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur_px))
    return _camera_response(image, camera, rng)


def _light_direction(camera: CameraLook, yaw: float) -> np.ndarray:
    """Unit vector toward the light, vehicle frame; azimuth relative to the viewing direction."""
    az = yaw + math.radians(camera.light_azimuth_deg)
    el = math.radians(camera.light_elevation_deg)
    return np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])


def _jitter(rgb, rng: np.random.Generator, amount: float) -> RGB:
    return _fill(np.asarray(rgb, dtype=float) + rng.uniform(-amount, amount, 3))


def _draw_background(draw: ImageDraw.ImageDraw, size: tuple[int, int], camera: CameraLook,
                     geo: _Geometry, to_px, light: np.ndarray,
                     rng: np.random.Generator) -> None:
    """Road with lane marks, patches, kerb, scenery band, poles, and the vehicle's shadow."""
    w, h = size
    road = np.asarray(camera.road_rgb, dtype=float)
    draw.rectangle([0, 0, w, h], fill=_jitter(road, rng, 6))
    half_l, half_w = geo.length / 2, geo.width / 2

    def ground(x0, y0, x1, y1):
        corners = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])
        return _flat(to_px(corners))

    for _ in range(int(rng.integers(0, 2 + round(4 * camera.clutter)))):   # road patches
        x, y = rng.uniform(-12, 12), rng.uniform(-6, 6)
        dx, dy = rng.uniform(0.5, 4.0, 2)
        draw.polygon(ground(x, y, x + dx, y + dy), fill=_jitter(road * rng.uniform(0.8, 1.15),
                                                                rng, 4))
    if rng.random() < 0.5 + 0.5 * camera.clutter:                         # kerb and pavement
        side = 1 if rng.random() < 0.5 else -1
        y0 = side * (half_w + rng.uniform(1.0, 3.5))
        draw.polygon(ground(-40, y0, 40, y0 + side * 6),
                     fill=_jitter(road * 1.2 + 15, rng, 10))
        draw.polygon(ground(-40, y0, 40, y0 + side * 0.2), fill=_jitter(road * 1.4 + 30, rng, 8))
    lane = np.asarray(camera.lane_rgb, dtype=float)
    phase, dash, gap = rng.uniform(0, 9), rng.uniform(2.0, 4.0), rng.uniform(3.0, 6.0)
    for side in (1, -1):
        if rng.random() < 0.7:
            y = side * (half_w + rng.uniform(0.3, 1.6))
            x = -40 + phase
            while x < 40:
                draw.polygon(ground(x, y - 0.08, x + dash, y + 0.08), fill=_fill(lane * 0.9))
                x += dash + gap
    if camera.horizon_frac > 0:                                            # scenery band
        top = camera.horizon_frac * h * rng.uniform(0.8, 1.2)
        scenery = np.asarray(camera.scenery_rgb, dtype=float)
        draw.rectangle([0, 0, w, top], fill=_jitter(scenery, rng, 10))
        for _ in range(int(rng.integers(1, 5))):
            x = rng.uniform(0, w)
            draw.rectangle([x, rng.uniform(0, top * 0.6), x + rng.uniform(0.05, 0.3) * w, top],
                           fill=_jitter(scenery * rng.uniform(0.7, 1.3), rng, 15))
    for _ in range(int(rng.random() < camera.clutter) + int(rng.random() < camera.clutter / 3)):
        x, pw = rng.uniform(0, w), rng.uniform(0.015, 0.04) * w           # background pole
        draw.rectangle([x, 0, x + pw, rng.uniform(0.3, 0.8) * h],
                       fill=_jitter((120, 120, 118), rng, 40))
    offset = -light[:2] / max(light[2], 0.3) * 0.3                        # shadow
    draw.polygon(ground(-half_l * 1.03 + offset[0], -half_w * 1.05 + offset[1],
                        half_l * 1.03 + offset[0], half_w * 1.05 + offset[1]),
                 fill=_fill(road * 0.45))


def _draw_occluder(draw: ImageDraw.ImageDraw, size: tuple[int, int],
                   rng: np.random.Generator) -> None:
    """Something in front of the vehicle covering about 10-35 % of the crop."""
    w, h = size
    frac = rng.uniform(0.10, 0.35)
    kind = int(rng.integers(5))
    if kind == 0:                                   # pole
        pw = frac * w
        x = rng.uniform(-0.2 * pw, w - 0.8 * pw)
        draw.rectangle([x, 0, x + pw, h], fill=_jitter((110, 110, 108), rng, 40))
    elif kind == 1:                                 # sign on a thin post
        post = 0.04 * w
        x = rng.uniform(0.1, 0.9) * w
        draw.rectangle([x - post / 2, 0, x + post / 2, h], fill=_jitter((130, 130, 130), rng, 20))
        sw = math.sqrt(max(frac - 0.04, 0.05) * w * h * rng.uniform(0.7, 1.4))
        sh = max(frac - 0.04, 0.05) * w * h / sw
        y = rng.uniform(0, 0.4) * h
        colour = ((30, 90, 170), (30, 130, 70), (200, 40, 35), (230, 230, 225))[int(rng.integers(4))]
        draw.rectangle([x - sw / 2, y, x + sw / 2, y + sh], fill=_jitter(colour, rng, 15))
    elif kind == 2:                                 # part of another vehicle at a side
        bw = frac * w * 1.15
        left = rng.random() < 0.5
        x0, x1 = (-0.1 * bw, bw) if left else (w - bw, w + 0.1 * bw)
        y0 = rng.uniform(0.0, 0.25) * h
        colour = _fill(rng.uniform(20, 235, 3))
        draw.rounded_rectangle([x0, y0, x1, h + 10], radius=0.15 * bw, fill=colour)
        draw.rectangle([x0 + 0.1 * bw, y0 + 0.12 * h, x1 - 0.1 * bw, y0 + 0.3 * h],
                       fill=(35, 42, 52))
        cx = (x0 + x1) / 2
        draw.ellipse([cx - 0.3 * bw, h - 0.2 * h, cx + 0.3 * bw, h + 0.2 * h], fill=_TYRE)
    elif kind == 3:                                 # foliage in a corner
        cx, cy = rng.choice([0.0, w]), rng.choice([0.0, h * 0.3])
        radius = math.sqrt(frac * w * h / math.pi) * 1.5
        green = rng.uniform([30, 60, 20], [80, 120, 60])
        for _ in range(5):
            x, y = cx + rng.normal(0, radius * 0.4), cy + rng.normal(0, radius * 0.4)
            rr = radius * rng.uniform(0.4, 0.7)
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=_jitter(green, rng, 15))
    else:                                           # pedestrian or cyclist
        pw = frac * w * 0.9
        x = rng.uniform(0, w - pw)
        y0 = rng.uniform(0.05, 0.3) * h
        head = pw * 0.45
        draw.ellipse([x + pw / 2 - head / 2, y0, x + pw / 2 + head / 2, y0 + head],
                     fill=_jitter((150, 110, 90), rng, 30))
        draw.rounded_rectangle([x, y0 + head, x + pw, h + 5], radius=pw * 0.25,
                               fill=_fill(rng.uniform(20, 200, 3)))


def _camera_response(image: Image.Image, camera: CameraLook,
                     rng: np.random.Generator) -> Image.Image:
    """Gain, colour tint, haze and sensor noise."""
    pixels = np.asarray(image, dtype=np.float32)
    gain = np.asarray(camera.tint_rgb, dtype=np.float32) * np.float32(
        camera.brightness * rng.uniform(0.94, 1.06))
    haze = np.float32(camera.haze)
    pixels = pixels * (gain * (1 - haze)) + haze * np.float32(150.0)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(camera.noise_std)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
