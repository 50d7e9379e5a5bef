"""The TRM training objective and its metrics (the reference ACTLossHead, as functions).

Input: the carry returned by one ACT step (its `current_data["labels"]`, `halted`, `steps`) and
that step's outputs (`logits` [B, S, V], `q_halt_logits` [B]; an HRM in training adds
`q_continue_logits` and its bootstrapped `target_q_continue` [B]). Output: the scalar loss
(float64: per-sequence mean stablemax cross-entropy summed over rows, plus 0.5 x the sum of the
q-halt BCE against whole-sequence correctness and, when a target is given, the q-continue BCE
against it), the metric sums and the argmax predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trm_core.model import Carry

IGNORE_LABEL = -100


def _s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    # The stablemax "exp": 1/(1-x) below zero, x+1 above; grows linearly, never overflows.
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = _s(x)
    return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL,
                            valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token loss in float64; 0 (as -0.0) where the label is ignored or masked out."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    if valid_mask is None:
        valid_mask = labels != ignore_index
    safe_labels = torch.where(valid_mask, labels, 0).to(torch.int64)
    picked = torch.gather(logprobs, index=safe_labels.unsqueeze(-1), dim=-1).squeeze(-1)
    return -torch.where(valid_mask, picked, 0)


def act_loss(carry: Carry, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, metrics, preds) for one ACT step, exactly as the reference loss head.

    Every row counts in the loss, halted or not (deep supervision); metrics count only rows that
    halted this step and have at least one supervised token. Metrics are sums, not means.
    """
    labels = carry.current_data["labels"]
    logits, q_halt = outputs["logits"], outputs["q_halt_logits"]
    with torch.no_grad():
        preds = torch.argmax(logits, dim=-1)
        mask = labels != IGNORE_LABEL
        loss_counts = mask.sum(-1)
        loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)  # (B, 1)
        is_correct = mask & (preds == labels)
        seq_is_correct = is_correct.sum(-1) == loss_counts  # a row with no label counts as correct
        valid = carry.halted & (loss_counts > 0)
        metrics = {
            "count": valid.sum(),
            "accuracy": torch.where(valid, (is_correct.to(torch.float32) / loss_divisor).sum(-1), 0).sum(),
            "exact_accuracy": (valid & seq_is_correct).sum(),
            "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_is_correct)).sum(),
            "steps": torch.where(valid, carry.steps, 0).sum(),
        }
    lm_loss = (stablemax_cross_entropy(logits, labels, valid_mask=mask) / loss_divisor).sum()
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_is_correct.to(q_halt.dtype), reduction="sum")
    metrics["lm_loss"] = lm_loss.detach()
    metrics["q_halt_loss"] = q_halt_loss.detach()
    if "target_q_continue" not in outputs:
        return lm_loss + 0.5 * q_halt_loss, metrics, preds
    q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"],
                                                         reduction="sum")
    metrics["q_continue_loss"] = q_continue_loss.detach()
    return lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, preds
