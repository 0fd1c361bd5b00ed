"""PNG images for the web UI: the source radiograph, and the same with the anomaly map overlaid."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diff3m.node.storage import resolve

THUMB_PX = 256
VIEW_PX = 1024


class ImageUnavailable(LookupError):
    """The study has no image (or no result) to draw, or the stored file cannot be decoded."""


@dataclass(frozen=True)
class Source:
    """What to draw: the stored instance file and, when evaluated, the anomaly map and ROI."""

    path: Path
    anomaly_map: np.ndarray | None = None  # float, any resolution, >= 0
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in source pixels


def load_map(data: bytes | None) -> np.ndarray | None:
    """An anomaly map stored as .npy bytes (``InferenceResult.map_data``), as float32."""
    if not data:
        return None
    try:
        m = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ImageUnavailable(f"stored anomaly map is unreadable: {err}") from None
    return np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def load_map_file(storage_dir: Path, relpath: str | None) -> np.ndarray | None:
    """An anomaly map stored as a .npy file under storage_dir (``InferenceResult.map_path``)."""
    if not relpath:
        return None
    path = resolve(storage_dir, relpath)
    if not path.is_file():
        return None
    return load_map(path.read_bytes())


def grayscale(path: Path, max_px: int = VIEW_PX) -> Image.Image:
    """The radiograph as 8-bit grayscale for display (modality + VOI LUT, MONOCHROME1 inverted)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder failure means "cannot show it"
        raise ImageUnavailable(f"cannot decode the stored image: {type(err).__name__}") from None
    if arr.ndim == 3 and arr.shape[-1] == 3:  # colour secondary capture: show as is
        img = Image.fromarray(arr.astype(np.uint8)).convert("L")
    else:
        if arr.ndim == 3:
            arr = arr[0]
        data = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            try:
                data = apply_voi_lut(data, ds)
            except Exception:  # noqa: BLE001 - a broken window falls back to percentiles
                pass
        data = np.asarray(data, dtype=np.float32)
        lo, hi = np.percentile(data, (0.5, 99.5))
        if hi <= lo:
            hi = lo + 1.0
        norm = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            norm = 1.0 - norm
        img = Image.fromarray((norm * 255).astype(np.uint8), mode="L")
    img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return img


def _colormap() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def overlay(base: Image.Image, amap: np.ndarray, source_shape: tuple[int, int],
            roi: tuple[int, int, int, int] | None) -> Image.Image:
    """``base`` with the anomaly map as a colour overlay (alpha rises with the map) and the ROI box."""
    w, h = base.size
    m = np.asarray(amap, dtype=np.float32)
    m = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    top = float(np.percentile(m, 99.9)) if m.size else 0.0
    norm = np.clip(m / top, 0.0, 1.0) if top > 0 else np.zeros_like(m)
    rgb = _colormap()[(norm * 255).astype(np.uint8)]
    alpha = np.where(norm > 0.25, 0.15 + 0.55 * norm, 0.0)[..., None]
    gray = np.asarray(base.convert("RGB"), dtype=np.float32)
    out = Image.fromarray((gray * (1 - alpha) + rgb * alpha).astype(np.uint8), mode="RGB")
    if roi is not None:
        rows, cols = source_shape
        sx, sy = w / max(cols, 1), h / max(rows, 1)
        x, y, rw, rh = roi
        ImageDraw.Draw(out).rectangle(
            [x * sx, y * sy, (x + rw) * sx, (y + rh) * sy], outline=(255, 255, 255), width=max(1, w // 256)
        )
    return out


def _source_shape(path: Path) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def render_png(src: Source, heatmap: bool, max_px: int) -> bytes:
    """The source (``heatmap=False``) or the overlay, fitted into ``max_px``, as PNG bytes."""
    if not src.path.is_file():
        raise ImageUnavailable("the stored image file is missing")
    base = grayscale(src.path, max_px)
    if heatmap:
        if src.anomaly_map is None:
            raise ImageUnavailable("the study has no anomaly map yet")
        img = overlay(base, src.anomaly_map, _source_shape(src.path), src.roi)
    else:
        img = base
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class PngCache:
    """A small thread-safe LRU of rendered PNGs keyed by what they were drawn from."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        """The cached PNG for ``key``, drawing it with ``make`` on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        png = make()
        with self._lock:
            self._items[key] = png
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return png
