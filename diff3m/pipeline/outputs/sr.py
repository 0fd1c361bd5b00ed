"""The AI result as a Comprehensive 3D SR: a TID 1500 Measurement Report in the source study.

Tree (see docs/outputs.md): observer context = the algorithm as a device; procedure reported
= plain chest X-ray; one image-level group (TID 1501) with the anomaly score (and its variants),
abnormal/normal, how the EHR took part, algorithm identification (TID 4019) and the evaluated
images; one planar ROI group (TID 1410) around the most anomalous region of the scored image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import ExplicitVRLittleEndian

from diff3m.pipeline.outputs import codes
from diff3m.pipeline.outputs.reference import SourceError, clean_reference, output_charset
from diff3m.pipeline.outputs.uids import OutputRef, derived_uid, device_uid, output_uids, series_number
from diff3m.records import EhrRecord, Roi, ScoreResult

MANUFACTURER = "Diff3M node"
SERIES_DESCRIPTION = "Diff3M AI result rev {revision} (not a diagnosis)"


def algorithm_parameters(result: ScoreResult) -> list[str]:
    """TID 4019 parameters: threshold plus the model's params (steps, noise level, ...), sorted."""
    params = {"threshold": f"{result.threshold:g}", **{str(k): str(v) for k, v in result.params.items()}}
    return [f"{k}={params[k]}" for k in sorted(params)]


def _algorithm(result: ScoreResult) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=result.model_name, version=result.model_version,
        parameters=algorithm_parameters(result), manufacturer=MANUFACTURER,
    )


def _finite(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    return v


def _ehr_items(result: ScoreResult, ehr: EhrRecord) -> tuple[QualitativeEvaluation, list[TextContentItem]]:
    """The EHR status evaluation and its explanatory text items."""
    texts: list[TextContentItem] = []
    if not ehr.available:
        status = codes.EHR_UNAVAILABLE
        texts.append(TextContentItem(name=codes.EHR_REASON, value=(ehr.reason or "unknown")[:1024],
                                     relationship_type=RelationshipTypeValues.CONTAINS))
    elif result.ehr_used:
        status = codes.EHR_USED
    else:
        status = codes.EHR_NOT_USED
    present = sorted(k for k, v in ehr.values.items() if v is not None)
    if result.ehr_used and present:
        texts.append(TextContentItem(name=codes.EHR_FIELDS, value=", ".join(present),
                                     relationship_type=RelationshipTypeValues.CONTAINS))
    return QualitativeEvaluation(codes.EHR_STATUS, status), texts


def _image_group(sources: Sequence[Dataset], result: ScoreResult, ehr: EhrRecord,
                 tracking_uid: str) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501: the image-level result."""
    measurements = [Measurement(name=codes.ANOMALY_SCORE, value=_finite("score", result.score),
                                unit=codes.SCORE_UNIT)]
    for name in sorted(result.scores):
        value = float(result.scores[name])
        if math.isfinite(value):
            measurements.append(
                Measurement(name=codes.score_variant(name), value=value, unit=codes.SCORE_UNIT)
            )
    ehr_eval, ehr_texts = _ehr_items(result, ehr)
    verdict = codes.ABNORMAL if result.abnormal else codes.NORMAL
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="Diff3M image-level result"),
        algorithm_id=_algorithm(result),
        finding_sites=[FindingSite(anatomic_location=codes.FINDING_SITE_CHEST)],
        measurements=measurements,
        qualitative_evaluations=[
            QualitativeEvaluation(codes.ANOMALY_ASSESSMENT, verdict),
            ehr_eval,
        ],
        source_images=[SourceImageForMeasurementGroup(s.SOPClassUID, s.SOPInstanceUID) for s in sources],
    )
    group[0].ContentSequence.extend(ehr_texts)
    return group


def clip_roi(roi: Roi, rows: int, columns: int) -> Roi | None:
    """The ROI clipped to the image; None when nothing of it is inside."""
    x0, y0 = max(0, int(roi.x)), max(0, int(roi.y))
    x1, y1 = min(columns, int(roi.x) + int(roi.width)), min(rows, int(roi.y) + int(roi.height))
    if x1 <= x0 or y1 <= y0:
        return None
    return Roi(x0, y0, x1 - x0, y1 - y0)


def _roi_group(scored: Dataset, result: ScoreResult, roi: Roi,
               tracking_uid: str) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the most anomalous region as a closed rectangle in source pixel coordinates."""
    x0, y0, x1, y1 = roi.x, roi.y, roi.x + roi.width, roi.y + roi.height
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE, graphic_data=corners,
        source_image=SourceImageForRegion(scored.SOPClassUID, scored.SOPInstanceUID),
    )
    inside = np.asarray(result.anomaly_map, dtype=np.float32)[y0:y1, x0:x1]
    inside = np.nan_to_num(inside, nan=0.0, posinf=0.0, neginf=0.0)
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="Diff3M most anomalous region"),
        referenced_region=region,
        finding_type=codes.ANOMALOUS_REGION,
        algorithm_id=_algorithm(result),
        measurements=[
            Measurement(name=codes.REGION_MEAN, value=float(inside.mean()), unit=codes.SCORE_UNIT),
            Measurement(name=codes.REGION_MAX, value=float(inside.max()), unit=codes.SCORE_UNIT),
        ],
    )


