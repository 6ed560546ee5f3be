"""The sample painter: small car-panel pictures (paint, lighting, panel lines) showing one of eight damage kinds.
Random draws come from :func:`render`'s generator in a fixed order: changing any drawing step changes data/sample."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = (160, 120)  # (width, height) of the saved JPEGs
_SS = 2  # draw at twice the size, then downscale: smooth edges without anti-aliasing code
_MARGIN = 1.3  # the canvas is larger than the view: room for rotation, shift and zoom
_LIGHT = (-0.6, -0.8)  # direction towards the light in the picture plane (upper left)
PAINTS = (  # car paint colours (sRGB 0-1): white, silver, black, grey, red, dark blue, blue, green, beige, yellow
    (0.90, 0.90, 0.88), (0.70, 0.72, 0.74), (0.07, 0.07, 0.08), (0.32, 0.33, 0.35), (0.68, 0.07, 0.08),
    (0.09, 0.15, 0.34), (0.20, 0.40, 0.68), (0.12, 0.30, 0.20), (0.74, 0.68, 0.56), (0.88, 0.72, 0.14))


class _Canvas:
    """A float RGB picture (0-1), coordinate grids in canvas fractions, and compositing helpers."""
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.w, self.h = (round(side * _SS * _MARGIN) for side in IMAGE_SIZE)
        ys, xs = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.x = (xs + 0.5) / self.w  # 0..1 left to right
        self.y = (ys + 0.5) / self.h  # 0..1 top to bottom
        self.img = np.zeros((self.h, self.w, 3), np.float32)

    def px(self, u: float, v: float) -> tuple[float, float]:  # canvas fractions -> pixel coordinates
        return (u * self.w, v * self.h)

    def mask(self, draw: Callable[[ImageDraw.ImageDraw], object], blur: float = 0.7) -> np.ndarray:
        """Draw white on black with PIL (pixel coordinates) and return the softened mask as floats 0-1."""
        m = Image.new("L", (self.w, self.h), 0)
        draw(ImageDraw.Draw(m))
        box = m.getbbox()
        if blur and box:  # blur only around the shape: much faster than the whole canvas
            pad = math.ceil(3 * blur) + 2
            box = (max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, self.w), min(box[3] + pad, self.h))
            m.paste(m.crop(box).filter(ImageFilter.GaussianBlur(blur)), box[:2])
        return np.asarray(m, np.float32) / 255.0

    def polygon(self, points: Sequence[tuple[float, float]], blur: float = 0.7) -> np.ndarray:  # canvas fractions
        pts = [self.px(u, v) for u, v in points]
        return self.mask(lambda d: d.polygon(pts, fill=255), blur)

    def rect(self, u0: float, v0: float, u1: float, v1: float, blur: float = 0.7) -> np.ndarray:
        return self.polygon([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], blur)

    def ellipse(self, u: float, v: float, rx: float, ry: float, blur: float = 0.7) -> np.ndarray:
        """Mask of an ellipse centred at (u, v); radii in canvas heights (rx == ry is a circle)."""
        cx, cy = self.px(u, v)
        box = (cx - rx * self.h, cy - ry * self.h, cx + rx * self.h, cy + ry * self.h)
        return self.mask(lambda d: d.ellipse(box, fill=255), blur)

    def over(self, mask: np.ndarray, colour) -> None:
        """Alpha-composite a colour (an RGB triple or an (h, w, 3) array) through a mask."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            return
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # only where the mask is
        colour = np.asarray(colour, np.float32)
        colour = colour[box] if colour.ndim == 3 else colour
        self.img[box] += (colour - self.img[box]) * mask[box][..., None]


