"""Compressed sample files for the transfer-syntax tests, made with dcmtk's codecs and pydicom."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000, JPEG2000Lossless

from diff3m.node import syntaxes as ts
from tests.dicom_factory import make_dataset, write_file
from tests.services import require_tool


@dataclass(frozen=True)
class Case:
    """One transfer syntax to send: how to make it, and whether pixels must match exactly."""

    name: str
    uid: str
    bits: int
    photometric: str
    lossless: bool
    tool: list[str] | None  # dcmtk command (input and output appended); None = pydicom


CASES = [
    Case("implicit", ts.IMPLICIT_LE, 16, "MONOCHROME2", True, ["dcmconv", "+ti"]),
    Case("explicit", ts.EXPLICIT_LE, 12, "MONOCHROME1", True, None),
    Case("deflate", ts.DEFLATED, 16, "MONOCHROME2", True, ["dcmconv", "+td"]),
    Case("rle", ts.RLE, 16, "MONOCHROME1", True, ["dcmcrle"]),
    Case("jpeg-baseline", ts.JPEG_BASELINE, 8, "MONOCHROME2", False, ["dcmcjpeg", "+eb"]),
    Case("jpeg-extended", ts.JPEG_EXTENDED, 12, "MONOCHROME2", False, ["dcmcjpeg", "+ee"]),
    Case("jpeg-lossless", ts.JPEG_LOSSLESS, 16, "MONOCHROME2", True, ["dcmcjpeg", "+el"]),
    Case("jpeg-lossless-sv1", ts.JPEG_LOSSLESS_SV1, 10, "MONOCHROME1", True, ["dcmcjpeg", "+e1"]),
    Case("jpegls-lossless", ts.JPEG_LS_LOSSLESS, 16, "MONOCHROME2", True, ["dcmcjpls", "+el"]),
    Case("jpegls-near", ts.JPEG_LS_NEAR_LOSSLESS, 12, "MONOCHROME2", False, ["dcmcjpls", "+en"]),
    Case("j2k-lossless", ts.JPEG_2000_LOSSLESS, 16, "MONOCHROME2", True, None),
    Case("j2k-lossy", ts.JPEG_2000, 12, "MONOCHROME1", False, None),
]


def make_case_file(case: Case, folder: Path, **kwargs: object) -> tuple[Path, np.ndarray]:
    """Write a DX file in ``case``'s transfer syntax; returns it and the original pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(bits=case.bits, photometric=case.photometric, rows=48, cols=40, **kwargs)  # type: ignore[arg-type]
    original = ds.pixel_array.copy()
    src = write_file(folder / f"{case.name}-src.dcm", ds)
    out = folder / f"{case.name}.dcm"
    if case.tool is not None:
        exe = require_tool(case.tool[0])
        subprocess.run([exe, *case.tool[1:], str(src), str(out)], check=True, capture_output=True)
    elif case.uid == ts.EXPLICIT_LE:
        out = src
    else:
        uid = JPEG2000Lossless if case.uid == ts.JPEG_2000_LOSSLESS else JPEG2000
        kw = {} if case.uid == ts.JPEG_2000_LOSSLESS else {"j2k_cr": [20]}
        ds.compress(uid, generate_instance_uid=False, **kw)
        if case.uid == ts.JPEG_2000:
            ds.LossyImageCompression = "01"
        ds.save_as(out, enforce_file_format=True)
    assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == case.uid
    return out, original


def assert_pixels_match(case: Case, stored: Path, original: np.ndarray) -> None:
    """Stored pixels equal the original (lossless) or stay close to it (lossy)."""
    decoded = pydicom.dcmread(stored).pixel_array
    assert decoded.shape == original.shape
    if case.lossless:
        np.testing.assert_array_equal(decoded, original)
    else:
        err = np.abs(decoded.astype(np.float64) - original.astype(np.float64)).mean()
        assert err < 0.02 * (2 ** case.bits), f"{case.name}: mean abs error {err}"
