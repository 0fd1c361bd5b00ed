"""The worker's model cache: one scorer per checkpoint and device, checked against ``[model]``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diff3m.config import ConfigError, load_settings
from diff3m.models import checkpoint
from diff3m.pipeline import model_cache


def test_a_noise_level_the_checkpoint_was_not_trained_to_is_a_config_error(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    ckpt = tmp_path / "low"
    shutil.copytree(tiny_checkpoint, ckpt)
    checkpoint.update_config(ckpt, noise_level=20, max_noise_level=50)  # stage 2 trained at t < 50
    model_cache.clear()
    try:
        fits = load_settings(None, model={"checkpoint": str(ckpt), "device": "cpu", "noise_level": 50})
        assert model_cache.scorer_for(fits) is model_cache.scorer_for(fits)  # loaded once
        model_cache.clear()
        above = load_settings(None, model={"checkpoint": str(ckpt), "device": "cpu", "noise_level": 60})
        with pytest.raises(ConfigError, match=r"model\.noise_level: .*trained at.*got 60"):
            model_cache.scorer_for(above)
        assert not model_cache.loaded()  # nothing half-usable is kept
    finally:
        model_cache.clear()