def _paint_params(rng: np.random.Generator) -> dict:
    """A random paint colour and the light on it: gradient, horizon reflection, highlight band."""
    colour = np.array(PAINTS[rng.integers(len(PAINTS))], np.float32)
    colour = np.clip(colour * rng.uniform(0.92, 1.08) + rng.normal(0, 0.015, 3), 0, 1).astype(np.float32)
    return {"colour": colour, "gx": rng.uniform(-0.35, 0.35), "gy": rng.uniform(-0.45, 0.05),  # drawn in this order
            "horizon": rng.uniform(0.25, 0.6), "tilt": rng.uniform(-0.15, 0.15),
            "band": (rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.8), rng.uniform(-1.2, 1.2)),
            "band_width": rng.uniform(0.04, 0.12), "band_strength": rng.uniform(0.15, 0.45)}


def _paint(c: _Canvas, p: dict, dent: tuple | None = None, curve: np.ndarray | float = 1.0) -> np.ndarray:
    """Glossy paint: colour x diffuse light, plus a sky/ground reflection and a highlight band. ``dent`` (from
    ``_dent_field``) bends the reflections and shades the slopes; ``curve``: extra diffuse factor (bumpers)."""
    dx, dy, shade = dent if dent is not None else (0.0, 0.0, np.zeros_like(c.x))
    x, y = c.x + dx, c.y + dy
    diffuse = (1.0 + p["gx"] * (x - 0.5) + p["gy"] * (y - 0.5)) * curve
    above = 1.0 / (1.0 + np.exp(-(p["horizon"] + p["tilt"] * (x - 0.5) - y) / 0.012))  # sky reflection
    bx, by, angle = p["band"]
    band = np.exp(-((((x - bx) * math.cos(angle) + (y - by) * math.sin(angle)) / p["band_width"]) ** 2))
    rgb = p["colour"] * (diffuse * (0.75 + 0.3 * above) * (1.0 + np.minimum(shade, 0)))[..., None]
    gloss = 0.08 * above + p["band_strength"] * band + 0.6 * np.maximum(shade, 0)  # slopes facing the light
    return rgb + gloss[..., None]


def _background(c: _Canvas) -> None:
    """Wall or sky above, asphalt below: what shows around the car."""
    top = c.rng.uniform(0.35, 0.8, 3).astype(np.float32)
    ground = np.full(3, c.rng.uniform(0.18, 0.35), np.float32)
    t = np.clip((c.y - 0.55) / 0.1, 0, 1)[..., None]
    c.img[:] = top * (1 - t) + ground * t
    c.img += c.rng.normal(0, 0.02, (c.h, c.w, 1)).astype(np.float32) * t


def _jagged(rng: np.random.Generator, start, angle: float, length: float, steps: int, wobble: float) -> list:
    """A random-walk polyline in pixel coordinates: the path of a scratch or a crack."""
    x, y = start
    pts = [(x, y)]
    for _ in range(steps):
        angle += rng.normal(0, wobble)
        x, y = x + length / steps * math.cos(angle), y + length / steps * math.sin(angle)
        pts.append((x, y))
    return pts


def _dent_field(c: _Canvas, region: tuple) -> tuple:
    """One or two elliptical depressions in ``region`` -> (dx, dy, shade) for ``_paint``."""
    rng = c.rng
    u0, v0, u1, v1 = region
    height = np.zeros_like(c.x)
    for k in range(1 if rng.random() < 0.7 else 2):
        cu, cv = rng.uniform(u0, u1), rng.uniform(v0, v1)
        a = rng.uniform(0.11, 0.19) * (1.0 if k == 0 else 0.6)  # radii in canvas heights
        b = a * rng.uniform(0.45, 0.9)
        angle = rng.uniform(0, math.pi)
        xx, yy = (c.x - cu) * c.w / c.h, c.y - cv
        xr, yr = xx * math.cos(angle) + yy * math.sin(angle), -xx * math.sin(angle) + yy * math.cos(angle)
        r2 = (xr / a) ** 2 + (yr / b) ** 2
        height -= rng.uniform(0.2, 0.3) * a * np.exp(-(r2**1.5))  # flat bottom, sloped walls
        if rng.random() < 0.4:  # a sharp crease through the dent
            height -= 0.005 * np.exp(-((yr / 0.01) ** 2)) * np.exp(-r2)
    gy, gx = np.gradient(height, 1.0 / c.h)
    shade = np.clip(-(gx * _LIGHT[0] + gy * _LIGHT[1]) * 2.0, -0.6, 1.0)
    return 0.3 * gx, 0.3 * gy, shade


