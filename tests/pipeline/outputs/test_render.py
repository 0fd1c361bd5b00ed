"""The overlay PNGs for the web UI."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from diff3m.pipeline.outputs import render_overlay, render_pngs
from tests.pipeline.outputs.factory import SourceSpec, make_result, make_source


def test_pngs_have_the_overlay_size_and_a_small_thumbnail() -> None:
    src = make_source(SourceSpec(rows=400, columns=300))
    pngs = render_pngs(src, make_result(400, 300))
    full = Image.open(io.BytesIO(pngs.overlay))
    thumb = Image.open(io.BytesIO(pngs.thumbnail))
    assert full.format == "PNG" and full.mode == "RGB"
    assert full.size == (300, 400) == (pngs.width, pngs.height)
    assert thumb.format == "PNG" and max(thumb.size) == 256 and thumb.size[0] < thumb.size[1]
    overlay = render_overlay(src, make_result(400, 300))
    np.testing.assert_array_equal(np.asarray(full), overlay.rgb)  # PNG is lossless


def test_max_side_downsamples_and_roi_box_follows() -> None:
    res = make_result(400, 300)
    small = render_overlay(make_source(SourceSpec(rows=400, columns=300)), res, max_side=200)
    assert small.rgb.shape == (200, 150, 3) and small.scale == 0.5
    assert res.roi is not None
    x, y = round(res.roi.x * 0.5), round((res.roi.y + res.roi.height // 2) * 0.5)
    assert (small.rgb[y, x] >= 250).all()  # white ROI edge at the scaled position


def test_one_rendering_serves_the_sc_and_the_web() -> None:
    from diff3m.pipeline.outputs import build_heatmap_sc

    src = make_source(SourceSpec(rows=400, columns=300))
    res = make_result(400, 300)
    overlay = render_overlay(src, res)
    sc = build_heatmap_sc(src, res, 1, overlay=overlay)
    np.testing.assert_array_equal(sc.pixel_array, overlay.rgb)
    pngs = overlay.pngs(max_side=200)
    assert (pngs.width, pngs.height) == (150, 200)
    assert Image.open(io.BytesIO(pngs.overlay)).size == (150, 200)
