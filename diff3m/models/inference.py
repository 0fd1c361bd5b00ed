"""Scoring with a Diff3M checkpoint: DDIM inversion + denoising, anomaly map, scores, ROI in source pixels."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from diff3m.models import checkpoint
from diff3m.models.diffusion import guided, noised_reconstruction, reconstruct
from diff3m.models.normative import ResidualStats
from diff3m.models.preprocess import Geometry, PreparedImage
from diff3m.models.schedule import DiffusionSchedule, timestep_grid
from diff3m.records import EhrRecord, FieldValue, Roi, ScoreResult

EhrInput = EhrRecord | Mapping[str, FieldValue] | None


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_threads() -> int:
    """Torch threads for CPU scoring: ``DIFF3M_CPU_THREADS`` if set, else 1 on machines of up to 4 cores.

    Measured in bench/RESULTS.md ("CPU options", "Inference vs the published recipe"): on a busy 2-core
    machine torch's default (one spinning OpenMP thread per core) made a demo pass 4-20x slower than one
    thread.
    """
    value = os.environ.get("DIFF3M_CPU_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else torch.get_num_threads()


@dataclass(frozen=True)
class MapScores:
    """Image scores of one anomaly map and its most anomalous region (on the model grid)."""

    scores: dict[str, float]
    box: tuple[int, int, int, int] | None  # r0, c0, r1, c1 (exclusive) on the grid


def smooth_map(diff: np.ndarray, sigma: float) -> np.ndarray:
    """A residual map smoothed as every smoothed score reads it (Gaussian, edge pixels repeated), float64."""
    return ndimage.gaussian_filter(np.asarray(diff, dtype=np.float64), sigma=sigma, mode="nearest")


def map_scores(
    diff: np.ndarray, geo: Geometry, sigma: float, stats: ResidualStats | None = None
) -> MapScores:
    """mse, max_abs, smoothed_max, smoothed_mean (+ normalized_max with ``stats``) over the image content.

    ROI: the blob around the peak of the normalized map when there are residual statistics, else of the
    smoothed map.
    """
    content = geo.content(diff).astype(np.float64)
    smooth = smooth_map(content, sigma)
    scores = {
        "mse": float(np.mean(content**2)),
        "max_abs": float(content.max()),
        "smoothed_max": float(smooth.max()),
        "smoothed_mean": float(smooth.mean()),
    }
    peak_map = smooth
    if stats is not None:
        full = smooth_map(diff, sigma)
        peak_map = geo.content(stats.z(full))
        scores["normalized_max"] = float(peak_map.max())
    peak = float(peak_map.max())
    if not np.isfinite(peak) or peak <= 0:
        return MapScores(scores, None)
    labels, _ = ndimage.label(peak_map >= 0.5 * peak)
    r, c = np.unravel_index(int(np.argmax(peak_map)), peak_map.shape)
    rows, cols = np.nonzero(labels == labels[r, c])
    box = (
        int(rows.min()) + geo.top,
        int(cols.min()) + geo.left,
        int(rows.max()) + 1 + geo.top,
        int(cols.max()) + 1 + geo.left,
    )
    return MapScores(scores, box)


class Diff3MScorer:
    """A loaded checkpoint that scores prepared images (load once, score many)."""

    def __init__(self, loaded: checkpoint.LoadedCheckpoint, device: torch.device) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.device = device
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        self.network = loaded.network.to(device).eval()
        self.schedule = DiffusionSchedule(self.config.schedule, device)
        self.residual_stats = loaded.residual_stats

    @classmethod
    def load(cls, ref: str | Path = "builtin:demo", device: str = "auto") -> Diff3MScorer:
        """Load a checkpoint (``builtin:demo`` or a directory) onto ``device`` (auto/cpu/cuda)."""
        dev = pick_device(device)
        return cls(checkpoint.load(ref, dev), dev)

    @property
    def name(self) -> str:
        """Model name (Diff3M)."""
        return self.config.model_name

    @property
    def version(self) -> str:
        """Model version: profile plus a digest of the weights."""
        return self.config.model_version

    @property
    def threshold(self) -> float:
        """Default decision threshold on the configured score."""
        return self.config.threshold

    @property
    def profile_name(self) -> str:
        """The profile the network was built with."""
        return self.config.profile.name

    @property
    def image_size(self) -> int:
        """Model grid size (pixels)."""
        return self.config.profile.image_size

    def score_batch(
        self,
        items: Sequence[tuple[PreparedImage, EhrInput]],
        steps: int | None = None,
        noise_level: int | None = None,
        use_ehr: bool = True,
        threshold: float | None = None,
        seed: int = 0,
        batch_size: int = 8,
        encoding: str | None = None,
        draws: int | None = None,
        ehr_guidance: float | None = None,
    ) -> list[ScoreResult]:
        """Score images with their EHR; one ScoreResult per item, in order.

        ``steps``, ``noise_level``, ``encoding``, ``draws`` and ``ehr_guidance`` default to the checkpoint's
        sampling recipe.
        """
        sampling = self._sampling(steps, noise_level, encoding, draws, ehr_guidance)
        thr = self.threshold if threshold is None else float(threshold)
        ehr_on = bool(use_ehr and self.config.use_ehr)
        results: list[ScoreResult] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + max(1, batch_size)]
            t0 = time.perf_counter()
            diffs, geos = self._residuals(chunk, sampling, ehr_on, seed)
            per_image = (time.perf_counter() - t0) / len(chunk)
            for (img, _), diff, geo in zip(chunk, diffs, geos, strict=True):
                results.append(self._result(diff, geo, thr, ehr_on, per_image, sampling, img))
        return results

    def raw_residuals(
        self,
        items: Sequence[tuple[PreparedImage, EhrInput]],
        steps: int | None = None,
        noise_level: int | None = None,
        use_ehr: bool = True,
        seed: int = 0,
        batch_size: int = 8,
        encoding: str | None = None,
        draws: int | None = None,
        ehr_guidance: float | None = None,
    ) -> tuple[np.ndarray, list[Geometry]]:
        """Unsmoothed residual maps |x - x_hat| on the model grid [N, S, S] and each image's placement.

        The sampling arguments default to the checkpoint's recipe, as in ``score_batch``.
        """
        sampling = self._sampling(steps, noise_level, encoding, draws, ehr_guidance)
        ehr_on = bool(use_ehr and self.config.use_ehr)
        maps: list[np.ndarray] = []
        geos: list[Geometry] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + max(1, batch_size)]
            diffs, chunk_geos = self._residuals(chunk, sampling, ehr_on, seed)
            maps += list(diffs)
            geos += chunk_geos
        return np.stack(maps), geos

    def residual_maps(
        self, items: Sequence[tuple[PreparedImage, EhrInput]], seed: int = 0, batch_size: int = 8
    ) -> np.ndarray:
        """Smoothed residual maps |x - x_hat| on the model grid [N, S, S], with the checkpoint's recipe."""
        raw, _ = self.raw_residuals(items, seed=seed, batch_size=batch_size)
        return np.stack([smooth_map(d, self.sigma) for d in raw])

    @property
    def sigma(self) -> float:
        """Gaussian smoothing of the residual map (model-grid pixels) for the smoothed scores."""
        return max(1.0, self.image_size / 64)

    def _sampling(
        self,
        steps: int | None,
        noise_level: int | None,
        encoding: str | None,
        draws: int | None,
        ehr_guidance: float | None = None,
    ) -> dict[str, int | str | float]:
        """The sampling recipe: the arguments given, the checkpoint's for the rest; checked."""
        level = noise_level or self.config.noise_level
        encoding = encoding or self.config.encoding
        draws = self.config.draws if draws is None else draws
        guidance = self.config.ehr_guidance if ehr_guidance is None else float(ehr_guidance)
        self.config.check_noise_level(level)
        self.config.check_encoding(encoding)
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if not 0.0 <= guidance <= checkpoint.MAX_EHR_GUIDANCE:
            limit = checkpoint.MAX_EHR_GUIDANCE
            raise ValueError(f"EHR guidance must be within 0..{limit:g}, got {guidance}")
        return {
            "steps": steps or self.config.steps,
            "noise_level": level,
            "encoding": encoding,
            "draws": draws,
            "ehr_guidance": guidance,
        }

    def _residuals(
        self,
        chunk: Sequence[tuple[PreparedImage, EhrInput]],
        sampling: dict[str, int | str | float],
        ehr_on: bool,
        seed: int,
    ) -> tuple[np.ndarray, tuple[Geometry, ...]]:
        """|x - x_hat| on the model grid for a batch, and each image's placement on the grid."""
        grids, geos = zip(*(img.to_grid(self.image_size) for img, _ in chunk), strict=True)
        x0 = torch.from_numpy(np.stack(grids))[:, None].to(self.device)
        grid = timestep_grid(int(sampling["noise_level"]), int(sampling["steps"]))
        x_hat = self.reconstruct(
            x0,
            [_values(e) for _, e in chunk],
            grid,
            ehr_on,
            seed,
            str(sampling["encoding"]),
            int(sampling["draws"]),
            float(sampling["ehr_guidance"]),
        )
        return (x0 - x_hat).abs()[:, 0].float().cpu().numpy(), geos

    @torch.inference_mode()
    def reconstruct(
        self,
        x0: torch.Tensor,
        values: Sequence[Mapping[str, FieldValue]],
        grid: list[int],
        use_ehr: bool,
        seed: int = 0,
        encoding: str = "inversion",
        draws: int = 1,
        ehr_guidance: float = 1.0,
    ) -> torch.Tensor:
        """The "normal-looking" reconstruction of a batch of model-grid images [B, 1, S, S].

        ``inversion``: the published DDIM inversion and denoising (deterministic). ``noise``: the mean of
        ``draws`` reconstructions from independent noise (seeded by ``seed``, the same for every image),
        all run as one batch. ``ehr_guidance`` other than 1 pushes each step away from the same study
        with an average patient's measurements (``diffusion.guided``; twice the passes).
        """
        torch.manual_seed(seed)
        net = self.network
        cond = reference = None
        if use_ehr:
            v, present = self.config.ehr.encode_batch(values)
            mask = torch.from_numpy(present).to(self.device)
            cond = net.condition(x0, torch.from_numpy(v).to(self.device), mask)
            if ehr_guidance != 1.0:
                average = self.config.ehr.population_reference(v)
                reference = net.condition(x0, torch.from_numpy(average).to(self.device), mask)
        bf16 = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            if encoding == "inversion":
                denoiser = guided(net, cond, reference, ehr_guidance)
                return reconstruct(self.schedule, denoiser, x0, grid).float()
            many = x0.repeat(draws, 1, 1, 1)
            conds = None if cond is None else cond.repeat(draws, 1)
            references = None if reference is None else reference.repeat(draws, 1)
            # the same draws for every image ("common random numbers"): a score does not depend on the batch
            gen = torch.Generator(self.device).manual_seed(seed)
            draw = torch.randn((draws, *x0.shape[1:]), generator=gen, device=self.device)
            noise = draw.repeat_interleave(x0.shape[0], dim=0)
            denoiser = guided(partial(net, with_gen=False), conds, references, ehr_guidance)
            x_hat = noised_reconstruction(self.schedule, denoiser, many, grid, noise)
        return x_hat.float().view(draws, *x0.shape).mean(0)

    def _result(
        self,
        diff: np.ndarray,
        geo: Geometry,
        thr: float,
        ehr_on: bool,
        seconds: float,
        sampling: dict[str, int | str | float],
        img: PreparedImage,
    ) -> ScoreResult:
        ms = map_scores(diff, geo, self.sigma, self.residual_stats)
        score = ms.scores[self.config.score_name]
        roi: Roi | None = geo.box_to_source(*ms.box) if ms.box else None
        return ScoreResult(
            score=score,
            abnormal=bool(score >= thr),
            threshold=thr,
            anomaly_map=np.clip(geo.to_source(diff), 0, None).astype(np.float32),
            scores=ms.scores,
            roi=roi,
            model_name=self.name,
            model_version=self.version,
            ehr_used=ehr_on,
            seconds=seconds,
            params={
                **sampling,
                "device": str(self.device),
                "profile": self.profile_name,
                "score_name": self.config.score_name,
                "image_size": self.image_size,
                "source_shape": [img.rows, img.columns],
            },
        )


def _values(ehr: EhrInput) -> Mapping[str, FieldValue]:
    if ehr is None:
        return {}
    if isinstance(ehr, EhrRecord):
        return ehr.values
    return ehr
