"""The heatmap secondary capture: valid for dciodvfy, RGB, overlay and caption where expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from diff3m.pipeline.outputs import SourceError, build_heatmap_sc
from tests.pipeline.outputs.factory import SourceSpec, make_result, make_source
from tests.services import assert_dciodvfy_clean

SPECS = {
    "cr-mono2-12bit": SourceSpec(),
    "dx-mono1-16bit-latin1": SourceSpec(modality="DX", photometric="MONOCHROME1", bits_stored=16,
                                        charset="ISO_IR 100", patient_name="Müller^Jürgen"),
    "cr-utf8-no-spacing-no-window": SourceSpec(charset="ISO_IR 192", patient_name="山田^太郎",
                                               pixel_spacing=None, window=False),
    "dx-invalid-values": SourceSpec(modality="DX", bad_values=True),
}


def _is_grey(px: np.ndarray) -> bool:
    return int(px.max()) - int(px.min()) <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_sc_is_valid_rgb_in_the_source_study(tmp_path: Path, spec: SourceSpec) -> None:
    spec = SourceSpec(**{**spec.__dict__, "rows": 240, "columns": 200})
    src = make_source(spec)
    res = make_result(spec.rows, spec.columns)
    path = tmp_path / "sc.dcm"
    build_heatmap_sc(src, res, 1).save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)

    sc = dcmread(path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert (sc.Rows, sc.Columns) == (spec.rows, spec.columns)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    if spec.bad_values:
        assert "PixelSpacing" not in sc  # the source's 0\0 is not carried over
        assert sc.PatientOrientation == "" and sc.PatientSex == ""
    else:
        assert str(sc.PatientName) == spec.patient_name
        assert list(sc.PatientOrientation) == ["L", "F"]
    if spec.pixel_spacing and not spec.bad_values:
        assert [float(v) for v in sc.PixelSpacing] == pytest.approx(list(spec.pixel_spacing))

    rgb = sc.pixel_array
    assert rgb.shape == (spec.rows, spec.columns, 3) and rgb.dtype == np.uint8
    hot_y, hot_x = int(spec.rows * 0.6), int(spec.columns * 0.4)  # the factory's hot spot
    assert not _is_grey(rgb[hot_y, hot_x])  # coloured overlay on the hot spot
    assert _is_grey(rgb[spec.rows - 3, spec.columns - 3])  # plain image far from it
    caption = rgb[: spec.rows // 8, : spec.columns // 2]
    assert ((caption[..., 0] > 200) & (caption[..., 1] > 200) & (caption[..., 2] < 80)).any()  # yellow text


def test_monochrome1_is_inverted_for_display() -> None:
    res = make_result(120, 100, roi=False)
    corner = (115, 95)
    values = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        src = make_source(SourceSpec(rows=120, columns=100, photometric=photometric))
        values[photometric] = int(build_heatmap_sc(src, res, 1).pixel_array[corner][0])
    # the factory's image brightens towards the bottom: bright in MONOCHROME2, dark once inverted
    assert values["MONOCHROME2"] > 150 and values["MONOCHROME1"] < 105


def test_large_source_is_downsampled_with_scaled_spacing(tmp_path: Path) -> None:
    spec = SourceSpec(modality="DX", rows=3000, columns=2500, bits_stored=16, pixel_spacing=(0.1, 0.1))
    src = make_source(spec)
    path = tmp_path / "sc.dcm"
    build_heatmap_sc(src, make_result(3000, 2500), 1).save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    sc = dcmread(path, stop_before_pixels=True)
    assert (sc.Rows, sc.Columns) == (2048, 1707)
    assert float(sc.PixelSpacing[0]) == pytest.approx(0.1 * 3000 / 2048, rel=1e-3)


def test_bad_inputs_give_clear_errors() -> None:
    src = make_source()
    with pytest.raises(ValueError, match="does not match the source image"):
        build_heatmap_sc(src, make_result(50, 50), 1)
    no_pixels = make_source()
    del no_pixels.PixelData
    with pytest.raises(SourceError, match="pixel data"):
        build_heatmap_sc(no_pixels, make_result(96, 80), 1)


def test_compressed_source(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    src = make_source(SourceSpec(rows=120, columns=100))
    plain = build_heatmap_sc(src, make_result(120, 100), 1).pixel_array
    src.compress(RLELossless)
    path = tmp_path / "sc.dcm"
    build_heatmap_sc(src, make_result(120, 100), 1).save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    np.testing.assert_array_equal(dcmread(path).pixel_array, plain)
