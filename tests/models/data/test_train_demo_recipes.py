"""scripts/train_demo.py: the cpu recipe is what builtin:demo ships; the gpu test split is big enough."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from diff3m.models.data.phantoms import assign_split
from diff3m.models.profiles import Profile

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def train_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "scripts" / "train_demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_cpu_recipe_is_what_ships(train_demo: ModuleType) -> None:
    shipped = json.loads((ROOT / "diff3m/models/weights/demo/recipe.json").read_text())
    recipe = train_demo.RECIPES["cpu"]
    assert recipe.profile == Profile.from_dict(shipped["profile"])
    phantoms, args = shipped["phantoms"], recipe.phantom_args
    assert [phantoms[k] for k in ("n_normal", "n_abnormal", "size", "seed")] == [
        args[k] for k in ("n_normal", "n_abnormal", "size", "seed")
    ]
    assert phantoms["split_fractions"] == list(args["fractions"]) and phantoms["design"]["name"] == "standard"
    assert (recipe.steps, recipe.stage1_steps) == (shipped["steps"], shipped["stage1_steps"])
    assert recipe.stage2_ema_restart is shipped["stage2_ema_restart"] is True
    assert recipe.stage2_max_noise_level == shipped["stage2_max_noise_level"] == 200
    assert shipped["ehr_lr_scale"] == 1
    assert shipped["command"] == train_demo.command("cpu", 6000, 4000, True, shipped)


def test_command_writes_every_stage2_setting(train_demo: ModuleType) -> None:
    # a run made with other stage-2 settings than today's recipe still repeats as itself
    whole = {
        "stage2_ema_restart": False,
        "ehr_lr_scale": 1.0,
        "stage2_max_noise_level": None,
        "stage2_masked_branch": True,
        "stage2_draw": None,
    }
    line = train_demo.command("cpu", 4400, 4000, False, whole)
    assert line.endswith(
        "--steps 4400 --stage1-steps 4000 --no-ehr --no-stage2-ema-restart --ehr-lr-scale 1 "
        "--stage2-max-noise-level 1000 --stage2-masked-branch"
    )
    args = train_demo.parse_args(line.split()[2:])
    assert train_demo.stage2_options(args, train_demo.RECIPES["cpu"]) == {
        **whole,
        "stage2_max_noise_level": 1000,
    }
    eps_only = {**whole, "stage2_masked_branch": False}
    line = train_demo.command("cpu", 4400, 4000, True, eps_only)
    assert line.endswith("--stage2-max-noise-level 1000 --no-stage2-masked-branch")
    args = train_demo.parse_args(line.split()[2:])
    assert train_demo.stage2_options(args, train_demo.RECIPES["cpu"])["stage2_masked_branch"] is False
    banded = {**eps_only, "stage2_max_noise_level": 200, "stage2_draw": "0.5@49,0.5@100-199"}
    line = train_demo.command("cpu", 4400, 4000, True, banded)
    assert line.endswith("--no-stage2-masked-branch --stage2-draw 0.5@49,0.5@100-199")
    args = train_demo.parse_args(line.split()[2:])
    assert train_demo.stage2_options(args, train_demo.RECIPES["cpu"]) == banded
    # stage 1 alone: no stage-2 settings to repeat
    assert train_demo.command("cpu", 4000, 4000, True, whole).endswith("--stage1-steps 4000")


def test_gpu_recipe_test_split_has_200_per_class(train_demo: ModuleType) -> None:
    args = train_demo.RECIPES["gpu"].phantom_args
    n_normal, n_abnormal = args["n_normal"], args["n_abnormal"]
    counts = Counter(
        (assign_split(args["seed"], i, i >= n_normal, args["fractions"]), i >= n_normal)
        for i in range(n_normal + n_abnormal)
    )
    assert counts[("test", False)] >= 200 and counts[("test", True)] >= 200
    assert counts[("train", True)] == 0  # abnormal cases never train


def test_seconds_per_step_reads_the_train_log(train_demo: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "train_log.csv"
    rows = ["step,stage,loss,loss_eps,loss_gen,lr,seconds"]
    rows += [f"{s},1,0.1,0.1,0,0.001,{1.0 + 0.5 * s}" for s in (10, 20, 30, 40)]
    log.write_text("\n".join(rows) + "\n")
    assert train_demo._seconds_per_step(log, 10, 20) == pytest.approx(0.5)
    assert train_demo._seconds_per_step(log, 10, 40) == pytest.approx(0.5)


def test_stage2_options_resume_keeps_the_runs_own(train_demo: ModuleType, tmp_path: Path) -> None:
    def options(*flags: str) -> dict[str, object]:
        args = train_demo.parse_args(["--out", str(tmp_path), *flags])
        return train_demo.stage2_options(args, train_demo.RECIPES[args.recipe])

    # builtin:demo's recipe: EMA restarted, lr scale 1, below noise level 200
    recipe = {
        "stage2_ema_restart": True,
        "ehr_lr_scale": 1.0,
        "stage2_max_noise_level": 200,
        "stage2_masked_branch": True,
        "stage2_draw": None,
    }
    assert options() == recipe
    assert options("--resume") == recipe  # nothing to resume: a new run, the recipe's
    # the gpu recipe predates the options: EMA running on, the whole schedule
    whole = {
        "stage2_ema_restart": False,
        "ehr_lr_scale": 1.0,
        "stage2_max_noise_level": None,
        "stage2_masked_branch": True,
        "stage2_draw": None,
    }
    assert options("--recipe", "gpu") == whole
    (tmp_path / "train_state.pt").write_bytes(b"")
    keep = {
        "stage2_ema_restart": None,
        "ehr_lr_scale": None,
        "stage2_max_noise_level": None,
        "stage2_masked_branch": None,
        "stage2_draw": None,
    }
    assert options("--resume") == keep  # train() keeps its own
    assert options("--resume", "--no-stage2-ema-restart", "--ehr-lr-scale", "10") == {
        **keep,
        "stage2_ema_restart": False,
        "ehr_lr_scale": 10.0,
    }  # given: train() checks them against the stored run
    assert options("--no-stage2-ema-restart") == {**recipe, "stage2_ema_restart": False}
    assert options("--stage2-max-noise-level", "1000") == {**recipe, "stage2_max_noise_level": 1000}
    assert options("--no-stage2-masked-branch") == {**recipe, "stage2_masked_branch": False}
    assert options("--stage2-draw", "1@49,1@100-199") == {**recipe, "stage2_draw": "1@49,1@100-199"}
