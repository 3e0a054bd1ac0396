"""Meta-training under data parallelism (``torchrun ... cli.py meta-train``).

Every rank draws the same task and batch (they are functions of the seed and the step) and works on its
shard of the batch:

* the ZO losses (the SPSA pair at θ ± εσu) are the global batch's, exactly: per-example terms are
  all-gathered as in data-parallel fine-tuning (:class:`finetune.zo.distributed.DataParallel`);
* a differentiable loss (the meta loss at θ', the first-order trajectory's loss) is this shard's share of
  the global loss (:meth:`TaskScorer.shard_loss`); after its backward the gradients are all-reduced (summed),
  so every rank holds the global batch's gradient: the first-order trajectory is data-parallel SGD, and the
  meta-gradient (computed from those gradients, or for ``unroll > 1`` the bank's own gradients, all-reduced)
  is the same on every rank.

Gradients summed across ranks differ from one process's in the last bits (another summation order), so a
run on N ranks matches one process to a tolerance, not bit for bit (``tests/test_distributed.py``), and a
resume must keep the number of ranks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist

from finetune.zo.distributed import DataParallel


class MetaParallel:
    """The data-parallel side of one meta-training rank."""

    def __init__(self, dp: DataParallel):
        self.dp = dp

    def loss_fn(self, scorer, batch: Sequence) -> Callable[[torch.nn.Module], torch.Tensor]:
        """``loss_fn(model)``: without autograd, the global batch's loss (gathered terms); with autograd,
        this shard's differentiable share of it (call :meth:`sync` after its backward)."""
        shard = self.dp.shard(batch)

        def loss(model):
            if torch.is_grad_enabled():
                return scorer.shard_loss(model, shard, batch)
            return self.dp.closure(lambda s: scorer.loss_terms(model, s, like=batch),
                                   lambda t: scorer.reduce_terms(t, batch), batch)()
        return loss

    def sync(self, tensors: list[torch.Tensor | None], value: torch.Tensor | None = None) -> float | None:
        """Sum ``tensors`` (gradients; None stays None on every rank) across ranks in place, in one flat
        buffer per dtype and device; with ``value`` (a shard's share of a loss), return the global loss."""
        present = [t for t in tensors if t is not None]
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in present:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for ts in groups.values():
            flat = torch.cat([t.reshape(-1) for t in ts]).to(self.dp.device)
            dist.all_reduce(flat, group=self.dp.group)
            flat = flat.to(ts[0].device)
            at = 0
            for t in ts:
                t.copy_(flat[at: at + t.numel()].view_as(t))
                at += t.numel()
        if value is None:
            return None
        total = torch.tensor([float(value.detach())], dtype=torch.float64, device=self.dp.device)
        dist.all_reduce(total, group=self.dp.group)
        return float(total)
