"""Checkpoint directories: model.safetensors (EMA weights), config.json, training.json; checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diff3m.models.diffusion import ENCODINGS
from diff3m.models.ehr import EhrEncoder
from diff3m.models.network import Diff3MNet
from diff3m.models.normative import STATS_FILE, ResidualStats
from diff3m.models.profiles import Profile
from diff3m.models.schedule import ScheduleConfig

FORMAT_VERSION = 1
MODEL_NAME = "Diff3M"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
BUILTIN_DIR = Path(__file__).resolve().parent / "weights"
SCORE_NAMES = ("mse", "max_abs", "smoothed_max", "smoothed_mean", "normalized_max")
NEEDS_STATS = ("normalized_max",)  # scores that need residual_stats.safetensors (normative.py)
MAX_EHR_GUIDANCE = 10.0  # beyond this the amplified difference is mostly the model's noise


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit this code."""


@dataclass
class CheckpointConfig:
    """Everything needed to rebuild the network and score with it (config.json)."""

    profile: Profile
    ehr: EhrEncoder
    schedule: ScheduleConfig
    steps: int
    noise_level: int
    score_name: str = "mse"
    encoding: str = "inversion"  # how the image reaches the noise level (diffusion.ENCODINGS)
    draws: int = 1  # noise draws averaged per image ("noise" encoding)
    ehr_guidance: float = 1.0  # EHR guidance scale (diffusion.guided); 1 = the plain conditional model
    threshold: float = 0.0
    use_ehr: bool = True  # trained with EHR conditioning (False: image-only ablation)
    max_noise_level: int | None = None  # highest noise level stage 2 trained at (None: the whole schedule)
    masked_branch: bool = True  # stage 2 trained the masked branch (the inversion encoding needs it)
    model_name: str = MODEL_NAME
    model_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top_noise_level(self) -> int:
        """The highest noise level the model can score at: where stage 2 stopped, or the whole schedule."""
        return self.max_noise_level or self.schedule.timesteps

    def check_noise_level(self, level: int) -> None:
        """ValueError unless the model can score at noise level ``level`` (2 .. ``top_noise_level``)."""
        if not 2 <= level <= self.top_noise_level:
            raise ValueError(
                f"noise level must be within 2..{self.top_noise_level} (the levels this model was trained "
                f"at), got {level}"
            )

    def check_encoding(self, encoding: str) -> None:
        """ValueError unless the model can score with ``encoding`` (one of ``diffusion.ENCODINGS``)."""
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
        if encoding == "inversion" and not self.masked_branch:
            raise ValueError(
                "the inversion encoding needs the masked branch, which this model's training left out "
                "(train --no-stage2-masked-branch): use the noise encoding"
            )

    def build_network(self) -> Diff3MNet:
        """An untrained network of this checkpoint's shape."""
        return Diff3MNet(self.profile, self.ehr.n_tokens, self.ehr.group_indices())

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (config.json)."""
        return {
            "format_version": self.format_version,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "profile": self.profile.to_dict(),
            "ehr": self.ehr.to_dict(),
            "schedule": self.schedule.to_dict(),
            "steps": self.steps,
            "noise_level": self.noise_level,
            "encoding": self.encoding,
            "draws": self.draws,
            "ehr_guidance": self.ehr_guidance,
            "score_name": self.score_name,
            "threshold": self.threshold,
            "use_ehr": self.use_ehr,
            "max_noise_level": self.max_noise_level,
            "masked_branch": self.masked_branch,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointConfig:
        """Parse config.json content; raises CheckpointError with the reason."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format {version!r} is not supported (this code reads {FORMAT_VERSION})"
            )
        if data.get("model_name") != MODEL_NAME:
            raise CheckpointError(f"not a {MODEL_NAME} checkpoint (model_name={data.get('model_name')!r})")
        try:
            cfg = cls(
                profile=Profile.from_dict(data["profile"]),
                ehr=EhrEncoder.from_dict(data["ehr"]),
                schedule=ScheduleConfig(**data["schedule"]),
                steps=int(data["steps"]),
                noise_level=int(data["noise_level"]),
                score_name=str(data.get("score_name", "mse")),
                encoding=str(data.get("encoding", "inversion")),
                draws=int(data.get("draws", 1)),
                ehr_guidance=float(data.get("ehr_guidance", 1.0)),
                threshold=float(data.get("threshold", 0.0)),
                use_ehr=bool(data.get("use_ehr", True)),
                max_noise_level=None if data.get("max_noise_level") is None else int(data["max_noise_level"]),
                masked_branch=bool(data.get("masked_branch", True)),
                model_version=str(data.get("model_version", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"config.json is incomplete or invalid: {err!r}") from err
        if cfg.score_name not in SCORE_NAMES:
            raise CheckpointError(f"unknown score {cfg.score_name!r}; expected one of {SCORE_NAMES}")
        if cfg.draws < 1:
            raise CheckpointError(f"draws must be at least 1, got {cfg.draws}")
        if not 0.0 <= cfg.ehr_guidance <= MAX_EHR_GUIDANCE:
            raise CheckpointError(
                f"ehr_guidance must be within 0..{MAX_EHR_GUIDANCE:g}, got {cfg.ehr_guidance}"
            )
        if cfg.schedule.timesteps != cfg.profile.timesteps:
            raise CheckpointError("schedule and profile disagree on the number of timesteps")
        try:
            cfg.check_encoding(cfg.encoding)
            cfg.check_noise_level(cfg.noise_level)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        return cfg


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk: its config, the network with weights, and training metadata."""

    path: Path
    config: CheckpointConfig
    network: Diff3MNet
    training: dict[str, Any]
    residual_stats: ResidualStats | None = None


def resolve(ref: str | Path) -> Path:
    """A checkpoint directory from a path or ``builtin:NAME`` (diff3m/models/weights/NAME)."""
    text = str(ref)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"bad builtin checkpoint name {name!r}")
        path = BUILTIN_DIR / name
        if not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"builtin checkpoint {name!r} is not installed ({path} has no {WEIGHTS_FILE}); "
                "train one with `diff3m train` and pass its directory instead"
            )
        return path
    return Path(text)


def save(
    out_dir: str | Path,
    network: torch.nn.Module,
    config: CheckpointConfig,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the weights, config (with a version derived from the weights) and training metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in network.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"model_name": config.model_name, "profile": config.profile.name})
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    tmp.replace(out / WEIGHTS_FILE)
    config.model_version = f"{config.profile.name}-{digest}"
    _write_json(out / CONFIG_FILE, config.to_dict())
    _write_json(out / TRAINING_FILE, training or {})
    return out


def update_config(ckpt_dir: str | Path, **changes: Any) -> CheckpointConfig:
    """Change config values (e.g. threshold, score_name) of a saved checkpoint in place."""
    path = Path(ckpt_dir) / CONFIG_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    cfg = CheckpointConfig.from_dict(data)
    _write_json(path, cfg.to_dict())
    return cfg


def load_config(ref: str | Path) -> CheckpointConfig:
    """A checkpoint's config.json, checked, without loading its weights."""
    path = resolve(ref)
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path / CONFIG_FILE}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} is not a JSON object")
    return CheckpointConfig.from_dict(data)


