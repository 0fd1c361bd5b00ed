"""The Diff3M network (epsilon UNet, IECA, PCM) built from a profile."""

from __future__ import annotations

from diff3m.models.network.model import Diff3MNet, count_parameters

__all__ = ["Diff3MNet", "count_parameters"]
