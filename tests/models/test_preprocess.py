"""DICOM and JPG/PNG preprocessing: LUTs, windows, MONOCHROME1, bit depths, signed data, geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from diff3m.models.preprocess import Geometry, PreprocessError, load_image, prepare_array, prepare_dicom


def make_ds(pixels: np.ndarray, bits_stored: int, signed: bool = False, **tags: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def ramp(rows: int, cols: int, lo: int, hi: int) -> np.ndarray:
    return np.linspace(lo, hi, rows * cols).reshape(rows, cols).round()


@pytest.mark.parametrize("bits", [12, 15, 16])
def test_bit_depths_without_window_use_full_range(bits: int) -> None:
    ds = make_ds(ramp(20, 30, 0, 2**bits - 1), bits)
    img = prepare_dicom(ds)
    assert img.pixels.shape == (20, 30) and img.pixels.dtype == np.float32
    assert img.pixels.min() == 0 and img.pixels.max() == 1
    assert img.pixels[0, 0] < img.pixels[-1, -1]


def test_signed_data_with_rescale_and_window() -> None:
    ds = make_ds(
        ramp(10, 10, -1000, 1000),
        16,
        signed=True,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=-100,
        WindowWidth=2001,
    )
    img = prepare_dicom(ds)
    # stored -1000..1000 -> modality -2100..1900; window -100 +- 1000 -> clipped at both ends
    assert img.pixels[0, 0] == 0 and img.pixels[-1, -1] == 1
    mid = prepare_dicom(
        make_ds(
            np.zeros((4, 4)),
            16,
            signed=True,
            RescaleSlope=2,
            RescaleIntercept=-100,
            WindowCenter=-100,
            WindowWidth=2001,
        )
    ).pixels
    assert np.allclose(mid, 0.5, atol=1e-3)


def test_monochrome1_is_inverted() -> None:
    px = ramp(8, 8, 0, 4095)
    m2 = prepare_dicom(make_ds(px, 12)).pixels
    m1 = prepare_dicom(make_ds(px, 12, PhotometricInterpretation="MONOCHROME1")).pixels
    assert np.allclose(m1, 1 - m2)


def test_voi_lut_sequence() -> None:
    ds = make_ds(ramp(8, 8, 0, 255), 12)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.LUTData = [int(i * 16) for i in range(256)]
    ds.VOILUTSequence = [item]
    out = prepare_dicom(ds).pixels
    assert out.min() == 0 and out.max() == 1 and np.all(np.diff(out.ravel()) >= 0)


def test_bad_window_falls_back_to_minmax_and_spacing_tolerated() -> None:
    px = ramp(6, 9, 100, 200)
    for spacing in (None, [0, 0], "garbage", [0.2, 0.2]):
        tags: dict[str, object] = {"WindowCenter": 100, "WindowWidth": 0}
        if isinstance(spacing, list):
            tags["PixelSpacing"] = spacing
        ds = make_ds(px, 12, **tags)
        if spacing == "garbage":  # as read from a file with a malformed DS value
            ds[0x00280030] = RawDataElement(Tag(0x00280030), "DS", 4, b"x\\y ", 0, False, True)
        img = prepare_dicom(ds)
        assert img.pixels.min() == 0 and img.pixels.max() == 1
        assert img.pixel_spacing == ((0.2, 0.2) if spacing == [0.2, 0.2] else None)


def test_no_pixels_is_a_clear_error() -> None:
    with pytest.raises(PreprocessError):
        prepare_dicom(Dataset())


def test_grid_geometry_round_trip() -> None:
    img = prepare_array(np.random.default_rng(0).random((300, 200)))
    grid, geo = img.to_grid(64)
    assert grid.shape == (64, 64) and (geo.content_rows, geo.content_cols) == (64, 43)
    assert geo.left == 10 and np.all(grid[:, :10] == 0) and np.all(grid[:, 53:] == 0)
    full = geo.to_source(np.ones((64, 64), np.float32))
    assert full.shape == (300, 200) and np.allclose(full, 1)
    roi = geo.box_to_source(0, 10, 64, 53)
    assert (roi.x, roi.y, roi.width, roi.height) == (0, 0, 200, 300)


def test_anisotropic_spacing_keeps_physical_aspect() -> None:
    geo = Geometry.fit(100, 100, 64, spacing=(0.2, 0.1))
    assert (geo.content_rows, geo.content_cols) == (64, 32)


def test_png_8_and_16_bit_and_dicom_file(tmp_path: Path) -> None:
    a8 = (ramp(10, 12, 0, 255)).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "a.png")
    Image.fromarray(a8).convert("RGB").save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(ramp(10, 12, 0, 65535).astype(np.uint16)).save(tmp_path / "b.png")
    for name in ("a.png", "b.png", "a.jpg"):
        img = load_image(tmp_path / name)
        assert img.pixels.shape == (10, 12) and img.pixels.max() > 0.95 and img.pixels.min() < 0.05
    ds = make_ds(ramp(10, 12, 0, 4095), 12)
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert load_image(tmp_path / "c.dcm").pixels.shape == (10, 12)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PreprocessError):
        load_image(tmp_path / "bad.png")
    assert pydicom.dcmread(tmp_path / "c.dcm").Rows == 10


@pytest.mark.parametrize("center", [100.5, 4.5036e15])
def test_window_of_width_one_is_a_threshold(center: float) -> None:
    """Width 1 (legal for LINEAR) divides by w - 1 = 0 in the closed form; the standard's piecewise
    form makes it a threshold at c - 0.5. The huge centre is the fuzzer's case: slope 0, intercept at c."""
    px = ramp(4, 4, 90, 110)
    tags: dict[str, object] = {"WindowCenter": center, "WindowWidth": 1}
    if center > 1e6:
        tags |= {"RescaleSlope": 0, "RescaleIntercept": center}
    img = prepare_dicom(make_ds(px, 12, **tags))
    assert np.isfinite(img.pixels).all() and set(np.unique(img.pixels)) <= {0.0, 1.0}
    if center < 1e6:
        assert np.array_equal(img.pixels, (px > 100).astype(np.float32))