def _scratches(c: _Canvas, scene: Callable) -> None:
    """A door or bumper with a cluster of thin jagged lines and a scuffed halo: pale on dark paint, dark on light."""
    rng = c.rng
    p = _paint_params(rng)
    u0, v0, u1, v1 = scene(c, p)
    cx, cy = c.px(rng.uniform(u0, u1), rng.uniform(v0, v1))
    theta = rng.normal(0, 0.4) + (math.pi if rng.random() < 0.5 else 0.0)
    cos, sin = math.cos(theta), math.sin(theta)
    length = rng.uniform(0.25, 0.5) * c.w
    lines = []
    for _ in range(rng.integers(3, 8)):
        off, along = rng.normal(0, 0.03) * c.h, (rng.uniform(-0.2, 0.2) - 0.5) * length
        start = (cx + along * cos - off * sin, cy + along * sin + off * cos)
        pts = _jagged(rng, start, theta + rng.normal(0, 0.05), length * rng.uniform(0.35, 1.0), 12, 0.06)
        lines.append((pts, int(rng.integers(2, 5))))
    core = c.mask(lambda d: [d.line(pts, fill=255, width=w, joint="curve") for pts, w in lines], 0.5)
    halo = Image.fromarray((core * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(4))
    light_paint = float(np.dot(p["colour"], [0.3, 0.59, 0.11])) > 0.55
    scuff, edge, line = (0.25, 0.95, 0.3) if light_paint else (0.9, 0.05, 0.92)
    c.over(np.clip(np.asarray(halo, np.float32) / 255 * 1.2, 0, 0.45), (scuff,) * 3)
    c.over(np.roll(core, 2, axis=0) * 0.5, (edge,) * 3)  # the lit or shadowed lip of the groove
    c.over(core, (line, line, line * 0.97))


def _cracks(c: _Canvas, u: float, v: float, radius: float, clip: np.ndarray, colour=(0.9, 0.92, 0.94)) -> None:
    """Radial cracks from an impact point joined by a spider web of rings (radius in canvas heights)."""
    rng = c.rng
    cx, cy = c.px(u, v)
    r = radius * c.h
    n = int(rng.integers(9, 17))
    angles = np.sort((np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * math.pi / n + rng.uniform(0, 6.3))
    rays = [_jagged(rng, (cx, cy), a, r * rng.uniform(0.5, 1.0), 12, 0.1) for a in angles]
    rings = []
    for frac in sorted(rng.choice([0.15, 0.25, 0.4, 0.55, 0.75], size=int(rng.integers(2, 5)), replace=False)):
        k = int(round(frac * 12))
        for i in range(n):
            if rng.random() < 0.8:
                a, b = rays[i][k], rays[(i + 1) % n][k]
                mid = ((a[0] + b[0]) / 2 * 0.85 + cx * 0.15, (a[1] + b[1]) / 2 * 0.85 + cy * 0.15)  # sags inwards
                rings.append([a, mid, b])
    splinters = [(rng.uniform(0, 6.3), rng.uniform(0.05, 0.2) * r) for _ in range(25)]
    strokes = [(pts, 255, 2) for pts in rays] + [(pts, 200, 1) for pts in rings]  # (points, grey level, width)
    strokes += [([(cx, cy), (cx + s * math.cos(a), cy + s * math.sin(a))], 180, 1) for a, s in splinters]
    crush = 0.06 * r

    def draw(d: ImageDraw.ImageDraw) -> None:
        for pts, fill, width in strokes:
            d.line(pts, fill=fill, width=width)
        d.ellipse((cx - crush, cy - crush, cx + crush, cy + crush), fill=230)

    c.over(c.mask(draw, 0.4) * clip, colour)


def _door(c: _Canvas, p: dict, dent: bool = False) -> tuple:
    """A side door (window, gaps, handle, character line, sill), dented if asked; the damage region (in view)."""
    rng = c.rng
    _background(c)
    belt, sill = rng.uniform(0.3, 0.38), rng.uniform(0.85, 0.9)
    gaps = (rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95))
    region = (max(gaps[0] + 0.12, 0.3), belt + 0.14, min(gaps[1] - 0.12, 0.7), 0.68)
    sky = 0.35 * np.clip(1 - c.y / belt, 0, 1)
    c.over(c.rect(0, -0.1, 1, belt, 0), np.array([0.10, 0.12, 0.15]) + sky[..., None] * [0.8, 0.9, 1.0])
    c.over(c.rect(0, belt, 1, sill, 0.5), _paint(c, p, _dent_field(c, region) if dent else None))
    trim = (0.75, 0.77, 0.8) if rng.random() < 0.4 else (0.05, 0.05, 0.06)  # chrome or black
    c.over(c.rect(0, belt - 0.012, 1, belt + 0.02, 0.5), trim)
    crease = rng.uniform(0.45, 0.6)  # the character line: lit above, shadowed below
    c.over(c.rect(0, crease - 0.008, 1, crease, 1.0) * 0.5, (1, 1, 1))
    c.over(c.rect(0, crease, 1, crease + 0.01, 1.0) * 0.35, (0, 0, 0))
    for g in gaps:
        c.over(c.rect(g, -0.1, g + 0.006, sill, 0.4), (0.03, 0.03, 0.03))
    hu, hv = gaps[1] - rng.uniform(0.12, 0.18), belt + rng.uniform(0.06, 0.1)
    c.over(c.ellipse(hu, hv + 0.03, 0.11, 0.04, 3.0) * 0.7, (0, 0, 0))  # the recess behind the handle
    handle = c.polygon([(hu - 0.08, hv), (hu + 0.08, hv), (hu + 0.075, hv + 0.045), (hu - 0.075, hv + 0.045)], 1.0)
    c.over(handle, (0.8, 0.82, 0.85) if rng.random() < 0.4 else _paint(c, p) * 0.9 + 0.04)
    c.over(c.rect(hu - 0.075, hv, hu + 0.075, hv + 0.01), (0.97, 0.97, 0.97))
    c.over(c.rect(hu - 0.07, hv + 0.038, hu + 0.07, hv + 0.05), (0.02, 0.02, 0.02))
    c.over(c.rect(0, sill, 1, sill + 0.05, 0.5), (0.06, 0.06, 0.07))
    return region


def _bumper(c: _Canvas, p: dict, dent: bool = False) -> tuple:
    """A bumper (seam, curved paint, mesh intake, maybe a plate), dented if asked; the damage region (in view)."""
    rng = c.rng
    _background(c)
    seam, intake, lip = rng.uniform(0.2, 0.26), rng.uniform(0.6, 0.66), rng.uniform(0.78, 0.82)
    left, right = rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95)
    plate, side = rng.random() < 0.5, (1 if rng.random() < 0.5 else -1)  # plate right or left of the damage
    pu, pv = 0.5 + side * rng.uniform(0.08, 0.16), rng.uniform(seam + 0.14, intake - 0.14)
    u0, u1 = (0.3, 0.7) if not plate else (0.3, pu - 0.2) if side == 1 else (pu + 0.2, 0.7)
    region = (u0, seam + 0.12, u1, intake - 0.08)
    c.over(c.rect(0, -0.1, 1, seam, 0), _paint(c, p))
    t = np.clip((c.y - seam) / (lip - seam), 0, 1)
    curve = 1.15 - 0.55 * t**2 + 0.35 * np.exp(-(((c.y - seam - 0.04) / 0.015) ** 2))  # rolled top edge
    c.over(c.rect(0, seam, 1, lip, 0.5), _paint(c, p, _dent_field(c, region) if dent else None, curve))
    c.over(c.rect(0, seam - 0.004, 1, seam + 0.004, 0.5), (0.02, 0.02, 0.02))
    box = (*c.px(left, intake), *c.px(right, lip - 0.05))
    mesh = (0.05 + 0.06 * ((np.sin(c.x * c.w / 2.2) * np.sin(c.y * c.h / 2.2)) > 0.3))[..., None].repeat(3, axis=2)
    c.over(c.mask(lambda d: d.rounded_rectangle(box, radius=int(0.05 * c.h), fill=255)), mesh)
    if plate:
        c.over(c.rect(pu - 0.1, pv, pu + 0.1, pv + 0.1), (1.0, 0.85, 0.1) if rng.random() < 0.3 else (0.93, 0.93, 0.9))
        for k in range(6):  # characters
            x0 = pu - 0.084 + k * 0.028
            c.over(c.rect(x0, pv + 0.02, x0 + 0.017, pv + 0.08), (0.08, 0.08, 0.1))
    c.over(c.rect(0, lip, 1, lip + 0.05, 0.5), (0.05, 0.05, 0.05))
    return region


