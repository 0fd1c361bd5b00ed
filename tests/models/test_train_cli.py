"""Training stages, resume, image-only ablation, and the ``diff3m train`` / ``diff3m score`` commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.models import checkpoint
from diff3m.models.train import PREDATING, STATE_FILE, train
from tests.models.synthetic import chest_like, write_samples


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_stage2_freezes_encoder_and_resume_continues(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "img", n=5)
    out = train(
        samples, tmp_path / "a", profile="tiny", steps=2, stage1_steps=2, calibration_images=0, progress=False
    )
    after_stage1 = torch.load(out / STATE_FILE, weights_only=False)
    assert after_stage1["stage"] == 1 and after_stage1["step"] == 2
    # stage 1 never trains the masked branch: that checkpoint scores with the noise encoding, not the
    # published inversion of the tiny profile, which the finished run gets back
    cfg = checkpoint.load_config(out)
    assert cfg.masked_branch is False and cfg.encoding == "noise"
    train(samples, tmp_path / "a", profile="tiny", steps=4, calibration_images=0, progress=False)
    cfg = checkpoint.load_config(out)
    assert cfg.masked_branch is True and cfg.encoding == "inversion"
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["step"] == 4 and state["stage"] == 2
    for key, value in state["net"].items():
        if key.startswith(("encoder.", "time_embed.", "ieca.query.")):
            assert torch.equal(value, after_stage1["net"][key]), key  # frozen in stage 2
        if key.startswith("mask_encoder1.") and key.endswith("weight"):
            assert not torch.equal(value, after_stage1["net"][key]), key  # initialised from encoder, trained
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and [r["stage"] for r in rows] == [
        "1",
        "1",
        "2",
        "2",
    ]
    with pytest.raises(ValueError, match="other options"):
        train(samples, tmp_path / "a", profile="tiny", steps=6, seed=1, calibration_images=0, progress=False)


def test_training_is_seeded(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "img", n=4)
    a = train(samples, tmp_path / "a", profile="tiny", steps=2, calibration_images=0, progress=False)
    b = train(samples, tmp_path / "b", profile="tiny", steps=2, calibration_images=0, progress=False)
    wa, wb = checkpoint.load(a).network.state_dict(), checkpoint.load(b).network.state_dict()
    # equal up to float rounding (oneDNN may pick another kernel on a process's first call)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    c = train(samples, tmp_path / "c", profile="tiny", steps=2, seed=7, calibration_images=0, progress=False)
    wc = checkpoint.load(c).network.state_dict()
    assert not all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_no_ehr_ablation_trains_same_network(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "img", n=4)
    out = train(
        samples, tmp_path / "n", profile="tiny", steps=2, use_ehr=False, calibration_images=0, progress=False
    )
    loaded = checkpoint.load(out)
    assert loaded.config.use_ehr is False
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert torch.equal(state["net"]["ieca.tokenizer.weight"], state["ema"]["ieca.tokenizer.weight"])


def test_no_normal_images_is_an_error(tmp_path: Path) -> None:
    samples = [s.__class__(**{**s.__dict__, "normal": False}) for s in write_samples(tmp_path / "img", n=2)]
    with pytest.raises(ValueError):
        train(samples, tmp_path / "x", profile="tiny", steps=1, calibration_images=0, progress=False)


def write_chexpert(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    labels = [
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ]
    rows = []
    for i in range(n):
        rel = f"CheXpert-v1.0/train/patient{i:05d}/study1/view1_frontal.jpg"
        path = root / "train" / f"patient{i:05d}" / "study1" / "view1_frontal.jpg"
        path.parent.mkdir(parents=True)
        Image.fromarray((chest_like(48, 40, rng) * 255).astype(np.uint8)).save(path)
        rows.append(
            {
                "Path": rel,
                "Sex": "Female" if i % 2 else "Male",
                "Age": 40 + i,
                "Frontal/Lateral": "Frontal",
                "AP/PA": "PA",
                **{k: "" for k in labels},
                "No Finding": "1.0",
            }
        )
    with (root / "train.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_cli_train_and_score(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import pydicom

    from tests.models.test_preprocess import make_ds

    runner = CliRunner()
    data = tmp_path / "CheXpert-v1.0"
    write_chexpert(data, 3)
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--layout",
            "chexpert",
            "--out",
            str(tmp_path / "ck"),
            "--profile",
            "tiny",
            "--steps",
            "2",
            "--no-ehr",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["use_ehr"] is False
    training = json.loads((tmp_path / "ck" / "training.json").read_text())
    assert training["options"]["stage2_ema_restart"] is True  # a new run restarts the EMA at stage 2
    args = ["train", "--data", str(data), "--layout", "chexpert", "--profile", "tiny", "--steps", "2"]
    flags = ["--no-stage2-ema-restart", "--ehr-lr-scale", "3"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "running-on"), *flags])
    assert res.exit_code == 0, res.output
    training = json.loads((tmp_path / "running-on" / "training.json").read_text())
    assert training["options"]["stage2_ema_restart"] is False and training["options"]["ehr_lr_scale"] == 3
    assert json.loads((tmp_path / "ck" / "training.json").read_text())["options"]["ehr_lr_scale"] == 1

    px = (chest_like(40, 36, np.random.default_rng(3)) * 4095).round()
    ds = make_ds(
        px, 12, PhotometricInterpretation="MONOCHROME1", PatientAge="055Y", PatientSex="F", ViewPosition="PA"
    )
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    (tmp_path / "ehr.json").write_text(json.dumps({"bmi": 31.0, "age": 56}))
    res = runner.invoke(
        app,
        [
            "score",
            "--checkpoint",
            str(tiny_checkpoint),
            str(tmp_path / "x.dcm"),
            "--ehr",
            str(tmp_path / "ehr.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["label"] in ("normal", "abnormal") and out["score"] == out["scores"]["mse"]
    assert out["map"]["rows"] == 40 and out["map"]["columns"] == 36
    assert out["ehr"] == {"age": 56, "sex": "F", "view": "PA", "bmi": 31.0}
    assert set(out["timings"]) == {"load_s", "preprocess_s", "inference_s"} and out["ehr_used"]
    assert pydicom.dcmread(tmp_path / "x.dcm").Rows == 40

    res = runner.invoke(app, ["score", "--checkpoint", str(tmp_path / "missing"), str(tmp_path / "x.dcm")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--layout",
            "nope",
            "--out",
            str(tmp_path / "z"),
            "--profile",
            "tiny",
            "--steps",
            "1",
        ],
    )
    assert res.exit_code == 2 and "layout" in res.output


def test_ablation_arms_share_stage1(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "img", n=4)
    opts = {"profile": "tiny", "stage1_steps": 2, "calibration_images": 0, "progress": False}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts)
    shared = torch.load(stage1 / STATE_FILE, weights_only=False)
    plain_opts = {**opts, "stage2_ema_restart": False}  # the EMA runs on from stage 1
    ehr = train(samples, tmp_path / "ehr", steps=3, stage1_from=stage1, **plain_opts)
    img = train(samples, tmp_path / "img-only", steps=3, use_ehr=False, stage1_from=stage1, **plain_opts)
    key = "encoder.0.0.conv.weight"
    for arm, use_ehr in ((ehr, True), (img, False)):
        state = torch.load(arm / STATE_FILE, weights_only=False)
        assert state["step"] == 3 and state["stage"] == 2 and state["options"]["use_ehr"] is use_ehr
        assert torch.equal(state["net"][key], shared["net"][key])  # frozen, shared
        rows = list(csv.DictReader((arm / "train_log.csv").open()))
        assert [r["step"] for r in rows] == ["3"] and checkpoint.load(arm).config.use_ehr is use_ehr
    with pytest.raises(ValueError, match="other options"):
        train(samples, tmp_path / "x", steps=3, stage1_from=stage1, seed=5, **opts)
    # an arm that restarts the EMA at stage 2 (the default for a new arm) forks from the same stage 1 and
    # trains the same weights; its one stage-2 EMA update is the first of a fresh warm-up (decay 1/10),
    # not the run's third (3/12)
    restart = train(samples, tmp_path / "restart", steps=3, stage1_from=stage1, **opts)
    state, plain = (torch.load(a / STATE_FILE, weights_only=False) for a in (restart, ehr))
    assert state["options"]["stage2_ema_restart"] is True and plain["options"]["stage2_ema_restart"] is False
    key = "decoder.0.0.conv1.conv.weight"
    assert torch.equal(state["net"][key], plain["net"][key])
    for arm, decay in ((state, 1 / 10), (plain, 3 / 12)):
        expected = torch.lerp(shared["ema"][key], arm["net"][key], 1 - decay)
        assert torch.allclose(arm["ema"][key], expected, atol=1e-6)
    with pytest.raises(ValueError, match="other options"):  # resuming an arm keeps its recipe
        train(samples, tmp_path / "restart", steps=4, **plain_opts)
    train(samples, tmp_path / "restart", steps=4, **opts)  # and by default resumes with it
    assert torch.load(restart / STATE_FILE, weights_only=False)["options"]["stage2_ema_restart"] is True
    # a stage 1 written before the options existed still forks
    for name in PREDATING:
        del shared["options"][name]
    old_stage1 = tmp_path / "old-s1"
    old_stage1.mkdir()
    torch.save(shared, old_stage1 / STATE_FILE)
    train(samples, tmp_path / "old-arm", steps=3, stage1_from=old_stage1, **opts)
    # a run written before the options existed ran the EMA on, and resumes doing so
    old_run = tmp_path / "old-run"
    old_run.mkdir()
    for name in PREDATING:
        del plain["options"][name]
    torch.save(plain, old_run / STATE_FILE)
    with pytest.raises(ValueError, match="other options"):
        train(samples, old_run, steps=4, stage2_ema_restart=True, **opts)
    train(samples, old_run, steps=4, **opts)
    assert torch.load(old_run / STATE_FILE, weights_only=False)["options"]["stage2_ema_restart"] is False
    with pytest.raises(ValueError, match="stage 1 must end"):
        train(samples, tmp_path / "y", steps=4, stage1_from=ehr, **opts)
    with pytest.raises(ValueError, match="no train_state"):
        train(samples, tmp_path / "z", steps=3, stage1_from=tmp_path / "nowhere", **opts)


def test_an_arm_forked_from_stage1_is_the_continuous_run(tmp_path: Path) -> None:
    """Forking after stage 1 changes nothing: the arm's weights, EMA and calibration are the ones one
    uninterrupted run trains (builtin:demo is made forked; ``make demo-weights`` runs it in one go)."""
    samples = write_samples(tmp_path / "img", n=4)
    opts = {"profile": "tiny", "stage1_steps": 2, "calibration_images": 2, "progress": False}
    stage2 = {"stage2_ema_restart": True, "stage2_max_noise_level": 200}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts, **stage2)
    forked = train(samples, tmp_path / "forked", steps=4, stage1_from=stage1, **opts, **stage2)
    whole = train(samples, tmp_path / "whole", steps=4, **opts, **stage2)
    a, b = (torch.load(run / STATE_FILE, weights_only=False) for run in (forked, whole))
    for part in ("net", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["rng"], b["rng"])
    configs = [json.loads((run / "config.json").read_text()) for run in (forked, whole)]
    assert configs[0]["threshold"] == configs[1]["threshold"] > 0
    assert configs[0]["max_noise_level"] == 200


def test_ehr_lr_scale_trains_only_the_ehr_tokens_faster(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "img", n=4)
    opts = {"profile": "tiny", "stage1_steps": 2, "calibration_images": 0, "progress": False}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts)
    plain = train(samples, tmp_path / "plain", steps=4, stage1_from=stage1, **opts)
    fast = train(samples, tmp_path / "fast", steps=4, stage1_from=stage1, ehr_lr_scale=10, **opts)
    state = torch.load(fast / STATE_FILE, weights_only=False)
    assert state["options"]["ehr_lr_scale"] == 10
    n_tokens = sum(p.numel() for p in checkpoint.load(fast).network.ehr_pathway()[0].parameters())
    lr = state["options"]["lr"]
    groups = state["opt"]["param_groups"]
    assert [g["lr"] for g in groups] == [lr, 10 * lr]
    assert sum(state["opt"]["state"][i]["exp_avg"].numel() for i in groups[1]["params"]) == n_tokens
    key = "ieca.tokenizer.weight"
    s1_w, plain_w = (torch.load(r / STATE_FILE, weights_only=False)["net"][key] for r in (stage1, plain))
    moved = {"plain": (plain_w - s1_w).abs().mean(), "fast": (state["net"][key] - s1_w).abs().mean()}
    assert moved["fast"] > 5 * moved["plain"] > 0  # Adam steps scale with the learning rate
    assert len(torch.load(plain / STATE_FILE, weights_only=False)["opt"]["param_groups"]) == 1
    # the image-only arm has no EHR tokens to train: the scale leaves it as it was (an equal budget)
    arms = [
        train(
            samples, tmp_path / f"img-{s}", steps=4, use_ehr=False, stage1_from=stage1, ehr_lr_scale=s, **opts
        )
        for s in (1, 10)
    ]
    a, b = (checkpoint.load(arm).network.state_dict() for arm in arms)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a resumed run keeps its scale; another one is refused; a bad one is an error
    train(samples, fast, steps=5, **opts)
    assert torch.load(fast / STATE_FILE, weights_only=False)["options"]["ehr_lr_scale"] == 10
    with pytest.raises(ValueError, match="other options"):
        train(samples, fast, steps=6, ehr_lr_scale=1, **opts)
    with pytest.raises(ValueError, match="positive"):
        train(samples, tmp_path / "bad", steps=3, stage1_from=stage1, ehr_lr_scale=0, **opts)


def record_timesteps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The timesteps every later ``q_sample`` noises to, in order (until ``monkeypatch.undo()``)."""
    from diff3m.models.schedule import DiffusionSchedule

    drawn: list[int] = []
    q_sample = DiffusionSchedule.q_sample

    def spy(self: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        drawn.extend(t.tolist())
        return q_sample(self, x0, t, noise)

    monkeypatch.setattr(DiffusionSchedule, "q_sample", spy)
    return drawn


def test_stage2_max_noise_level_trains_and_scores_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diff3m.models.inference import Diff3MScorer

    samples = write_samples(tmp_path / "img", n=4)
    opts = {"profile": "tiny", "stage1_steps": 2, "calibration_images": 0, "progress": False}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts)
    drawn = record_timesteps(monkeypatch)
    low = train(samples, tmp_path / "low", steps=40, stage1_from=stage1, stage2_max_noise_level=50, **opts)
    monkeypatch.undo()
    assert len(drawn) >= 76 and max(drawn[:76]) < 50  # 38 stage-2 steps of batch 2, before calibration
    assert torch.load(low / STATE_FILE, weights_only=False)["options"]["stage2_max_noise_level"] == 50
    cfg = checkpoint.load_config(low)
    assert cfg.max_noise_level == 50 and cfg.noise_level == 50  # the profile's 100 is above what was trained
    scorer = Diff3MScorer.load(low, "cpu")
    with pytest.raises(ValueError, match="trained at"):
        scorer.score_batch([], noise_level=51)  # the recipe is checked before any image
    with pytest.raises(checkpoint.CheckpointError, match="trained at"):
        checkpoint.update_config(low, noise_level=60)
    checkpoint.update_config(low, noise_level=20)
    # a resumed run keeps its range; another one is refused
    train(samples, low, steps=41, **opts)
    with pytest.raises(ValueError, match="other options"):
        train(samples, low, steps=42, stage2_max_noise_level=1000, **opts)
    # the whole schedule is the published recipe, stored as None; out of range is an error
    whole = train(
        samples, tmp_path / "whole", steps=3, stage1_from=stage1, stage2_max_noise_level=1000, **opts
    )
    assert torch.load(whole / STATE_FILE, weights_only=False)["options"]["stage2_max_noise_level"] is None
    assert checkpoint.load_config(whole).max_noise_level is None
    with pytest.raises(ValueError, match="within 2..1000"):
        train(samples, tmp_path / "bad", steps=3, stage1_from=stage1, stage2_max_noise_level=1001, **opts)


