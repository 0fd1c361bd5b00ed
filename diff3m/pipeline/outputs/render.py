"""The heatmap overlay image: the source windowed to 8-bit with the anomaly map in colour, text burned in.

Used for the DICOM secondary capture (``heatmap.py``) and, as PNG bytes plus a thumbnail, for the
web worklist. Everything is drawn in source pixel coordinates and then downsampled together, so
the overlay, the ROI box and the image always line up.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from diff3m.pipeline.outputs.reference import SourceError
from diff3m.records import ScoreResult

MAX_SIDE = 2048  # long side of the rendered overlay (large detectors are downsampled)
WEB_MAX_SIDE = 1024  # long side of the web UI's overlay PNG
THUMBNAIL_SIDE = 256
DISCLAIMER = "AI result, not a diagnosis"
COLORMAP = "jet"
ALPHA_MAX = 0.6  # opacity of the hottest overlay pixels
ALPHA_FLOOR = 0.25  # normalised map values below this stay fully transparent
ROI_COLOUR = (255, 255, 255)
STRENGTH_MIN = 0.2  # overlay opacity factor for a score far below the threshold


@dataclass(frozen=True)
class Overlay:
    """A rendered overlay: RGB uint8 pixels and the scale from source pixels to overlay pixels."""

    rgb: np.ndarray  # uint8, rows x columns x 3
    scale: float  # overlay pixels per source pixel (<= 1)

    def png(self) -> bytes:
        """The overlay as PNG bytes."""
        return _png(Image.fromarray(self.rgb, mode="RGB"))

    def thumbnail_png(self, side: int = THUMBNAIL_SIDE) -> bytes:
        """A small PNG (long side ``side``) for worklist rows."""
        img = Image.fromarray(self.rgb, mode="RGB")
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        return _png(img)

    def pngs(self, max_side: int = WEB_MAX_SIDE) -> RenderedPngs:
        """The web UI's PNGs from this overlay (downsized to ``max_side``), without re-rendering."""
        img = Image.fromarray(self.rgb, mode="RGB")
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        small = Overlay(np.asarray(img, dtype=np.uint8), self.scale * img.size[0] / self.rgb.shape[1])
        return RenderedPngs(small.png(), small.thumbnail_png(), width=img.size[0], height=img.size[1])


@dataclass(frozen=True)
class RenderedPngs:
    """The web UI's images of one result."""

    overlay: bytes
    thumbnail: bytes
    width: int
    height: int


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # noisy radiographs barely compress; favour speed
    return buf.getvalue()


def _first_float(value: object) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first valid (center, width) of the source's VOI window, if it has one."""
    c, w = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    if c is None or w is None or w < 1:
        return None
    return c, w


def display_gray(source: Dataset) -> np.ndarray:
    """The source as float32 in [0, 1], bright = dense (MONOCHROME1 sources are inverted)."""
    try:
        raw = source.pixel_array
    except Exception as exc:  # pydicom raises many types for missing / undecodable pixel data
        raise SourceError(f"cannot decode the source pixel data: {type(exc).__name__}: {exc}") from exc
    if raw.ndim == 3 and int(source.get("SamplesPerPixel", 1)) == 3:
        raw = raw.astype(np.float32).mean(axis=2)
    if raw.ndim != 2:
        raise SourceError(f"expected a single-frame image, got pixel array shape {raw.shape}")
    arr = np.asarray(apply_modality_lut(raw, source), dtype=np.float32)
    window = _window(source)
    if window is not None:
        c, w = window
        out = (arr - (c - 0.5 - (w - 1) / 2)) / (w - 1 if w > 1 else 1.0)
    else:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    out = np.clip(out, 0.0, 1.0)
    if str(source.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


@cache
def _lut(name: str = COLORMAP) -> np.ndarray:
    """A 256 x 3 float32 colour table from matplotlib."""
    import matplotlib

    return np.asarray(matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32)


def normalised_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The anomaly map scaled to [0, 1] by its 99.9th percentile; checks it matches the source."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape != shape:
        raise ValueError(f"anomaly map shape {m.shape} does not match the source image {shape}")
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    top = float(np.percentile(m, 99.9)) if m.size else 0.0
    if top <= 0.0:
        top = float(m.max())
    return np.clip(m / top, 0.0, 1.0) if top > 0.0 else np.zeros_like(m)


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float image to (width, height) with area averaging."""
    img = Image.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.float32)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption(result: ScoreResult) -> list[str]:
    """The lines burned into the overlay."""
    verdict = "ABNORMAL" if result.abnormal else "normal"
    return [
        f"Diff3M {result.model_version}: {verdict}",
        f"anomaly score {result.score:.3f} (threshold {result.threshold:.3f})",
        DISCLAIMER,
    ]


def _burn_text(img: Image.Image, lines: list[str]) -> None:
    draw = ImageDraw.Draw(img)
    long_side = max(img.size)
    font = _font(max(10, round(long_side / 42)))
    pad = max(2, round(long_side / 200))
    y: float = pad
    boxes = [draw.textbbox((pad, 0), line, font=font) for line in lines]
    height = sum(b[3] - b[1] for b in boxes) + pad * (len(lines) + 1)
    width = max(b[2] for b in boxes) + pad
    draw.rectangle((0, 0, min(width + pad, img.size[0] - 1), min(height, img.size[1] - 1)), fill=(0, 0, 0))
    for line, box in zip(lines, boxes, strict=True):
        draw.text((pad, y - box[1]), line, font=font, fill=(255, 255, 0) if line == DISCLAIMER
                  else (255, 255, 255))
        y += box[3] - box[1] + pad


def overlay_strength(result: ScoreResult) -> float:
    """How strongly to paint the map: full at or above the threshold, faint well below it.

    The map is normalised per image, so without this a normal study's noise would look as hot as
    a finding; scaling opacity by score / threshold keeps normal studies quiet.
    """
    if result.threshold <= 0:
        return 1.0
    return float(np.clip(result.score / result.threshold, STRENGTH_MIN, 1.0))


def render_overlay(source: Dataset, result: ScoreResult, max_side: int = MAX_SIDE) -> Overlay:
    """The source image (8-bit display) with the anomaly map in colour, ROI box and caption."""
    gray = display_gray(source)
    rows, cols = gray.shape
    norm = normalised_map(result.anomaly_map, (rows, cols))
    scale = min(1.0, max_side / max(rows, cols))
    if scale < 1.0:
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        gray, norm = _resize(gray, size), _resize(norm, size)
    ramp = np.clip((norm - ALPHA_FLOOR) / (1.0 - ALPHA_FLOOR), 0.0, 1.0)
    alpha = overlay_strength(result) * ALPHA_MAX * ramp
    colour = _lut()[np.round(norm * 255).astype(np.intp)]
    rgb = gray[..., None] * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    img = Image.fromarray(np.round(rgb * 255).clip(0, 255).astype(np.uint8), mode="RGB")
    if result.roi is not None:
        r = result.roi
        x0, y0 = r.x * scale, r.y * scale
        x1, y1 = (r.x + r.width) * scale - 1, (r.y + r.height) * scale - 1
        line = max(1, round(max(img.size) / 400))
        ImageDraw.Draw(img).rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=ROI_COLOUR, width=line)
    _burn_text(img, caption(result))
    return Overlay(np.asarray(img, dtype=np.uint8).copy(), scale)


def render_pngs(source: Dataset, result: ScoreResult, max_side: int = WEB_MAX_SIDE) -> RenderedPngs:
    """The overlay as PNG plus a thumbnail, for the web UI."""
    return render_overlay(source, result, max_side=max_side).pngs(max_side)