def _body(c: _Canvas, p: dict) -> None:
    """Plain painted body with one curved panel gap (bonnet or boot-lid edge)."""
    _background(c)
    c.over(np.ones_like(c.x), _paint(c, p))
    v0, bow = c.rng.uniform(0.12, 0.22), c.rng.uniform(-0.06, 0.06)
    pts = [c.px(u, v0 + bow * (1 - (2 * u - 1) ** 2)) for u in np.linspace(-0.05, 1.05, 24)]
    c.over(c.mask(lambda d: d.line(pts, fill=255, width=3), 0.6), (0.02, 0.02, 0.02))


def _broken_lamp(c: _Canvas, tail: bool) -> None:
    """A head lamp (chrome, projectors, strip) or tail lamp (red ribs, amber, reverse) with a cracked lens, usually
    with a piece missing."""
    rng = c.rng
    _body(c, _paint_params(rng))
    u, v = rng.uniform(0.4, 0.6), rng.uniform(0.42, 0.55)
    w, h = rng.uniform(0.45, 0.65), rng.uniform(0.2, 0.3)
    n, shear, taper = rng.uniform(2.5, 5), rng.uniform(-0.25, 0.25), rng.uniform(-0.3, 0.3)
    outline = []
    for a in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        x = math.copysign(abs(math.cos(a)) ** (2 / n), math.cos(a)) * w / 2
        y = math.copysign(abs(math.sin(a)) ** (2 / n), math.sin(a)) * h / 2 * (1 + taper * x / w * 2)
        outline.append((u + x + shear * y, v + y))
    c.over(c.polygon([(u + (x - u) * 1.06, v + (y - v) * 1.12) for x, y in outline]), (0.04, 0.04, 0.05))
    lens = c.polygon(outline)
    r = np.sqrt(((c.x - u) / w) ** 2 + ((c.y - v) / h) ** 2)
    if tail:
        glow = np.exp(-3 * r**2)
        ribs = 0.85 + 0.15 * np.sin(c.y * c.h / 1.6)
        c.over(lens, np.stack([0.45 + 0.5 * glow, 0.03 + 0.06 * glow, 0.04 + 0.02 * r], -1) * ribs[..., None])
        split = u + rng.uniform(-0.2, 0.2) * w
        side = c.x > split if rng.random() < 0.5 else c.x < split
        c.over(lens * side * (np.abs(c.y - v) < h * 0.18), (0.95, 0.5, 0.05))  # indicator
        c.over(lens * side * (np.abs(c.y - v - h * 0.3) < h * 0.1), (0.85, 0.85, 0.85))  # reverse light
    else:
        chrome = 0.45 + 0.45 * np.exp(-2 * r**2)
        c.over(lens, np.stack([chrome * 0.95, chrome * 0.97, chrome], -1))
        for k in range(int(rng.integers(1, 3))):
            pu = u + (k - 0.5) * w * 0.35 + rng.uniform(-0.03, 0.03)
            c.over(c.ellipse(pu, v, 0.4 * h, 0.4 * h) * lens, (0.1, 0.1, 0.12))  # projector housing
            c.over(c.ellipse(pu, v, 0.24 * h, 0.24 * h) * lens, (0.85, 0.92, 1.0))  # its lens
        strip = c.mask(lambda d: d.line([c.px(x, y) for x, y in outline[6:20]], fill=255, width=5), 1.0)
        c.over(strip * lens, (0.97, 0.99, 1.0))  # daytime running light
    iu, iv = u + rng.uniform(-0.2, 0.2) * w, v + rng.uniform(-0.2, 0.2) * h
    _cracks(c, iu, iv, rng.uniform(0.15, 0.3), clip=lens, colour=(0.95, 0.8, 0.8) if tail else (0.9, 0.92, 0.94))
    if rng.random() < 0.8:  # a jagged missing piece: dark lamp interior inside a bright broken edge
        radius, n = rng.uniform(0.05, 0.1), int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = radius * rng.uniform(0.45, 1.0, n)
        pts = [(iu + rr * math.cos(a) * c.h / c.w, iv + rr * math.sin(a)) for a, rr in zip(angles, radii)]
        edge = c.mask(lambda d: d.line([c.px(*p) for p in pts + pts[:1]], fill=255, width=3), 0.5)
        c.over(edge * lens, (0.85, 0.85, 0.85))
        c.over(c.polygon(pts, 0.5) * lens, (0.04, 0.04, 0.05))