def test_stage2_draw_trains_in_its_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = write_samples(tmp_path / "img", n=4)
    opts = {"profile": "tiny", "stage1_steps": 2, "calibration_images": 0, "progress": False}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts)
    drawn = record_timesteps(monkeypatch)
    banded = train(
        samples, tmp_path / "banded", steps=40, stage1_from=stage1, stage2_draw="1@10-12,1@3", **opts
    )
    monkeypatch.undo()
    assert set(drawn[:76]) <= {3, 10, 11, 12} and {3, 10} <= set(drawn[:76])  # 38 stage-2 steps of batch 2
    stored = torch.load(banded / STATE_FILE, weights_only=False)["options"]
    assert stored["stage2_draw"] == "1@3,1@10-12" and stored["stage2_max_noise_level"] is None
    assert json.loads((banded / "training.json").read_text())["options"]["stage2_draw"] == "1@3,1@10-12"
    assert checkpoint.load_config(banded).max_noise_level == 13  # the top band's end + 1
    # a resumed run keeps its draw; another one is refused
    train(samples, banded, steps=41, **opts)
    with pytest.raises(ValueError, match="other options"):
        train(samples, banded, steps=42, stage2_draw="1@3", **opts)
    # the bands lie below the max level when one is given
    capped = train(
        samples,
        tmp_path / "capped",
        steps=3,
        stage1_from=stage1,
        stage2_max_noise_level=50,
        stage2_draw="1@49",
        **opts,
    )
    assert checkpoint.load_config(capped).max_noise_level == 50
    with pytest.raises(ValueError, match="reaches 50"):
        train(
            samples,
            tmp_path / "bad",
            steps=3,
            stage1_from=stage1,
            stage2_max_noise_level=50,
            stage2_draw="1@49,1@50",
            **opts,
        )


