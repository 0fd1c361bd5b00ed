"""DICOM outputs of a result: TID 1500 SR, heatmap secondary capture, and the overlay PNGs for the web."""

from diff3m.pipeline.outputs.heatmap import build_heatmap_sc
from diff3m.pipeline.outputs.reference import SourceError
from diff3m.pipeline.outputs.render import Overlay, RenderedPngs, render_overlay, render_pngs
from diff3m.pipeline.outputs.sr import build_sr
from diff3m.pipeline.outputs.uids import OutputRef, OutputUids, output_uids, series_number, series_uid

__all__ = [
    "OutputRef",
    "OutputUids",
    "Overlay",
    "RenderedPngs",
    "SourceError",
    "build_heatmap_sc",
    "build_sr",
    "output_uids",
    "render_overlay",
    "render_pngs",
    "series_number",
    "series_uid",
]
