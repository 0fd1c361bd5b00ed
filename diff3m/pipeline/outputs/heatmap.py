"""The heatmap secondary capture: the overlay image as an RGB SC Image in the source study."""

from __future__ import annotations

import math

from highdicom import PatientOrientationValuesBiped
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from diff3m.pipeline.outputs.reference import clean_reference, clean_value, output_charset, source_uid
from diff3m.pipeline.outputs.render import MAX_SIDE, Overlay, caption, render_overlay
from diff3m.pipeline.outputs.uids import output_uids, series_number
from diff3m.records import ScoreResult

MANUFACTURER = "Diff3M node"
SERIES_DESCRIPTION = "Diff3M AI heatmap rev {revision} (not a diagnosis)"
_ORIENTATION = {v.value for v in PatientOrientationValuesBiped}


def _pixel_spacing(source: Dataset, scale: float) -> tuple[float, float] | None:
    """Row/column spacing of the overlay in mm, from the source's (Imager) Pixel Spacing if valid."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if not isinstance(value, MultiValue | list | tuple) or len(value) != 2:
            continue
        try:
            spacing = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing[0] / scale, spacing[1] / scale
    return None


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two valid single-direction biped values."""
    value = source.get("PatientOrientation")
    if isinstance(value, MultiValue | list | tuple) and len(value) == 2:
        pair = (str(value[0]).strip(), str(value[1]).strip())
        if all(p in _ORIENTATION for p in pair):
            return pair
    return None


def _laterality(source: Dataset) -> str | None:
    """R or L when the source states one (series or image laterality); chests are usually unpaired."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip()
        if value in ("R", "L"):
            return value
    return None


def _instance_number(source: Dataset) -> int:
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if 0 < number < 2**31 else 1


def build_heatmap_sc(source: Dataset, result: ScoreResult, revision: int,
                     max_side: int = MAX_SIDE, overlay: Overlay | None = None) -> SCImage:
    """The heatmap SC for one source image and its result (deterministic UIDs, new series).

    ``overlay`` may pass an overlay already rendered from the same source and result (to share
    one rendering with the web PNGs: ``overlay.pngs()``); by default it is rendered here.
    """
    ref = clean_reference(source)
    if overlay is None:
        overlay = render_overlay(source, result, max_side=max_side)
    study_uid = source_uid(source, "StudyInstanceUID")
    uids = output_uids("sc", study_uid, [source_uid(source, "SOPInstanceUID")],
                       result.model_name, result.model_version, revision)
    orientation = _orientation(source)
    charset = output_charset(ref, result.model_name, result.model_version)
    sc = SCImage.from_ref_dataset(
        ref,
        pixel_array=overlay.rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_uid,
        series_number=series_number("sc", revision),
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=_instance_number(source),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        pixel_spacing=_pixel_spacing(source, overlay.scale),  # type: ignore[arg-type]  # stub says int
        laterality=_laterality(source),
        patient_orientation=orientation or ("L", "F"),
        series_description=SERIES_DESCRIPTION.format(revision=int(revision)),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=charset,
    )
    body_part = clean_value("BodyPartExamined", source.get("BodyPartExamined")) or "CHEST"
    sc.BodyPartExamined = body_part  # General Series (type 3): tells validators the part is unpaired
    if "Laterality" not in sc and body_part != "CHEST":
        sc.Laterality = ""  # General Series, type 2C: unknown for a part we cannot classify
    if orientation is None:
        # Type 2: highdicom needs a value to build; an unknown orientation is stated as empty.
        sc.PatientOrientation = ""  # type: ignore[assignment]
    # General Image (type 3): where the pixels came from and what was burned in.
    ref_item = Dataset()
    ref_item.ReferencedSOPClassUID = ref.SOPClassUID
    ref_item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = [ref_item]
    sc.DerivationDescription = "; ".join(caption(result))[:1024]
    sc.BurnedInAnnotation = "NO"  # the caption holds no patient identity
    return sc
