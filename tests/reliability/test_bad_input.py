"""Bad and odd input: property-based and fuzzed datasets through ingest (the C-STORE handler's path,
directly and over the network) and through preprocessing; huge images, odd bit depths, missing
optional tags, non-ASCII names. No crash, correct failure statuses, no partial files."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from diff3m.config import Settings, load_settings
from diff3m.db.migrate import upgrade
from diff3m.db.models import Instance
from diff3m.db.session import session_scope
from diff3m.models.preprocess import PreprocessError, prepare_dicom
from diff3m.node import ingest, storage
from tests.dicom_factory import Patient, make_dataset, to_bytes

FAILURES = {ingest.CANNOT_UNDERSTAND, ingest.DATASET_MISMATCH, ingest.SOP_CLASS_NOT_SUPPORTED,
            ingest.TRANSFER_SYNTAX_NOT_SUPPORTED}
# Case counts (CI defaults; DIFF3M_FUZZ_SCALE multiplies them). Together >= 10,000 cases.
SCALE = float(os.environ.get("DIFF3M_FUZZ_SCALE", "1"))
N_BYTES = int(6000 * SCALE)
N_STRUCT = int(800 * SCALE)
N_PREP = int(2900 * SCALE)
N_NET = int(300 * SCALE)
FAST: dict[str, Any] = {"deadline": None, "derandomize": False, "database": None,
        "suppress_health_check": list(HealthCheck)}

BASE_DS = make_dataset(rows=16, cols=16, bits=12, view_position="PA", study_uid="1.2.3.4",
                       series_uid="1.2.3.4.1", sop_uid="1.2.3.4.1.1")
BASE = to_bytes(BASE_DS)


class Store:
    """One storage root + database shared by every example of a test; checks the invariants."""

    def __init__(self, root: Path) -> None:
        url = f"sqlite:///{root / 'fuzz.sqlite'}"
        upgrade(url)
        self.settings: Settings = load_settings(None, node={"storage_dir": str(root / "storage")},
                                                database={"url": url})
        self.root = root / "storage"
        self.cases = 0

    def rows(self) -> int:
        with session_scope(self.settings.database.url) as s:
            return s.scalar(select(func.count(Instance.id))) or 0

    def files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file()]

    def check(self, data: bytes) -> ingest.IngestOutcome:
        """Ingest ``data``; assert the outcome is clean whatever it is (files vs rows: ``final_check``)."""
        self.cases += 1
        before = self.rows()
        out = ingest.ingest_bytes(self.settings, None, data, calling_aet="FUZZ")
        tmp = self.root / "tmp"
        assert not (tmp.is_dir() and any(tmp.iterdir())), "partial temp file left"
        if out.ok:
            assert out.path and storage.resolve(self.root, out.path).is_file()
            if not out.duplicate:
                assert storage.resolve(self.root, out.path).read_bytes() == data
                assert self.rows() == before + 1
        else:
            assert out.status in FAILURES, hex(out.status)
            assert out.error
            assert self.rows() == before, "a refused object left a row"
        return out

    def final_check(self) -> None:
        """Every stored file has its row and every row its file: a refused object left no file."""
        with session_scope(self.settings.database.url) as s:
            paths = set(s.scalars(select(Instance.path)).all())
        files = {str(p.relative_to(self.root)) for p in self.files()}
        assert files == paths, (sorted(files - paths)[:5], sorted(paths - files)[:5])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The shared store (module scope: hypothesis examples reuse it), on a tmpfs where we may mount
    one: the invariants are the same, the thousands of fsyncs are not what is being tested here."""
    root = tmp_path_factory.mktemp("fuzz")
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(root)], capture_output=True).returncode == 0
    try:
        s = Store(root)
        yield s
        s.final_check()
        print(f"ingest cases: {s.cases}")
    finally:
        if mounted:
            from diff3m.db.session import dispose_all

            dispose_all()
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


# --- byte-level fuzzing of the Part-10 stream ------------------------------------------------

