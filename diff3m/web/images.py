"""PNG images for the web UI: the source radiograph, and the same with the anomaly map overlaid."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from diff3m.db.models import InferenceResult
from diff3m.node.storage import resolve
from diff3m.records import Roi, ScoreResult

THUMB_PX = 256
VIEW_PX = 1024


class ImageUnavailable(LookupError):
    """The study has no image (or no result) to draw, or the stored file cannot be decoded."""


@dataclass(frozen=True)
class Source:
    """What to draw: the stored instance file and, when evaluated, the result with its anomaly map."""

    path: Path
    result: StoredResult | None = None

    def score_result(self, rows: int, columns: int) -> ScoreResult:
        """The stored result as the renderer's ScoreResult, its map at the source's size."""
        assert self.result is not None
        r = self.result
        amap = source_map(r.anomaly_map, rows, columns) if r.anomaly_map is not None \
            else np.zeros((rows, columns), np.float32)
        return ScoreResult(score=r.score, abnormal=r.abnormal, threshold=r.threshold, anomaly_map=amap,
                           scores={}, roi=r.roi, model_name=r.model_name, model_version=r.model_version,
                           ehr_used=r.ehr_used, seconds=0.0)


@dataclass(frozen=True)
class StoredResult:
    """The parts of an ``InferenceResult`` row the images need (read inside the session)."""

    score: float
    abnormal: bool
    threshold: float
    model_name: str
    model_version: str
    ehr_used: bool
    anomaly_map: np.ndarray | None
    roi: Roi | None


def load_map(data: bytes | None) -> np.ndarray | None:
    """An anomaly map stored as .npy bytes (``InferenceResult.map_data``), as float32."""
    if not data:
        return None
    try:
        m = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ImageUnavailable(f"stored anomaly map is unreadable: {err}") from None
    if m.ndim != 2 or 0 in m.shape:
        raise ImageUnavailable(f"stored anomaly map has shape {m.shape}, expected rows x columns")
    return np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def load_map_file(storage_dir: Path, relpath: str | None) -> np.ndarray | None:
    """An anomaly map stored as a .npy file under storage_dir (``InferenceResult.map_path``)."""
    if not relpath:
        return None
    path = resolve(storage_dir, relpath)
    if not path.is_file():
        return None
    return load_map(path.read_bytes())


def stored_result(row: InferenceResult, storage_dir: Path) -> StoredResult:
    """Read what the images need from an ``InferenceResult`` row (map from map_data or map_path)."""
    amap = load_map(row.map_data) if row.map_data else load_map_file(storage_dir, row.map_path)
    r = row.roi or {}
    roi = None
    if {"x", "y", "width", "height"} <= set(r):
        roi = Roi(int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"]))
    return StoredResult(score=row.score, abnormal=row.abnormal, threshold=row.threshold,
                        model_name=row.model_name, model_version=row.model_version, ehr_used=row.ehr_used,
                        anomaly_map=amap, roi=roi)


def _dataset(path: Path) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 - an unreadable file means "cannot show it"
        raise ImageUnavailable(f"cannot read the stored image: {type(err).__name__}") from None


def _gray(ds: Dataset) -> np.ndarray:
    from diff3m.pipeline.outputs.render import display_gray

    try:
        return display_gray(ds)
    except ValueError as err:  # SourceError: no or undecodable pixels
        raise ImageUnavailable(str(err)) from None


def _fit(img: Image.Image, max_px: int) -> Image.Image:
    img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return img


def source_map(amap: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The stored (possibly smaller) anomaly map resized, nearest neighbour, to the source's size."""
    ri = np.minimum((np.arange(rows) * amap.shape[0] / rows).astype(int), amap.shape[0] - 1)
    ci = np.minimum((np.arange(columns) * amap.shape[1] / columns).astype(int), amap.shape[1] - 1)
    return np.asarray(amap[ri][:, ci], dtype=np.float32)


def plain(ds: Dataset, max_px: int) -> Image.Image:
    """The radiograph windowed to 8-bit grayscale (MONOCHROME1 inverted), fitted into ``max_px``."""
    return _fit(Image.fromarray(np.round(_gray(ds) * 255).astype(np.uint8), mode="L"), max_px)


def captioned_overlay(ds: Dataset, result: ScoreResult, max_px: int) -> Image.Image:
    """The overlay exactly as the heatmap secondary capture shows it (caption and ROI burned in)."""
    from diff3m.pipeline.outputs.render import render_overlay

    try:
        return Image.fromarray(render_overlay(ds, result, max_side=max_px).rgb, mode="RGB")
    except ValueError as err:
        raise ImageUnavailable(str(err)) from None


def thumbnail_overlay(ds: Dataset, result: ScoreResult, max_px: int) -> Image.Image:
    """A small overlay without burned text (unreadable at worklist size), same colours as the SC."""
    from diff3m.pipeline.outputs import render

    gray = _gray(ds)
    norm = render.normalised_map(result.anomaly_map, gray.shape)
    size = _fit(Image.new("L", (gray.shape[1], gray.shape[0])), max_px).size
    gray = np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX))
    norm = np.asarray(Image.fromarray(norm, mode="F").resize(size, Image.Resampling.BOX))
    alpha = render.ALPHA_MAX * np.clip((norm - render.ALPHA_FLOOR) / (1.0 - render.ALPHA_FLOOR), 0.0, 1.0)
    colour = render._lut()[np.round(np.clip(norm, 0, 1) * 255).astype(np.intp)]
    rgb = gray[..., None] * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return Image.fromarray(np.round(rgb * 255).clip(0, 255).astype(np.uint8), mode="RGB")


def render_png(src: Source, kind: str, max_px: int) -> bytes:
    """PNG bytes of ``kind``: "original", "heatmap" (captioned overlay) or "thumbnail" (small overlay)."""
    if not src.path.is_file():
        raise ImageUnavailable("the stored image file is missing")
    ds = _dataset(src.path)
    if kind == "original" or src.result is None:
        if kind == "heatmap":
            raise ImageUnavailable("the study has no anomaly map yet")
        img = plain(ds, max_px)
    else:
        result = src.score_result(int(ds.Rows), int(ds.Columns))
        draw = captioned_overlay if kind == "heatmap" else thumbnail_overlay
        img = draw(ds, result, max_px)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class PngCache:
    """A small thread-safe LRU of rendered PNGs keyed by what they were drawn from."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def peek(self, key: tuple[object, ...]) -> bytes | None:
        """The cached PNG for ``key``, or None."""
        with self._lock:
            return self._items.get(key)

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
