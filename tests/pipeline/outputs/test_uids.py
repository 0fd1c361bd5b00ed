"""Deterministic output UIDs: a re-run gives the same ones, a new revision or model new ones."""

from __future__ import annotations

from pydicom.uid import UID

from diff3m.pipeline.outputs import build_heatmap_sc, build_sr, output_uids, series_uid
from tests.pipeline.outputs.factory import make_ehr, make_result, make_source

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOURCES = ["1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"]


def test_same_inputs_same_uids_in_any_source_order() -> None:
    a = output_uids("sr", STUDY, SOURCES, "Diff3M", "1.0", 2)
    b = output_uids("sr", STUDY, list(reversed(SOURCES)), "Diff3M", "1.0", 2)
    assert a == b
    assert UID(a.sop_instance_uid).is_valid and UID(a.series_uid).is_valid
    assert len(a.sop_instance_uid) <= 64 and a.sop_instance_uid.startswith("2.25.")


def test_every_input_changes_the_uids() -> None:
    base = output_uids("sr", STUDY, SOURCES, "Diff3M", "1.0", 2)
    variants = [
        output_uids("sc", STUDY, SOURCES, "Diff3M", "1.0", 2),
        output_uids("sr", STUDY + "9", SOURCES, "Diff3M", "1.0", 2),
        output_uids("sr", STUDY, SOURCES[:1], "Diff3M", "1.0", 2),
        output_uids("sr", STUDY, SOURCES, "Other", "1.0", 2),
        output_uids("sr", STUDY, SOURCES, "Diff3M", "1.1", 2),
        output_uids("sr", STUDY, SOURCES, "Diff3M", "1.0", 3),
    ]
    assert len({v.sop_instance_uid for v in variants} | {base.sop_instance_uid}) == len(variants) + 1
    # the series is per study, kind, model and revision, not per source set
    assert variants[2].series_uid == base.series_uid
    assert series_uid("sr", STUDY, "Diff3M", "1.0", 2) != series_uid("sc", STUDY, "Diff3M", "1.0", 2)


def test_building_twice_gives_identical_uids_and_new_revision_or_model_new_ones() -> None:
    src = make_source()
    res = make_result(int(src.Rows), int(src.Columns))
    ehr = make_ehr()
    sr1, sr2 = build_sr([src], res, ehr, 1), build_sr([src], res, ehr, 1)
    sc1, sc2 = build_heatmap_sc(src, res, 1), build_heatmap_sc(src, res, 1)
    assert (sr1.SOPInstanceUID, sr1.SeriesInstanceUID) == (sr2.SOPInstanceUID, sr2.SeriesInstanceUID)
    assert (sc1.SOPInstanceUID, sc1.SeriesInstanceUID) == (sc2.SOPInstanceUID, sc2.SeriesInstanceUID)
    assert sr1.SeriesInstanceUID != sc1.SeriesInstanceUID
    assert src.SeriesInstanceUID not in (sr1.SeriesInstanceUID, sc1.SeriesInstanceUID)

    sr_rev, sc_rev = build_sr([src], res, ehr, 2), build_heatmap_sc(src, res, 2)
    # series numbers and descriptions tell a reader which revision a series holds
    numbers = (sr1.SeriesNumber, sc1.SeriesNumber, sr_rev.SeriesNumber, sc_rev.SeriesNumber)
    assert numbers == (9011, 9012, 9021, 9022)
    assert "rev 2" in sr_rev.SeriesDescription and "not a diagnosis" in sc_rev.SeriesDescription
    assert sr_rev.SOPInstanceUID != sr1.SOPInstanceUID and sr_rev.SeriesInstanceUID != sr1.SeriesInstanceUID
    assert sc_rev.SOPInstanceUID != sc1.SOPInstanceUID and sc_rev.SeriesInstanceUID != sc1.SeriesInstanceUID

    res_new = make_result(int(src.Rows), int(src.Columns), model_version="0.4.0")
    assert build_sr([src], res_new, ehr, 1).SOPInstanceUID != sr1.SOPInstanceUID
    assert build_heatmap_sc(src, res_new, 1).SOPInstanceUID != sc1.SOPInstanceUID