_mutations = st.one_of(
    st.binary(max_size=600),
    st.integers(0, len(BASE)).map(lambda n: BASE[:n]),  # truncated anywhere
    st.tuples(st.integers(0, len(BASE) - 1), st.binary(min_size=1, max_size=16)).map(  # overwritten
        lambda t: BASE[:t[0]] + t[1] + BASE[t[0] + len(t[1]):]),
    st.tuples(st.integers(0, len(BASE)), st.binary(min_size=1, max_size=64)).map(  # inserted
        lambda t: BASE[:t[0]] + t[1] + BASE[t[0]:]),
    st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 7)).map(  # one bit flipped
        lambda t: BASE[:t[0]] + bytes([BASE[t[0]] ^ (1 << t[1])]) + BASE[t[0] + 1:]),
    st.tuples(st.integers(132, len(BASE) - 4), st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                               b"\xff\xff\x00\x00", b"\x00\x00\x00\x80"]))
    .map(lambda t: BASE[:t[0]] + t[1] + BASE[t[0] + 4:]),  # lengths gone wild
)


@hsettings(max_examples=N_BYTES, **FAST)
@given(data=_mutations)
def test_fuzzed_bytes_through_ingest(store: Store, data: bytes) -> None:
    store.check(data)


# --- structured fuzzing: valid encodings of invalid (or odd) datasets ------------------------

_uid_text = st.one_of(
    st.just("1.2.3"), st.from_regex(r"1\.2\.[0-9]{1,20}(\.[0-9]{1,10}){0,4}", fullmatch=True),
    st.sampled_from(["../../etc/passwd", "..", ".", "/abs/path", "1.2.3/../../x", "1.2\\..\\x", "1.2.3\x00",
                     "", " ", "1." * 40, "CON", "1.2.3/", "~root", "1.02.3"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70),
)


@st.composite
def odd_datasets(draw: st.DrawFn) -> tuple[Dataset, dict[str, object]]:
    rows, cols = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    bits = draw(st.sampled_from([8, 10, 12, 16]))
    view = draw(st.sampled_from(["PA", "AP", "LL"]))
    ds = make_dataset(rows=rows, cols=cols, bits=bits, view_position=view,
                      modality=draw(st.sampled_from(["DX", "CR"])))
    changes: dict[str, object] = {}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if draw(st.booleans()) and draw(st.booleans()):
            changes[kw] = draw(_uid_text)
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if draw(st.integers(0, 5)) == 0:
            changes[kw] = draw(st.integers(0, 70000))
    if draw(st.integers(0, 5)) == 0:
        changes["PixelData"] = draw(st.binary(max_size=rows * cols * 2 + 8))
    for kw in ("PatientName", "ViewPosition", "AccessionNumber", "PatientID", "StudyDate", "Modality",
               "SpecificCharacterSet", "PixelData", "SOPClassUID"):
        if draw(st.integers(0, 9)) == 0:
            changes[kw] = None  # deleted
    for kw, value in changes.items():
        if value is None:
            if kw in ds:
                del ds[kw]
        else:
            setattr(ds, kw, value)
    for kw in ("SOPClassUID", "SOPInstanceUID"):  # keep the file meta consistent (the PDU carries it)
        if kw in ds:
            setattr(ds.file_meta, "MediaStorage" + kw, ds[kw].value)
    return ds, changes


@hsettings(max_examples=N_STRUCT, **FAST)
@given(case=odd_datasets())
def test_structured_fuzz_through_ingest(store: Store, case: tuple[Dataset, dict[str, object]]) -> None:
    ds, changes = case
    try:
        data = to_bytes(ds)
    except Exception:  # pydicom refuses to encode it: nothing a peer could send either
        return
    out = store.check(data)
    if out.ok and out.path:
        assert ".." not in out.path.split("/") and not out.path.startswith("/")
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PixelData",
                           "SOPClassUID") if changes.get(k, "x") in (None, "", " ")]
    if missing:
        assert out.status == ingest.DATASET_MISMATCH, (missing, out)
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if changes.get(kw) == 0:
            assert out.status == ingest.DATASET_MISMATCH


# --- preprocessing ---------------------------------------------------------------------------

