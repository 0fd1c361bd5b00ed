"""Image preprocessing: DICOM (LUTs, window, MONOCHROME1) or JPG/PNG -> [0, 1] grey; model-grid geometry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import Dataset

from diff3m.records import Roi


class PreprocessError(ValueError):
    """The image cannot be turned into a grey radiograph."""


@dataclass(frozen=True)
class PreparedImage:
    """A grey radiograph in [0, 1] at source resolution, with what is needed to map results back."""

    pixels: np.ndarray  # float32 [rows, columns], 0 = black (air), 1 = white (bone)
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm; None if absent/zero/invalid
    source: str = ""  # "dicom" or the file suffix

    @property
    def rows(self) -> int:
        """Source rows."""
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        """Source columns."""
        return int(self.pixels.shape[1])

    def to_grid(self, size: int) -> tuple[np.ndarray, Geometry]:
        """Aspect-preserving resize (physical aspect per the spacing), centred zero pad to size x size."""
        geo = Geometry.fit(self.rows, self.columns, size, self.pixel_spacing)
        img = torch.from_numpy(np.ascontiguousarray(self.pixels, dtype=np.float32))[None, None]
        small = F.interpolate(
            img,
            size=(geo.content_rows, geo.content_cols),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0, 0].clamp(0, 1)
        grid = np.zeros((size, size), dtype=np.float32)
        grid[geo.top : geo.top + geo.content_rows, geo.left : geo.left + geo.content_cols] = small.numpy()
        return grid, geo


@dataclass(frozen=True)
class Geometry:
    """Where the source image sits inside the square model grid."""

    source_rows: int
    source_cols: int
    size: int
    content_rows: int
    content_cols: int
    top: int
    left: int

    @classmethod
    def fit(cls, rows: int, cols: int, size: int, spacing: tuple[float, float] | None = None) -> Geometry:
        """Largest centred box of the source's (physical) aspect ratio inside size x size."""
        height, width = float(rows), float(cols)
        if spacing is not None:
            height, width = rows * spacing[0], cols * spacing[1]
        scale = size / max(height, width)
        cr = min(size, max(1, round(height * scale)))
        cc = min(size, max(1, round(width * scale)))
        return cls(rows, cols, size, cr, cc, (size - cr) // 2, (size - cc) // 2)

    def content(self, grid: np.ndarray) -> np.ndarray:
        """The part of a size x size array that covers the source image."""
        return grid[self.top : self.top + self.content_rows, self.left : self.left + self.content_cols]

    def to_source(self, grid: np.ndarray) -> np.ndarray:
        """A size x size map resampled to the source's rows x columns (bilinear), float32."""
        part = torch.from_numpy(np.ascontiguousarray(self.content(grid), dtype=np.float32))[None, None]
        full = F.interpolate(
            part, size=(self.source_rows, self.source_cols), mode="bilinear", align_corners=False
        )
        return full[0, 0].numpy()

    def box_to_source(self, r0: int, c0: int, r1: int, c1: int) -> Roi:
        """A grid box (inclusive-exclusive rows/columns) in source pixel coordinates, clipped to the image."""
        sy = self.source_rows / self.content_rows
        sx = self.source_cols / self.content_cols
        y0 = int(np.floor((r0 - self.top) * sy))
        x0 = int(np.floor((c0 - self.left) * sx))
        y1 = int(np.ceil((r1 - self.top) * sy))
        x1 = int(np.ceil((c1 - self.left) * sx))
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(self.source_rows, max(y1, y0 + 1)), min(self.source_cols, max(x1, x0 + 1))
        return Roi(x=x0, y=y0, width=x1 - x0, height=y1 - y0)


def prepare_dicom(ds: Dataset) -> PreparedImage:
    """A DICOM image (CR/DX/...) as grey [0, 1]: modality LUT, VOI LUT or window, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PreprocessError("the dataset has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as err:  # decoder missing, truncated data, ...
        raise PreprocessError(f"cannot decode pixel data: {err}") from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if arr.ndim == (4 if samples > 1 else 3):  # several frames (declared or inferred): the first
        arr = arr[0]
    if arr.ndim != (3 if samples > 1 else 2) or arr.size == 0:
        raise PreprocessError(f"unexpected pixel array shape {arr.shape} for {samples} sample(s) per pixel")
    if samples > 1:
        try:
            grey = _minmax(_luminance(arr, ds))
        except (ValueError, TypeError, IndexError) as err:  # samples/photometric that do not match
            raise PreprocessError(f"cannot convert colour pixel data: {err}") from err
        return PreparedImage(grey.astype(np.float32), pixel_spacing(ds), "dicom")
    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception:  # malformed rescale / modality LUT values: the stored values, windowed below
        values = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(values).all():  # NaN / infinite rescale values
        values = np.asarray(arr, dtype=np.float64)
    out: np.ndarray | None = None
    if "VOILUTSequence" in ds:
        try:
            lut_in = np.rint(values).astype(np.int64) if np.all(values == np.rint(values)) else values
            out = _minmax(np.asarray(apply_voi_lut(lut_in, ds, index=0), dtype=np.float64))
        except Exception:  # malformed LUT: fall back to window or min-max
            out = None
    if out is None:
        out = _window(values, ds)
    if out is None:
        out = _minmax(values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return PreparedImage(out.astype(np.float32), pixel_spacing(ds), "dicom")


def prepare_array(pixels: np.ndarray, pixel_spacing_mm: tuple[float, float] | None = None) -> PreparedImage:
    """A 2-D array already in [0, 1] (phantoms, tests)."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise PreprocessError(f"expected a 2-D image, got shape {arr.shape}")
    return PreparedImage(np.clip(arr, 0, 1), pixel_spacing_mm, "array")


def load_image(path: str | Path) -> PreparedImage:
    """A JPG/PNG (8 or 16 bit, grey or colour) or DICOM file as a prepared image."""
    path = Path(path)
    if path.suffix.lower() in {".dcm", ".dicom", ""}:
        import pydicom

        try:
            return prepare_dicom(pydicom.dcmread(path))
        except PreprocessError:
            raise
        except Exception as err:
            raise PreprocessError(f"cannot read DICOM {path.name}: {err}") from err
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                out = np.clip(arr / top, 0, 1)
            else:
                out = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except OSError as err:
        raise PreprocessError(f"cannot read image {path.name}: {err}") from err
    return PreparedImage(out.astype(np.float32), None, path.suffix.lower().lstrip("."))


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing / ImagerPixelSpacing; None if missing or not positive."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            raw: Any = ds.get(keyword)
            if raw is not None and len(raw) == 2:
                row, col = float(raw[0]), float(raw[1])
                if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
                    return row, col
        except Exception:  # malformed DS values in the file: treat as absent
            continue
    return None


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """DICOM window (LINEAR, LINEAR_EXACT or SIGMOID) of the first center/width pair, to [0, 1]."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0 or (function != "LINEAR_EXACT" and w < 1):
        return None
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if function == "LINEAR_EXACT":
        return np.clip((values - (c - w / 2)) / w, 0, 1)
    # LINEAR (PS3.3 C.11.2.1.2.1): piecewise, so that width 1 is a threshold at c - 0.5, not 0 / 0
    low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    ramp = (values - (c - 0.5)) / max(w - 1, 1.0) + 0.5
    return np.where(values <= low, 0.0, np.where(values > high, 1.0, np.clip(ramp, 0, 1)))


def _is_multi(value: Any) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str | bytes)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) / (hi - lo)


def _luminance(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour pixels (RGB or YBR) to luminance."""
    from pydicom.pixels import convert_color_space

    photometric = str(ds.get("PhotometricInterpretation", "RGB")).upper()
    if photometric.startswith("YBR"):
        try:
            arr = convert_color_space(arr, photometric, "RGB")
        except Exception:
            return np.asarray(arr[..., 0], dtype=np.float64)
    rgb = np.asarray(arr, dtype=np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