def _wheel(c: _Canvas, p: dict) -> None:
    """A wheel in its arch: tyre, alloy rim with spoke windows, hub."""
    rng = c.rng
    _background(c)
    c.over(c.rect(-0.1, -0.1, 1.1, 0.75), _paint(c, p))
    u, v = rng.uniform(0.4, 0.6), rng.uniform(0.6, 0.7)
    c.over(c.ellipse(u, v, 0.45, 0.45), (0.03, 0.03, 0.03))  # arch
    c.over(c.ellipse(u, v + 0.03, 0.4, 0.4), (0.08, 0.08, 0.08))  # tyre
    rim = 0.6 + 0.3 * np.exp(-((((c.x - u) * c.w / c.h) ** 2 + (c.y - v - 0.03) ** 2) / 0.04))
    c.over(c.ellipse(u, v + 0.03, 0.27, 0.27), np.repeat(rim[..., None], 3, axis=2))
    cx, cy = c.px(u, v + 0.03)
    rr, first, n = 0.22 * c.h, rng.uniform(0, 72), int(rng.integers(5, 7))
    windows = [(first + k * 360 / n, first + (k + 0.62) * 360 / n) for k in range(n)]
    box = (cx - rr, cy - rr, cx + rr, cy + rr)
    c.over(c.mask(lambda d: [d.pieslice(box, a, b, fill=255) for a, b in windows]), (0.06, 0.06, 0.07))
    c.over(c.ellipse(u, v + 0.03, 0.07, 0.07), (0.55, 0.56, 0.58))  # hub


