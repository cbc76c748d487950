"""Loss and overlap metrics for the nested sigmoid regions (WT, TC, ET)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per region (summed over batch and space), averaged over regions."""
    p = torch.sigmoid(logits)
    dims = (0, *range(2, logits.ndim))
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + target.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Equally weighted BCE-with-logits + soft Dice over all regions."""
    pw = None if pos_weight is None else torch.full((logits.shape[1],) + (1,) * (logits.ndim - 2), pos_weight)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    return bce + soft_dice_loss(logits, target)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def region_dice(prob: np.ndarray, truth: np.ndarray, threshold) -> list[float]:
    """Dice per region of ``prob[r] > threshold[r]`` against ``truth[r]`` (region first)."""
    thr = np.broadcast_to(np.asarray(threshold, np.float32), (prob.shape[0],))
    return [dice(prob[r] > thr[r], truth[r]) for r in range(prob.shape[0])]