def load(ref: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read and check a checkpoint; any mismatch with this code raises CheckpointError saying what."""
    path = resolve(ref)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}")
    config = load_config(path)
    network = config.build_network()
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:
        raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {err}") from err
    _check_state(network, state, path)
    network.load_state_dict(state)
    network.to(device).eval()
    training: dict[str, Any] = {}
    if (path / TRAINING_FILE).is_file():
        try:
            training = json.loads((path / TRAINING_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            training = {}
    try:
        stats = ResidualStats.load(path)
    except Exception as err:
        raise CheckpointError(f"cannot read {path / STATS_FILE}: {err}") from err
    size = config.profile.image_size
    if stats is not None and stats.mean.shape != (size, size):
        raise CheckpointError(f"{path / STATS_FILE} is {stats.mean.shape}, the model grid is {size} x {size}")
    if stats is None and config.score_name in NEEDS_STATS:
        raise CheckpointError(
            f"score {config.score_name!r} needs {STATS_FILE} in {path} (written by training's calibration)"
        )
    return LoadedCheckpoint(path, config, network, training, stats)


def _check_state(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs "
                f"{tuple(expected[k].shape)})"
            )
        raise CheckpointError(
            f"weights in {path} do not fit the network its config.json describes: " + "; ".join(parts)
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
