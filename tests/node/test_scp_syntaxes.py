"""dcmtk storescu sends every accepted transfer syntax; the node stores it as received and it decodes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from diff3m.config import Settings
from diff3m.db.models import Instance, Study
from diff3m.db.session import session_scope
from diff3m.node import syntaxes as ts
from diff3m.node.scp import Listener
from tests.node.conftest import echoscu, storescu
from tests.node.samples import CASES, assert_pixels_match, make_case_file
from tests.services import assert_dciodvfy_clean


def test_echo(listener: Listener) -> None:
    proc = echoscu(listener.port)
    assert proc.returncode == 0, proc.stderr


def test_every_transfer_syntax_stored_as_received_and_decodes(
    tmp_path: Path, settings: Settings, listener: Listener
) -> None:
    made = {c.name: make_case_file(c, tmp_path / "in", view_position="AP") for c in CASES}
    assert {c.uid for c in CASES} == set(ts.SUPPORTED_TRANSFER_SYNTAXES)
    proc = storescu(listener.port, *(p for p, _ in made.values()))
    assert proc.returncode == 0, proc.stderr
    with session_scope(settings.database.url) as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
        assert s.scalar(select(Study.status).limit(1)) == "receiving"
    assert len(rows) == len(CASES)
    for case in CASES:
        path, original = made[case.name]
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = rows[sop]
        assert row.transfer_syntax == case.uid, case.name
        assert row.frontal and row.view_position == "AP"
        stored = Path(settings.node.storage_dir) / row.path
        # stored as received: same dataset bytes as the sender's file (meta may differ)
        sent = pydicom.dcmread(path)
        got = pydicom.dcmread(stored)
        assert got.file_meta.TransferSyntaxUID == case.uid
        assert got.PixelData == sent.PixelData, case.name
        assert_pixels_match(case, stored, original)
        if case.uid != ts.DEFLATED:  # dciodvfy cannot read deflated files
            assert_dciodvfy_clean(stored)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_cr_bits_and_photometric(tmp_path: Path, settings: Settings, listener: Listener, bits: int,
                                 photometric: str) -> None:
    from tests.dicom_factory import make_dataset, write_file

    ds = make_dataset(modality="CR", bits=bits, photometric=photometric, rows=32, cols=24, signed=bits == 16)
    path = write_file(tmp_path / "cr.dcm", ds)
    proc = storescu(listener.port, path)
    assert proc.returncode == 0, proc.stderr
    with session_scope(settings.database.url) as s:
        row = s.scalars(select(Instance)).one()
    stored = pydicom.dcmread(Path(settings.node.storage_dir) / row.path)
    assert stored.PhotometricInterpretation == photometric
    assert (stored.pixel_array == ds.pixel_array).all()