_decimal = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda f: f"{f:.6g}"[:16]),
                     st.sampled_from(["", "abc", "1\\2", "0", "-0", "1e400", " 5 "]))


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """Put ``text`` in as the undecoded value, as dcmread leaves a malformed value from a file."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag

    found = tag_for_keyword(keyword)
    assert found is not None
    tag = BaseTag(found)
    value = text.encode("latin-1", "replace")
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


@st.composite
def prep_datasets(draw: st.DrawFn) -> Dataset:
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    bits = draw(st.integers(6, 16))
    modality = draw(st.sampled_from(["DX", "CR"]))
    signed = modality == "CR" and draw(st.booleans())
    ds = make_dataset(rows=rows, cols=cols, bits=bits, signed=signed, modality=modality,
                      photometric=draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"])),
                      seed=draw(st.integers(0, 9)))
    if draw(st.booleans()):
        ds.PhotometricInterpretation = draw(st.sampled_from(["RGB", "PALETTE COLOR", "YBR_FULL", "XYZ", ""]))
    for kw in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if draw(st.integers(0, 3)) == 0:
            _raw(ds, kw, draw(_decimal))
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if draw(st.integers(0, 3)) == 0:
            _raw(ds, kw, draw(st.sampled_from(["0\\0", "-1\\2", "x\\y", "1e9\\1", "0.1", ""])))
    if draw(st.integers(0, 4)) == 0:
        ds.BitsStored = draw(st.integers(0, 40))
    if draw(st.integers(0, 4)) == 0:
        ds.HighBit = draw(st.integers(0, 40))
    if draw(st.integers(0, 5)) == 0:
        ds.PixelRepresentation = draw(st.integers(0, 3))
    if draw(st.integers(0, 5)) == 0:
        ds.SamplesPerPixel = draw(st.integers(0, 4))
    if draw(st.integers(0, 5)) == 0:
        ds.PixelData = draw(st.binary(max_size=rows * cols * 2 + 4))
    if draw(st.integers(0, 9)) == 0:
        del ds.PixelData
    if draw(st.integers(0, 9)) == 0:
        ds.NumberOfFrames = draw(st.integers(0, 3))
    return ds


@hsettings(max_examples=N_PREP, **FAST)
@given(ds=prep_datasets())
def test_fuzzed_datasets_through_preprocessing(ds: Dataset) -> None:
    try:
        img = prepare_dicom(ds)
    except PreprocessError:
        return  # the documented refusal (the study fails with a reason)
    assert img.pixels.ndim == 2 and img.pixels.size > 0
    assert np.isfinite(img.pixels).all()
    assert img.pixels.min() >= 0 and img.pixels.max() <= 1


# --- the same through the network: statuses as a modality sees them --------------------------


def test_fuzz_over_the_network(tmp_path: Path, sqlite_url: str) -> None:
    """A few hundred mutated objects over one association each; the listener answers every one."""
    import random

    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

    from diff3m.node.scp import start_listener
    from diff3m.node.scu import keep_responses_for_sender
    from tests.services import free_port

    settings = load_settings(None, node={"storage_dir": str(tmp_path / "st"), "host": "127.0.0.1",
                                         "port": free_port(), "min_free_disk_mb": 1},
                             database={"url": sqlite_url})
    listener = start_listener(settings)
    r = random.Random(int(os.environ.get("DIFF3M_RELIABILITY_SEED", "7")))
    statuses: dict[int, set[int]] = {}
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ["1.2.840.10008.1.2.1"])
    try:
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="DIFF3M")
        assert assoc.is_established
        keep_responses_for_sender(assoc)
        for i in range(N_NET):
            ds = make_dataset(rows=8, cols=8, sop_uid=f"1.2.826.0.1.99.{i}")
            mutation = r.randrange(6)
            if mutation == 0:
                del ds.StudyInstanceUID
            elif mutation == 1:
                ds.SeriesInstanceUID = r.choice(["../../../tmp/x", "1.2/3", "..", "1.2.3\\4"])
            elif mutation == 2:
                ds.Rows = r.choice([0, 9999])
            elif mutation == 3:
                ds.PixelData = ds.PixelData[: r.randrange(len(ds.PixelData))]
            elif mutation == 4:
                ds.StudyInstanceUID = "1." * 40  # longer than 64
            status = assoc.send_c_store(ds)
            assert "Status" in status, "no answer: the association died"
            statuses.setdefault(mutation, set()).add(int(status.Status))
        assoc.release()
    finally:
        ae.shutdown()
        listener.stop()
    assert statuses[0] == {ingest.DATASET_MISMATCH}
    assert statuses[1] == {0x0000}  # stored, under a hashed path inside storage_dir
    assert statuses[2] == {ingest.DATASET_MISMATCH}
    assert statuses[3] <= {ingest.DATASET_MISMATCH, ingest.CANNOT_UNDERSTAND}
    assert statuses[4] == {ingest.DATASET_MISMATCH}
    assert statuses[5] == {0x0000}
    root = (tmp_path / "st").resolve()
    for p in (tmp_path / "st").rglob("*"):
        assert root in p.resolve().parents
    assert not list((tmp_path / "st" / "tmp").glob("*.part"))


# --- odd but legal data --------------------------------------------------------------------------


def test_huge_image_memory_stays_sane(store: Store) -> None:
    """4000 x 4000 x 16 bit (32 MB of pixels): stored as received, prepared, peak memory bounded."""
    pixels = (np.arange(4000 * 4000, dtype=np.uint32) % 4096).astype(np.uint16).reshape(4000, 4000)
    ds = make_dataset(pixels=pixels, bits=12)
    data = to_bytes(ds)
    del pixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = store.check(data)
    assert out.ok
    img = prepare_dicom(ds)
    assert img.pixels.shape == (4000, 4000) and np.isfinite(img.pixels).all()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 700, f"peak memory grew {grown_mb:.0f} MB for one 32 MB image"


@pytest.mark.parametrize("bits", [6, 7, 9, 10, 11, 13, 14, 15])
@pytest.mark.parametrize("signed", [False, True])
def test_odd_bit_depths_store_and_prepare(store: Store, bits: int, signed: bool) -> None:
    ds = make_dataset(rows=20, cols=18, bits=bits, signed=signed, modality="CR")
    assert store.check(to_bytes(ds)).ok
    img = prepare_dicom(ds)
    assert img.pixels.max() - img.pixels.min() > 0.5  # the full stored range is used, not 8-of-16 bits


def test_missing_optional_tags(store: Store) -> None:
    ds = make_dataset(rows=16, cols=16)
    for kw in ("PatientName", "PatientBirthDate", "PatientSex", "ViewPosition", "ViewCodeSequence",
               "AccessionNumber", "StudyDate", "WindowCenter", "WindowWidth", "PixelSpacing",
               "ImagerPixelSpacing", "RescaleSlope", "RescaleIntercept", "SpecificCharacterSet",
               "PatientID", "Modality", "BodyPartExamined"):
        del ds[kw]
    out = store.check(to_bytes(ds))
    assert out.ok
    assert prepare_dicom(ds).pixels.shape == (16, 16)


@pytest.mark.parametrize(("charset", "name"), [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "山田^太郎=やまだ^たろう"),
    ("ISO_IR 192", "Ελληνικό^Όνομα"),
    ("ISO_IR 144", "Иванов^Иван"),
    ("ISO_IR 126", "Παπαδόπουλος^Γιώργος"),
    ("ISO_IR 138", "כהן^דוד"),
    ("ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"),
    ("\\ISO 2022 IR 149", "홍^길동"),
])
def test_non_ascii_names_in_several_character_sets(store: Store, charset: str, name: str) -> None:
    ds = make_dataset(rows=8, cols=8, patient=Patient(patient_id="ÄÖ-1" if "100" in charset else "P-1"))
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.PatientName = name
    data = to_bytes(ds)
    out = store.check(data)
    assert out.ok
    import pydicom

    back = pydicom.dcmread(storage.resolve(store.root, out.path or ""))
    back.decode()
    assert str(back.PatientName) == name
