"""Training writes a loadable checkpoint; scoring API, determinism, EHR switch, incompatible checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from diff3m.models import checkpoint
from diff3m.models.checkpoint import CheckpointError
from diff3m.models.inference import Diff3MScorer
from diff3m.models.preprocess import prepare_array
from diff3m.records import EhrRecord, ScoreResult
from tests.models.synthetic import chest_like


def image(seed: int = 1, lesion: bool = False, shape: tuple[int, int] = (50, 40)):
    return prepare_array(chest_like(*shape, np.random.default_rng(seed), lesion=lesion))


def test_checkpoint_contents(tiny_checkpoint: Path) -> None:
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"model.safetensors", "config.json", "training.json", "train_log.csv"} <= names
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["profile"]["name"] == "tiny" and cfg["model_name"] == "Diff3M"
    assert cfg["ehr"]["stats"]["age"]["count"] == 6 and cfg["schedule"]["timesteps"] == 1000
    assert cfg["threshold"] > 0 and cfg["extra"]["calibration"]["n"] == 2
    meta = json.loads((tiny_checkpoint / "training.json").read_text())
    assert meta["stages_trained"] == 2 and meta["n_train"] == 6
    log = (tiny_checkpoint / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,stage,loss") and len(log) == 7 and log[-1].split(",")[1] == "2"


def test_score_batch_api(tiny_checkpoint: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="auto")
    assert (scorer.name, scorer.profile_name, scorer.image_size) == ("Diff3M", "tiny", 32)
    assert scorer.version.startswith("tiny-") and scorer.threshold > 0
    ehr = EhrRecord(values={"age": 50.0, "sex": "F", "bmi": None})
    results = scorer.score_batch([(image(1), ehr), (image(2, shape=(30, 60)), None)], threshold=0.0)
    assert len(results) == 2 and all(isinstance(r, ScoreResult) for r in results)
    r = results[0]
    assert r.anomaly_map.shape == (50, 40) and r.anomaly_map.dtype == np.float32 and r.anomaly_map.min() >= 0
    assert results[1].anomaly_map.shape == (30, 60)
    assert set(r.scores) == {"mse", "max_abs", "smoothed_max", "smoothed_mean"} and r.score == r.scores["mse"]
    assert r.abnormal and r.threshold == 0.0 and r.ehr_used
    assert r.roi is not None and 0 <= r.roi.x < 40 and 0 <= r.roi.y < 50
    assert r.roi.x + r.roi.width <= 40 and r.roi.y + r.roi.height <= 50
    assert r.params["steps"] == 4 and r.params["noise_level"] == 100


def test_deterministic_and_settings_change_result(tiny_checkpoint: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    item = [(image(3), {"age": 70.0, "sex": "M", "view": "AP"})]
    a = scorer.score_batch(item, seed=0)[0]
    b = scorer.score_batch(item, seed=0)[0]
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    c = scorer.score_batch(item, steps=2, noise_level=50)[0]
    assert c.score != a.score and c.params["steps"] == 2
    with pytest.raises(ValueError):
        scorer.score_batch(item, noise_level=5000)


def test_use_ehr_switch_changes_conditioning(tiny_checkpoint: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    img = image(4)
    with_ehr = scorer.score_batch([(img, {"age": 80.0, "bmi": 35.0, "sex": "M"})])[0]
    other_ehr = scorer.score_batch([(img, {"age": 20.0, "bmi": 18.0, "sex": "F"})])[0]
    without = scorer.score_batch([(img, {"age": 80.0, "bmi": 35.0})], use_ehr=False)[0]
    assert not without.ehr_used and with_ehr.ehr_used
    assert with_ehr.score != without.score and with_ehr.score != other_ehr.score


def test_batch_equals_single(tiny_checkpoint: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    items = [(image(5), {"age": 40.0}), (image(6), {})]
    batched = scorer.score_batch(items, batch_size=2)
    single = [scorer.score_batch([it])[0] for it in items]
    for x, y in zip(batched, single, strict=True):
        assert abs(x.score - y.score) < 1e-6 * max(1.0, abs(y.score))


def test_raw_residuals_are_the_scored_maps(tiny_checkpoint: Path) -> None:
    """``raw_residuals`` gives the grid maps ``score_batch`` scores (its anomaly map, back on the source)."""
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    items = [(image(7, shape=(32, 32)), {"age": 40.0}), (image(8, shape=(30, 60)), {})]
    maps, geos = scorer.raw_residuals(items, noise_level=50, steps=2, batch_size=1)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and len(geos) == 2
    scored = scorer.score_batch(items, noise_level=50, steps=2)
    for m, geo, r in zip(maps, geos, scored, strict=True):
        assert np.allclose(geo.to_source(m), r.anomaly_map, atol=1e-5)
    hidden, _ = scorer.raw_residuals(items[:1], noise_level=50, steps=2, use_ehr=False)
    assert not np.allclose(hidden, maps[:1])


def test_incompatible_checkpoints_fail_clearly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["profile"]["base_channels"] = 16
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load(bad)
    cfg["profile"]["base_channels"] = 8
    cfg["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format"):
        checkpoint.load(bad)
    cfg["format_version"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(bad / "model.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="builtin"):
        checkpoint.load("builtin:nonexistent")


def test_round_trip_preserves_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    loaded = checkpoint.load(tiny_checkpoint)
    out = checkpoint.save(tmp_path / "copy", loaded.network, loaded.config, loaded.training)
    again = checkpoint.load(out)
    assert again.config.model_version == loaded.config.model_version
    assert again.config.to_dict() == loaded.config.to_dict()
    for (k, a), (_, b) in zip(
        loaded.network.state_dict().items(), again.network.state_dict().items(), strict=True
    ):
        assert np.array_equal(a.numpy(), b.numpy()), k


def test_noise_encoding_averages_seeded_draws(tiny_checkpoint: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    assert scorer.config.encoding == "inversion" and scorer.config.draws == 1  # older configs read this way
    item = [(image(7), {"age": 55.0, "sex": "F"})]
    a = scorer.score_batch(item, encoding="noise", draws=3, steps=1, seed=0)[0]
    b = scorer.score_batch(item, encoding="noise", draws=3, steps=1, seed=0)[0]
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    assert a.params["encoding"] == "noise" and a.params["draws"] == 3 and a.params["steps"] == 1
    other_seed = scorer.score_batch(item, encoding="noise", draws=3, steps=1, seed=1)[0]
    one_draw = scorer.score_batch(item, encoding="noise", draws=1, steps=1, seed=0)[0]
    inverted = scorer.score_batch(item, seed=0)[0]
    assert len({a.score, other_seed.score, one_draw.score, inverted.score}) == 4
    assert inverted.params["encoding"] == "inversion"
    pair = scorer.score_batch([item[0], (image(8), {})], encoding="noise", draws=3, steps=1, batch_size=2)
    assert abs(pair[0].score - a.score) < 1e-6 * max(1.0, abs(a.score))  # draws batch per image, not across
    with pytest.raises(ValueError, match="encoding"):
        scorer.score_batch(item, encoding="sideways")
    with pytest.raises(ValueError, match="draws"):
        scorer.score_batch(item, encoding="noise", draws=0)


def test_sampling_recipe_is_checkpoint_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, ckpt)
    checkpoint.update_config(ckpt, encoding="noise", draws=2, noise_level=60, steps=1)
    scorer = Diff3MScorer.load(ckpt, device="cpu")
    r = scorer.score_batch([(image(9), None)])[0]
    assert (r.params["encoding"], r.params["draws"], r.params["noise_level"], r.params["steps"]) == (
        "noise",
        2,
        60,
        1,
    )
    for bad, match in (({"encoding": "sideways"}, "encoding"), ({"draws": 0}, "draws")):
        with pytest.raises(CheckpointError, match=match):
            checkpoint.update_config(ckpt, **bad)


def test_ehr_guidance(tiny_checkpoint: Path, tmp_path: Path) -> None:
    scorer = Diff3MScorer.load(tiny_checkpoint, device="cpu")
    measured = [(image(5), {"age": 60.0, "sex": "M", "bmi": 34.0, "systolic": 160.0, "weight": 110.0})]
    plain = scorer.score_batch(measured, seed=0)[0]
    assert plain.params["ehr_guidance"] == 1.0
    same = scorer.score_batch(measured, seed=0, ehr_guidance=1.0)[0]
    assert np.array_equal(plain.anomaly_map, same.anomaly_map)
    pushed = scorer.score_batch(measured, seed=0, ehr_guidance=4.0)[0]
    assert pushed.params["ehr_guidance"] == 4.0 and not np.allclose(pushed.anomaly_map, plain.anomaly_map)
    # nothing measured: the reference is the record itself, so guidance changes nothing
    demographics = [(image(5), {"age": 60.0, "sex": "M"})]
    a = scorer.score_batch(demographics, seed=0)[0]
    b = scorer.score_batch(demographics, seed=0, ehr_guidance=4.0)[0]
    assert np.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    off = scorer.score_batch(measured, seed=0, use_ehr=False, ehr_guidance=4.0)[0]  # image-only: no guidance
    assert np.array_equal(off.anomaly_map, scorer.score_batch(measured, seed=0, use_ehr=False)[0].anomaly_map)
    noise = scorer.score_batch(measured, encoding="noise", draws=2, steps=1, ehr_guidance=4.0)[0]
    assert np.isfinite(noise.anomaly_map).all()
    with pytest.raises(ValueError, match="guidance"):
        scorer.score_batch(measured, ehr_guidance=-1.0)
    ckpt = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, ckpt)
    assert checkpoint.update_config(ckpt, ehr_guidance=3).ehr_guidance == 3.0
    assert Diff3MScorer.load(ckpt, device="cpu").score_batch(measured)[0].params["ehr_guidance"] == 3.0
    for bad in (11.0, float("nan"), -0.5):
        with pytest.raises(CheckpointError, match="ehr_guidance"):
            checkpoint.update_config(ckpt, ehr_guidance=bad)