def _glass_shatter(c: _Canvas) -> None:
    """Windscreen or side window (dark glass, sky reflection) with one or two impact webs."""
    rng = c.rng
    _body(c, _paint_params(rng))
    top, bottom = rng.uniform(0.05, 0.15), rng.uniform(0.82, 0.92)
    inset, skew = rng.uniform(0.0, 0.12), rng.uniform(-0.1, 0.1)
    frame = [(0.02 + inset + skew, top), (0.98 - inset + skew, top), (1.02, bottom), (-0.02, bottom)]
    c.over(c.polygon(frame), (0.03, 0.03, 0.03))  # black frit border
    glass = c.polygon([(0.05 + inset + skew, top + 0.04), (0.95 - inset + skew, top + 0.04),
                       (0.99, bottom - 0.04), (0.01, bottom - 0.04)])
    sky = np.clip(1 - (c.y - top) / (bottom - top), 0, 1) ** 1.5
    streak = np.exp(-(((c.x - 0.5 * c.y - rng.uniform(0, 0.8)) / 0.06) ** 2)) * rng.uniform(0.05, 0.2)
    c.over(glass, np.array([0.10, 0.12, 0.15]) + (0.35 * sky + streak)[..., None] * [0.75, 0.85, 1.0])
    for k in range(1 if rng.random() < 0.75 else 2):
        u, v = rng.uniform(0.3, 0.7), rng.uniform(top + 0.2, bottom - 0.25)
        _cracks(c, u, v, rng.uniform(0.25, 0.45) * (1 if k == 0 else 0.6), clip=glass)


