"""Training curves as a PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_training(history: Sequence[Any], best_epoch: int, path: Path, title: str = "") -> Path:
    """Loss per epoch (left axis) and validation NDCG@10 / HR@10 (right), best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(epochs, [h.loss for h in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted cross-entropy", color="tab:blue")
    right = ax.twinx()
    scored = [h for h in history if h.valid]
    right.plot(
        [h.epoch for h in scored],
        [h.valid["ndcg@10"] for h in scored],
        color="tab:orange",
        label="valid NDCG@10",
    )
    right.plot(
        [h.epoch for h in scored],
        [h.valid["hr@10"] for h in scored],
        color="tab:green",
        linestyle="--",
        label="valid HR@10",
    )
    right.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    right.set_ylabel("validation metric")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(title or f"training: best validation epoch {best_epoch}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
