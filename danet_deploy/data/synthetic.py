"""Synthetic street scenes with the 19 Cityscapes classes, for the demo, tests and calibration.

Each scene has a perspective road to a vanishing point, sidewalks, buildings with windows, walls,
fences, vegetation, terrain, sky with clouds, poles carrying traffic lights and signs, vehicles, people
and riders scaled by depth and drawn far to near (so nearer objects occlude farther ones), an ignored
ego-vehicle hood, and global lighting, tint, shadows and sensor noise. Every class has its own colour
family and texture, so a small DANet can learn it on a CPU. Scenes are a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from danet_deploy.files import atomic_path, make_dirs

IGNORE = 255
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# Base RGB colour (0-1) per class; each instance jitters around it.
BASE_COLOURS: dict[int, tuple[float, float, float]] = {
    ROAD: (0.38, 0.33, 0.40),
    SIDEWALK: (0.78, 0.62, 0.70),
    BUILDING: (0.52, 0.50, 0.47),
    WALL: (0.50, 0.52, 0.68),
    FENCE: (0.75, 0.65, 0.55),
    POLE: (0.72, 0.72, 0.72),
    LIGHT: (0.95, 0.65, 0.10),
    SIGN: (0.92, 0.90, 0.05),
    VEGETATION: (0.30, 0.48, 0.12),
    TERRAIN: (0.60, 0.88, 0.55),
    SKY: (0.45, 0.65, 0.90),
    PERSON: (0.85, 0.10, 0.25),
    RIDER: (1.00, 0.30, 0.00),
    CAR: (0.05, 0.10, 0.60),
    TRUCK: (0.10, 0.25, 0.30),
    BUS: (0.00, 0.45, 0.55),
    TRAIN: (0.20, 0.55, 0.35),
    MOTORCYCLE: (0.30, 0.30, 0.95),
    BICYCLE: (0.55, 0.08, 0.20),
}

SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_000, "calib": 2_000_000, "test": 3_000_000}


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray  # H x W uint8 train ids, 255 ignored


Texture = Callable[[int, int, np.random.Generator], np.ndarray]


def smooth_noise(h: int, w: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1] with features about `cell` pixels wide."""
    small = rng.random((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((w + cell, h + cell), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)[:h, :w]


def _jitter(colour: tuple[float, float, float], rng: np.random.Generator, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3).astype(np.float32), 0, 1)


def _flat(colour: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(colour, (h, w, 3)).copy()


def texture_for(cls: int, rng: np.random.Generator) -> Texture:
    """A function painting an h x w patch of class `cls` (one instance: colour fixed per call)."""
    colour = _jitter(BASE_COLOURS[cls], rng)

    def noisy(h: int, w: int, r: np.random.Generator, cell: int = 4, amp: float = 0.08) -> np.ndarray:
        return _flat(colour, h, w) + (smooth_noise(h, w, cell, r)[..., None] - 0.5) * amp

    def paint(h: int, w: int, r: np.random.Generator) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        if cls == ROAD:
            return noisy(h, w, r, 2, 0.10)
        if cls == SIDEWALK:
            tile = ((yy % 8 == 0) | (xx % 10 == 0))[..., None]
            return noisy(h, w, r, 3, 0.06) - 0.15 * tile
        if cls == BUILDING:
            px, py = int(r.integers(7, 12)), int(r.integers(9, 15))
            windows = ((xx % px) >= 3) & ((yy % py) >= 4)
            glass = np.array([0.15, 0.18, 0.25], np.float32) + r.random() * 0.1
            out = noisy(h, w, r, 6, 0.1)
            out[windows] = glass
            return out
        if cls == WALL:
            bricks = (yy % 6 == 0) | (((xx + 6 * ((yy // 6) % 2)) % 12) == 0)
            return noisy(h, w, r, 3, 0.06) - 0.12 * bricks[..., None]
        if cls == FENCE:
            lattice = ((xx + yy) % 7 < 2) | ((xx - yy) % 7 < 2)
            return noisy(h, w, r, 3, 0.05) * (0.75 + 0.25 * lattice[..., None])
        if cls == POLE:
            return noisy(h, w, r, 2, 0.05) * (0.85 + 0.15 * np.sin(np.pi * (xx + 0.5) / max(w, 1)))[..., None]
        if cls == LIGHT:
            out = noisy(h, w, r, 2, 0.05)
            lamp = int(r.integers(0, 3))
            band = (yy * 3 // max(h, 1)) == lamp
            lamp_colour = np.array([(1, 0.1, 0.1), (1, 0.8, 0.1), (0.1, 1, 0.3)][lamp], np.float32)
            out[band & (np.abs(xx - w / 2) < w / 3)] = lamp_colour
            return out
        if cls == SIGN:
            border = (yy < 2) | (yy >= h - 2) | (xx < 2) | (xx >= w - 2)
            out = noisy(h, w, r, 2, 0.05)
            out[border] = (0.9, 0.1, 0.1)
            return out
        if cls == VEGETATION:
            leaves = smooth_noise(h, w, 3, r)[..., None]
            return _flat(colour, h, w) * (0.55 + 0.8 * leaves)
        if cls == TERRAIN:
            return noisy(h, w, r, 2, 0.10)
        if cls == SKY:
            grad = (yy / max(h, 1))[..., None] * np.array([0.25, 0.2, 0.05], np.float32)
            clouds = np.clip(smooth_noise(h, w, 24, r) * 2 - 1.1, 0, 1)[..., None]
            return (_flat(colour, h, w) + grad) * (1 - clouds) + clouds * 0.95
        if cls in (PERSON, RIDER):
            out = noisy(h, w, r, 2, 0.08)
            head = yy < max(2, h // 6)
            out[head] = (0.85, 0.65, 0.5)
            return out
        if cls in (CAR, TRUCK, BUS, TRAIN):
            out = noisy(h, w, r, 4, 0.06)
            top = {CAR: 0.45, TRUCK: 0.3, BUS: 0.45, TRAIN: 0.4}[cls]
            window_rows = (yy > h * 0.15) & (yy < h * top)
            if cls in (BUS, TRAIN):
                window_rows &= (xx % 12) > 2
            out[window_rows] = (0.12, 0.15, 0.2)
            if cls == TRAIN:
                out[(yy > h * 0.6) & (yy < h * 0.7)] = (0.95, 0.95, 0.95)
            return out
        return noisy(h, w, r, 2, 0.06)

    return paint


class Canvas:
    """An image and its label map, painted shape by shape; later shapes occlude earlier ones."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.h, self.w, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), IGNORE, np.uint8)

    def _mask(self, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
        mask_img = Image.new("L", (self.w, self.h), 0)
        draw(ImageDraw.Draw(mask_img))
        return np.asarray(mask_img) > 0

    def paint(self, mask: np.ndarray, cls: int, texture: Texture | None = None) -> None:
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch = (texture or texture_for(cls, self.rng))(y1 - y0, x1 - x0, self.rng)
        local = mask[y0:y1, x0:x1]
        self.image[y0:y1, x0:x1][local] = patch[local]
        self.label[y0:y1, x0:x1][local] = cls

    def polygon(self, points: list[tuple[float, float]], cls: int, texture: Texture | None = None) -> None:
        self.paint(self._mask(lambda d: d.polygon(points, fill=1)), cls, texture)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int, texture: Texture | None = None) -> None:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.paint(self._mask(lambda d: d.rectangle(box, fill=1)), cls, texture)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, cls: int, texture: Texture | None = None) -> None:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.paint(self._mask(lambda d: d.ellipse(box, fill=1)), cls, texture)

    def ring(self, cx: float, cy: float, radius: float, width: int, cls: int, texture: Texture | None = None) -> None:
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        self.paint(self._mask(lambda d: d.ellipse(box, outline=1, width=max(1, width))), cls, texture)

    def lines(self, points: list[tuple[float, float]], width: int, cls: int, texture: Texture | None = None) -> None:
        self.paint(self._mask(lambda d: d.line(points, fill=1, width=max(1, width))), cls, texture)


def _draw_person(c: Canvas, x: float, foot: float, scale: float, cls: int) -> None:
    height = 80 * scale
    width = max(3.0, height * 0.3)
    c.ellipse(x - width * 0.3, foot - height, x + width * 0.3, foot - height * 0.8, cls)
    c.rect(x - width / 2, foot - height * 0.82, x + width / 2, foot - height * 0.4, cls)
    legs = max(2, int(width * 0.35))
    c.lines([(x - width * 0.25, foot - height * 0.42), (x - width * 0.3, foot)], legs, cls)
    c.lines([(x + width * 0.25, foot - height * 0.42), (x + width * 0.3, foot)], legs, cls)


def _draw_two_wheeler(c: Canvas, x: float, foot: float, scale: float, cls: int) -> None:
    radius = 16 * scale
    gap = radius * 2.6
    width = max(2, int(radius * (0.45 if cls == MOTORCYCLE else 0.3)))
    for cx in (x - gap / 2, x + gap / 2):
        c.ring(cx, foot - radius, radius, width, cls)
    frame_top = foot - radius * 2.2
    if cls == MOTORCYCLE:
        c.polygon(
            [
                (x - gap / 2, foot - radius),
                (x - gap / 3, frame_top),
                (x + gap / 3, frame_top),
                (x + gap / 2, foot - radius),
            ],
            cls,
        )
    else:
        pts = [(x - gap / 2, foot - radius), (x, frame_top), (x + gap / 2, foot - radius), (x - gap / 2, foot - radius)]
        c.lines(pts, width, cls)


def _draw_vehicle(c: Canvas, cls: int, x: float, foot: float, scale: float) -> None:
    length, height = {CAR: (90, 38), TRUCK: (120, 70), BUS: (170, 75), TRAIN: (300, 80)}[cls]
    w, h = length * scale * c.rng.uniform(0.85, 1.15), height * scale * c.rng.uniform(0.9, 1.1)
    if cls == CAR:
        body = [
            (x - w / 2, foot - h * 0.55),
            (x - w * 0.3, foot - h),
            (x + w * 0.3, foot - h),
            (x + w / 2, foot - h * 0.55),
            (x + w / 2, foot - h * 0.1),
            (x - w / 2, foot - h * 0.1),
        ]
        c.polygon(body, CAR)
    elif cls == TRUCK:
        c.rect(x - w / 2, foot - h, x + w * 0.2, foot - h * 0.1, TRUCK)
        c.rect(x + w * 0.2, foot - h * 0.6, x + w / 2, foot - h * 0.1, TRUCK)
    else:
        c.rect(x - w / 2, foot - h, x + w / 2, foot - h * 0.08, cls)
    wheel_r = max(2.0, h * 0.16)
    tyre = lambda hh, ww, r: _flat(np.array([0.06, 0.06, 0.06], np.float32), hh, ww)  # noqa: E731
    for wx in (x - w * 0.32, x + w * 0.32):
        c.ellipse(wx - wheel_r, foot - 2 * wheel_r, wx + wheel_r, foot, cls, tyre)


def generate_scene(seed: int, height: int = 256, width: int = 512) -> Scene:
    """One labeled street scene; the same seed always gives the same scene."""
    rng = np.random.default_rng(seed)
    c = Canvas(height, width, rng)
    horizon = height * rng.uniform(0.36, 0.5)
    vanish_x = width * rng.uniform(0.35, 0.65)
    depth = lambda y: max(0.08, (y - horizon) / (height - horizon))  # noqa: E731  (scale at image row y)
    near = lambda: horizon + (height - horizon) * rng.uniform(0.12, 1.0) ** 0.6  # noqa: E731  (favour near rows)

    c.rect(0, 0, width, horizon + 2, SKY)
    # Buildings: a skyline of blocks, taller towards the image sides (closer to the camera).
    x = -rng.uniform(0, 40)
    while x < width:
        bw = rng.uniform(40, 110)
        side = abs((x + bw / 2) - vanish_x) / width
        top = horizon - rng.uniform(20, 60) - side * height * rng.uniform(0.3, 0.7)
        c.rect(x, max(0.0, top), x + bw, horizon + 4, BUILDING)
        x += bw + rng.uniform(-10, 15)
    # Vegetation: tree crowns along the skyline, sometimes in front of buildings.
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0, width), horizon - rng.uniform(0, 50)
        rx, ry = rng.uniform(20, 60), rng.uniform(15, 45)
        c.ellipse(cx - rx, cy - ry, cx + rx, cy + ry, VEGETATION)
        c.rect(cx - 3, cy + ry * 0.6, cx + 3, horizon + 6, VEGETATION)

    # Ground: terrain everywhere below the horizon, then sidewalks and the road in perspective.
    c.rect(0, horizon, width, height, TERRAIN)
    road_half = width * rng.uniform(0.28, 0.42)
    walk = width * rng.uniform(0.12, 0.22)
    bottom_l, bottom_r = vanish_x - road_half * 1.3, vanish_x + road_half * 1.3
    c.polygon(
        [(vanish_x - 4, horizon), (vanish_x + 4, horizon), (bottom_r + walk, height), (bottom_l - walk, height)],
        SIDEWALK,
    )
    c.polygon([(vanish_x - 2, horizon), (vanish_x + 2, horizon), (bottom_r, height), (bottom_l, height)], ROAD)
    for t in np.arange(0.1, 1.0, 0.18):  # lane markings belong to the road
        y0, y1 = horizon + (height - horizon) * t, horizon + (height - horizon) * (t + 0.07)
        mark = lambda hh, ww, r: _flat(np.array([0.9, 0.9, 0.88], np.float32), hh, ww)  # noqa: E731
        c.polygon(
            [
                (vanish_x - 1 - 2 * t, y0),
                (vanish_x + 1 + 2 * t, y0),
                (vanish_x + 1 + 3 * t, y1),
                (vanish_x - 1 - 3 * t, y1),
            ],
            ROAD,
            mark,
        )
    # Vegetation strips and hedges beside the sidewalks.
    if rng.random() < 0.6:
        edge = height - rng.uniform(0, 30)
        c.polygon([(0, horizon + 8), (vanish_x - 30, horizon + 3), (bottom_l - walk - 10, edge), (0, edge)], VEGETATION)

    # Side structures: a wall and a fence at varying depth.
    for cls in (WALL, FENCE):
        if rng.random() < 0.75:
            foot = rng.uniform(horizon + 10, height * 0.85)
            s = depth(foot)
            left = rng.random() < 0.5
            x_edge = vanish_x + (-1 if left else 1) * (road_half * 1.3 + walk) * s
            x0 = rng.uniform(0, max(1.0, x_edge - 20)) if left else x_edge + rng.uniform(0, 20)
            x1 = x_edge if left else min(width, x0 + rng.uniform(60, 200) * s + 30)
            if left:
                x0 = max(0.0, min(x0, x1 - 30))
            c.rect(x0, foot - rng.uniform(40, 90) * s, x1, foot, cls)

    # Objects, far to near, so nearer ones occlude farther ones.
    objects: list[tuple[float, Callable[[], None]]] = []
    for _ in range(int(rng.integers(2, 6))):  # poles with lights or signs on the sidewalks
        foot = rng.uniform(horizon + 15, height)
        s = depth(foot)
        side = rng.choice([-1, 1])
        x = vanish_x + side * (road_half * 1.3 + walk * 0.5) * s
        kind = rng.choice([LIGHT, SIGN, POLE])

        def pole(x: float = x, foot: float = foot, s: float = s, kind: int = kind) -> None:
            ph, pw = 140 * s, max(3.0, 7 * s)
            c.rect(x - pw / 2, foot - ph, x + pw / 2, foot, POLE)
            if kind == LIGHT:
                c.rect(x - 7 * s - 2, foot - ph - 28 * s, x + 7 * s + 2, foot - ph + 2, LIGHT)
            elif kind == SIGN:
                r = 12 * s + 3
                c.rect(x - r, foot - ph - r, x + r, foot - ph + r, SIGN)

        objects.append((foot, pole))
    for _ in range(int(rng.integers(1, 6))):  # vehicles on the road
        foot = near()
        s = depth(foot)
        cls = int(rng.choice([CAR, CAR, CAR, TRUCK, BUS, TRAIN]))
        x = vanish_x + rng.uniform(-0.9, 0.9) * road_half * 1.3 * s
        objects.append((foot, partial(_draw_vehicle, c, cls, x, foot, s)))
    for _ in range(int(rng.integers(2, 7))):  # people on sidewalks, riders on the road
        foot = near()
        s = depth(foot)
        kind = int(rng.choice([PERSON, RIDER]))
        if kind == PERSON:
            x = vanish_x + rng.choice([-1, 1]) * (road_half * 1.3 + walk * rng.uniform(0.2, 0.9)) * s
            objects.append((foot, partial(_draw_person, c, x, foot, s, PERSON)))
        else:
            x = vanish_x + rng.uniform(-0.8, 0.8) * road_half * 1.3 * s
            wheel = int(rng.choice([MOTORCYCLE, BICYCLE]))

            def ride(x: float = x, foot: float = foot, s: float = s, wheel: int = wheel) -> None:
                _draw_two_wheeler(c, x, foot, s, wheel)
                _draw_person(c, x, foot - 24 * s, s * 0.9, RIDER)

            objects.append((foot, ride))
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()

    # Ego-vehicle hood: not a class, ignored as in Cityscapes.
    if rng.random() < 0.4:
        top = height - rng.uniform(8, 22)
        hood = lambda hh, ww, r: _flat(np.array([0.1, 0.1, 0.12], np.float32), hh, ww)  # noqa: E731
        c.polygon([(0, height), (width * 0.15, top), (width * 0.85, top), (width, height)], IGNORE, hood)

    return Scene(image=_photometric(c.image, rng), label=c.label)


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting: brightness, contrast, colour temperature, a soft shadow band, vignette, sensor noise."""
    h, w, _ = image.shape
    out = image * rng.uniform(0.65, 1.3) + rng.uniform(-0.08, 0.08)
    out = (out - 0.5) * rng.uniform(0.8, 1.2) + 0.5
    out = out * (1 + rng.normal(0, 0.06, 3)).astype(np.float32)
    if rng.random() < 0.5:
        x0 = rng.uniform(0, w)
        xx = np.arange(w)[None, :] - x0 - (np.arange(h)[:, None] * rng.uniform(-1, 1))
        out = out * (1 - 0.35 * ((xx > 0) & (xx < rng.uniform(40, 160))))[..., None]
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2)
    out = out * vignette[..., None] + rng.normal(0, 0.015, out.shape)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def scene_seed(split: str, index: int) -> int:
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_SEED_OFFSET)}")
    return SPLIT_SEED_OFFSET[split] + index


def write_cityscapes_split(
    root: str | Path, split: str, count: int, height: int = 256, width: int = 512, label_ids: bool = False
) -> Path:
    """Write `count` scenes in the Cityscapes layout (city "synth"); `label_ids` also writes `*_labelIds.png`."""
    from danet_deploy.data.datasets import train_ids_to_label_ids

    root = Path(root)
    image_dir = root / "leftImg8bit" / split / "synth"
    gt_dir = root / "gtFine" / split / "synth"
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene = generate_scene(scene_seed(split, i), height, width)
        stem = f"synth_{i:06d}_000019"
        Image.fromarray(scene.image).save(image_dir / f"{stem}_leftImg8bit.png", optimize=True)
        Image.fromarray(scene.label).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png", optimize=True)
        if label_ids:
            Image.fromarray(train_ids_to_label_ids(scene.label)).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    return root


def write_calibration_images(folder: str | Path, count: int, height: int = 256, width: int = 512) -> Path:
    """The calibration split of the generator as PNG files (`calibration/images` ships the same scenes as JPEG)."""
    folder = Path(folder)
    make_dirs(folder)
    for i in range(count):
        path = folder / f"calib_{i:04d}.png"
        if not path.exists():  # written whole or not at all: an interrupted run leaves no half image to reuse
            with atomic_path(path) as tmp:
                Image.fromarray(generate_scene(scene_seed("calib", i), height, width).image).save(tmp, "PNG")
    return folder