def _unknown(c: _Canvas) -> None:
    """No damage: an intact door or bumper, or a wheel."""
    p = _paint_params(c.rng)
    kind = c.rng.choice(["door", "bumper", "wheel"], p=[0.4, 0.4, 0.2])
    {"door": _door, "bumper": _bumper, "wheel": _wheel}[str(kind)](c, p)


DRAWERS: dict[str, Callable[[_Canvas], None]] = {  # dents: shaded depressions that bend the reflections
    "bumper_dent": lambda c: _bumper(c, _paint_params(c.rng), dent=True),
    "bumper_scratch": lambda c: _scratches(c, _bumper),
    "door_dent": lambda c: _door(c, _paint_params(c.rng), dent=True),
    "door_scratch": lambda c: _scratches(c, _door),
    "glass_shatter": _glass_shatter,
    "head_lamp": lambda c: _broken_lamp(c, tail=False),
    "tail_lamp": lambda c: _broken_lamp(c, tail=True),
    "unknown": _unknown,
}


def render(label: str, rng: np.random.Generator) -> Image.Image:
    """Draw one picture of a class: scene, lighting change, rotation, shift and zoom, sensor noise."""
    c = _Canvas(rng)
    DRAWERS[label](c)
    gain, warm = rng.uniform(0.7, 1.2), rng.uniform(-0.08, 0.08)
    vignette = 1 - rng.uniform(0, 0.35) * ((c.x - 0.5) ** 2 + (c.y - 0.5) ** 2) * 2
    img = c.img * gain * np.array([1 + warm, 1, 1 - warm], np.float32) * vignette[..., None]
    pic = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    angle = rng.uniform(-7, 7)
    pic = pic.rotate(angle, resample=Image.Resampling.BICUBIC)
    zoom = rng.uniform(0.8, 1.0)
    vw, vh = IMAGE_SIZE[0] * _SS * zoom, IMAGE_SIZE[1] * _SS * zoom
    rad = math.radians(abs(angle))  # the rotated view must stay inside the canvas
    ext_w, ext_h = vw * math.cos(rad) + vh * math.sin(rad), vh * math.cos(rad) + vw * math.sin(rad)
    cx = c.w / 2 + rng.uniform(-0.5, 0.5) * max(0.0, (c.w - ext_w) / 2 - 1)  # the central 26-74 % of
    cy = c.h / 2 + rng.uniform(-0.5, 0.5) * max(0.0, (c.h - ext_h) / 2 - 1)  # the canvas is always in view
    pic = pic.resize(IMAGE_SIZE, Image.Resampling.LANCZOS, box=(cx - vw / 2, cy - vh / 2, cx + vw / 2, cy + vh / 2))
    arr = np.asarray(pic, np.float32)
    sigma = rng.uniform(1.5, 4.5)
    noise = rng.normal(0, sigma, arr.shape[:2] + (1,)) + rng.normal(0, sigma * 0.4, arr.shape)
    return Image.fromarray(np.clip(arr + noise + 0.5, 0, 255).astype(np.uint8))