def _previous(previous: Sequence[OutputRef]) -> list[Dataset]:
    out = []
    for ref in previous:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ref.study_uid, ref.series_uid
        ds.SOPInstanceUID, ds.SOPClassUID = ref.sop_instance_uid, ref.sop_class_uid
        out.append(ds)
    return out


def build_sr(sources: list[Dataset], result: ScoreResult, ehr: EhrRecord, revision: int,
             previous: Sequence[OutputRef] = (), scored_uid: str | None = None) -> Comprehensive3DSR:
    """The TID 1500 SR of one study revision over the evaluated ``sources``.

    The scored image (whose pixel grid ``result.anomaly_map`` and ``result.roi`` use) is the
    source with SOP Instance UID ``scored_uid``, or ``sources[0]`` when that is not given.
    ``previous`` lists SRs this one supersedes (earlier revisions); they are recorded in the
    Predecessor Documents Sequence.
    """
    if not sources:
        raise SourceError("build_sr needs at least one source image")
    if scored_uid is not None:
        given = [str(d.get("SOPInstanceUID", "")) for d in sources]
        index = given.index(scored_uid) if scored_uid in given else None
        if index is None:
            raise SourceError(f"the scored image {scored_uid} is not among the sources")
        sources = [sources[index], *sources[:index], *sources[index + 1:]]
    refs = [clean_reference(s) for s in sources]
    study_uid = refs[0].StudyInstanceUID
    if any(r.StudyInstanceUID != study_uid for r in refs):
        raise SourceError("source images belong to different studies")
    sop_uids = [str(r.SOPInstanceUID) for r in refs]
    uids = output_uids("sr", study_uid, sop_uids, result.model_name, result.model_version, revision)
    key = (study_uid, result.model_name, result.model_version, str(int(revision)), *sorted(sop_uids))

    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations] = [
        _image_group(refs, result, ehr, derived_uid("tracking", "image", *key))
    ]
    rows, columns = int(sources[0].get("Rows") or 0), int(sources[0].get("Columns") or 0)
    if np.shape(result.anomaly_map) != (rows, columns):
        raise ValueError(f"anomaly map shape {np.shape(result.anomaly_map)} does not match the scored "
                         f"image ({rows}, {columns}); pass scored_uid= to name it")
    roi = clip_roi(result.roi, rows, columns) if result.roi is not None else None
    if roi is not None:
        groups.append(_roi_group(refs[0], result, roi, derived_uid("tracking", "roi", *key)))

    observer = ObserverContext(
        observer_type=dcm_codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(result.model_name, result.model_version),
            name=result.model_name, manufacturer_name=MANUFACTURER,
            model_name=result.model_version,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_CHEST_XRAY,
        imaging_measurements=groups,
    )
    charset = output_charset(*refs, ehr.reason, result.model_name, result.model_version)
    return Comprehensive3DSR(
        evidence=refs,
        content=report,
        series_instance_uid=uids.series_uid,
        series_number=series_number("sr", revision),
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        series_description=SERIES_DESCRIPTION.format(revision=int(revision)),
        is_complete=True,
        previous_versions=_previous(previous) or None,
        coding_schemes=[codes.coding_scheme()],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=charset,
    )