def test_stage2_without_the_masked_branch_trains_eps_only(tmp_path: Path) -> None:
    from dataclasses import replace

    from diff3m.models.inference import Diff3MScorer
    from diff3m.models.profiles import get_profile

    samples = write_samples(tmp_path / "img", n=4)
    noise_profile = replace(get_profile("tiny"), name="tiny-noise", encoding="noise", draws=2)
    opts = {"profile": noise_profile, "stage1_steps": 2, "calibration_images": 0, "progress": False}
    stage1 = train(samples, tmp_path / "s1", steps=2, **opts)
    first = torch.load(stage1 / STATE_FILE, weights_only=False)["net"]
    eps = train(samples, tmp_path / "eps", steps=5, stage1_from=stage1, stage2_masked_branch=False, **opts)
    full = train(samples, tmp_path / "full", steps=5, stage1_from=stage1, **opts)
    state = torch.load(eps / STATE_FILE, weights_only=False)
    assert state["options"]["stage2_masked_branch"] is False
    net = state["net"]
    # the masked branch stays as stage 2 set it up (encoders copied from the main one), the rest trains
    for key in ("mask_encoder1.0.0.conv.weight", "mask_encoder2.0.0.conv.weight"):
        assert torch.equal(net[key], first["encoder.0.0.conv.weight"]), key
    assert torch.equal(net["mask_head.2.conv.weight"], first["mask_head.2.conv.weight"])
    assert not torch.equal(net["decoder.0.0.conv1.conv.weight"], first["decoder.0.0.conv1.conv.weight"])
    full_net = torch.load(full / STATE_FILE, weights_only=False)["net"]
    assert not torch.equal(full_net["mask_head.2.conv.weight"], first["mask_head.2.conv.weight"])
    network = checkpoint.load(eps).network
    untrained = [*network.frozen_in_stage2(), *network.masked_branch()]
    n_trained = sum(1 for _ in network.parameters()) - sum(1 for m in untrained for _ in m.parameters())
    assert sum(len(g["params"]) for g in state["opt"]["param_groups"]) == n_trained
    rows = list(csv.DictReader((eps / "train_log.csv").open()))
    assert {float(r["loss_gen"]) for r in rows} == {0.0} and all(r["loss"] == r["loss_eps"] for r in rows)
    # the checkpoint records the branch untrained and scores with the noise encoding only
    cfg = checkpoint.load_config(eps)
    assert cfg.masked_branch is False and cfg.encoding == "noise"
    assert checkpoint.load_config(full).masked_branch is True
    with pytest.raises(ValueError, match="masked branch"):
        Diff3MScorer.load(eps, "cpu").score_batch([], encoding="inversion")
    with pytest.raises(checkpoint.CheckpointError, match="masked branch"):
        checkpoint.update_config(eps, encoding="inversion")
    # a resumed run keeps its setting; another one is refused
    train(samples, eps, steps=6, **opts)
    assert torch.load(eps / STATE_FILE, weights_only=False)["options"]["stage2_masked_branch"] is False
    with pytest.raises(ValueError, match="other options"):
        train(samples, eps, steps=7, stage2_masked_branch=True, **opts)
    # a profile that scores with the published inversion needs the branch
    with pytest.raises(ValueError, match="inversion encoding"):
        train(samples, tmp_path / "bad", steps=3, profile="tiny", stage2_masked_branch=False, progress=False)
