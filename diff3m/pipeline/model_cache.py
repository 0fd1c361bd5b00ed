"""One loaded model per worker process (loading is slow; scoring reuses it)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from diff3m.config import ConfigError, Settings

if TYPE_CHECKING:
    from diff3m.models.inference import Diff3MScorer

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], Diff3MScorer] = {}


def scorer_for(settings: Settings) -> Diff3MScorer:
    """The process's scorer for the configured checkpoint and device, loaded on first use.

    ConfigError when ``[model]`` asks for a sampling recipe the checkpoint cannot score with (a noise level
    above the one it was trained to), so a worker stops at start instead of failing every study.
    """
    from diff3m.models.inference import Diff3MScorer

    key = (settings.model.checkpoint, settings.model.device)
    with _LOCK:
        if key not in _CACHE:
            scorer = Diff3MScorer.load(settings.model.checkpoint, device=settings.model.device)
            try:
                scorer.config.check_noise_level(settings.model.noise_level or scorer.config.noise_level)
            except ValueError as err:
                raise ConfigError(f"model.noise_level: {err} ({settings.model.checkpoint})") from err
            _CACHE[key] = scorer
        return _CACHE[key]


def loaded() -> bool:
    """True once this process has a model in memory."""
    return bool(_CACHE)


def clear() -> None:
    """Forget loaded models (tests; a worker switching checkpoints)."""
    with _LOCK:
        _CACHE.clear()
