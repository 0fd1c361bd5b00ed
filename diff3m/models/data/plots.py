"""Evaluation figures: ROC and precision-recall curves, and a montage of anomaly maps (PNG, no display)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class MontageCase:
    """One scored image for the montage: image and anomaly map as small thumbnails."""

    study_id: str
    score: float
    normal: bool
    findings: tuple[str, ...]
    image: np.ndarray  # [0, 1]
    anomaly_map: np.ndarray  # >= 0, same shape as image


def roc_plot(path: Path, fpr: np.ndarray, tpr: np.ndarray, auroc: float, title: str) -> Path:
    """Write the ROC curve (with the chance diagonal and the 95 % specificity line)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.axvline(0.05, ls=":", c="red", lw=1, label="95% specificity")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pr_plot(
    path: Path, recall: np.ndarray, precision: np.ndarray, ap: float, prevalence: float, title: str
) -> Path:
    """Write the precision-recall curve (with the prevalence baseline)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(recall, precision, lw=2, label=f"AP {ap:.3f}")
    ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def montage(path: Path, highest: list[MontageCase], lowest: list[MontageCase]) -> Path:
    """Two rows per group (image, image + anomaly map) for the highest and the lowest scored cases."""
    groups = [("highest", highest), ("lowest", lowest)]
    cols = max(1, len(highest), len(lowest))
    fig, axes = plt.subplots(4, cols, figsize=(1.8 * cols, 8.0), dpi=80, squeeze=False)
    vmax = max([float(np.percentile(c.anomaly_map, 99.5)) for _, g in groups for c in g] + [1e-6])
    for g, (name, cases) in enumerate(groups):
        for j in range(cols):
            top, bottom = axes[2 * g, j], axes[2 * g + 1, j]
            top.axis("off")
            bottom.axis("off")
            if j >= len(cases):
                continue
            c = cases[j]
            label = "normal" if c.normal else ",".join(c.findings) or "abnormal"
            top.imshow(c.image, cmap="gray", vmin=0, vmax=1)
            top.set_title(f"{name} {j + 1}\n{c.score:.4g}\n{label[:22]}", fontsize=7)
            bottom.imshow(c.image, cmap="gray", vmin=0, vmax=1)
            bottom.imshow(c.anomaly_map, cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
