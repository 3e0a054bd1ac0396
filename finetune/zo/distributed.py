"""Data-parallel ZO on ``torch.distributed``: what ranks exchange, and nothing else.

ZO needs no gradient exchange: every rank regenerates the same noise from the same seed, so a step
only needs the losses to agree. Two ways to split a step across ``world`` ranks (``--dp-mode``):

* ``batch``: the global minibatch (the same on every rank: it comes from the shared data seed) is cut
  into contiguous shards, one per rank. Each rank computes its shard's per-example loss terms at
  ``theta +- eps z`` (:meth:`DataParallel.closure`); the terms are all-gathered (a few floats per example)
  and every rank reduces the global batch's terms with the loss's own reduction, so every rank sees the
  global loss, computes the same projected gradient and applies the same update (the ranks agree bit for
  bit). A shard is padded as wide as its global batch, so each example's terms, and the global loss, are
  the single process's bit for bit whenever a matrix product's rows do not depend on its row count: true
  for the tiny test models on our CPU (``tests/test_distributed.py``), not for SmolLM2-135M (9e-7 relative
  on the loss; docs/distributed.md).
  :meth:`DataParallel.mean` is the plain weighted all-reduce (float64) for a closure that only has a
  shard's mean loss.
* ``directions``: methods with several SPSA directions per step (n-SPSA, ``q > 1``) give each rank
  every ``world``-th direction, evaluated on the whole batch, and all-gather the ``(g, L+, L-)`` of each
  direction (:meth:`DataParallel.spread`); methods with a candidate pool (gv, greedy, ldsd) share out the
  candidates' one-sided losses the same way (:meth:`DataParallel.spread_losses`), and every rank then makes
  the step's last one or two passes on the whole batch. Seeds are drawn on every rank from the same stream,
  so a direction is named by its index; the exchanged numbers are the losses.

A parameter checksum (integer sums of each block's bits) is compared across ranks every
``check_every`` steps: a rank that fell out of step stops the run with a one-line error on every rank.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) :func:`from_env` returns None and nothing
here runs. The process group is gloo on CPU and nccl on CUDA, with ``env://`` rendezvous.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from finetune.common.errors import ZotuneError

DP_MODES = ("batch", "directions")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_env(mode: str = "batch", check_every: int = 100, device: str | None = None) -> "DataParallel | None":
    """The data-parallel context of a ``torchrun`` process (initialising the process group: gloo on CPU,
    nccl on CUDA, ``env://``), or None for a plain single process."""
    if not launched() and not dist.is_initialized():
        return None
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return DataParallel(mode=mode, check_every=check_every)


class DataParallel:
    """This rank's view of a data-parallel run over the default process group."""

    def __init__(self, mode: str = "batch", check_every: int = 100, group=None):
        if mode not in DP_MODES:
            raise ZotuneError(f"unknown --dp-mode {mode!r}; use batch or directions")
        if check_every < 0:
            raise ZotuneError(f"--check-every must be >= 0 (got {check_every}; 0 = never)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.mode, self.check_every = mode, check_every
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world, "dp_mode": self.mode, "backend": dist.get_backend(self.group),
                "check_every": self.check_every}

    # ---- batch mode -----------------------------------------------------------------------------
    def bounds(self, n: int) -> list[tuple[int, int]]:
        """Contiguous shards of n examples, one per rank, sizes differing by at most one."""
        if n < self.world:
            raise ZotuneError(f"--batch-size {n} is smaller than the {self.world} ranks; use at least "
                              f"{self.world} (or fewer ranks, or --dp-mode directions)")
        base, extra = divmod(n, self.world)
        out, at = [], 0
        for r in range(self.world):
            size = base + (r < extra)
            out.append((at, at + size))
            at += size
        return out

    def shard(self, batch: Sequence) -> list:
        lo, hi = self.bounds(len(batch))[self.rank]
        return list(batch[lo:hi])

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of every rank's ``local`` (rank order), for a global batch of ``n`` rows: an all-gather,
        padded to the largest shard (no arithmetic, so the values arrive bit for bit)."""
        bounds = self.bounds(n)
        longest = max(hi - lo for lo, hi in bounds)
        send = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=self.device)
        send[: local.shape[0]] = local.to(self.device)
        parts = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(parts, send, group=self.group)
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, bounds)]).to(local.device)

    def closure(self, terms: Callable[[list], torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor],
                batch: Sequence) -> Callable[[], torch.Tensor]:
        """The loss closure of a batch-mode step: ``terms(shard)`` gives this rank's per-example loss terms
        (one row per example), which are all-gathered; ``reduce(global_terms)`` is the global batch's loss,
        the same on every rank."""
        shard = self.shard(batch)
        n = len(batch)
        return lambda: reduce(self.gather_rows(terms(shard), n))

    def mean(self, value: float, weight: float) -> float:
        """The weighted mean over ranks of ``value`` (a shard's mean loss, weighted by its size), in float64."""
        t = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return float(t[0] / t[1])

    # ---- directions mode ------------------------------------------------------------------------
    def spread(self, engine, closure: Callable[[], torch.Tensor], directions: list, eps: float) -> list:
        """SPSA along each of ``directions``: rank r evaluates directions r, r + world, ... on the whole batch,
        and the ``(g, plus, minus)`` triples are all-gathered. ``engine.forwards`` counts every rank's passes
        (the forward passes over the global batch, as one process makes them)."""
        from finetune.zo.engine import SPSA

        q = len(directions)
        mine = torch.zeros((q, 3), dtype=torch.float64, device=self.device)
        for i in range(self.rank, q, self.world):
            mine[i] = torch.tensor(tuple(engine.spsa(closure, directions[i], eps)), dtype=torch.float64)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        engine.forwards += 2 * (q - len(range(self.rank, q, self.world)))
        return [SPSA(*map(float, parts[i % self.world][i].tolist())) for i in range(q)]

    def spread_losses(self, engine, closure: Callable[[], torch.Tensor], directions: list, eps: float) -> list[float]:
        """One-sided losses ``L(theta + eps v)`` of a candidate pool (gv, greedy, ldsd): rank r evaluates
        candidates r, r + world, ... on the whole batch and the losses are all-gathered (float64, exact)."""
        k = len(directions)
        mine = torch.zeros(k, dtype=torch.float64, device=self.device)
        for i in range(self.rank, k, self.world):
            with engine.perturbed(directions[i], eps):
                mine[i] = engine.loss(closure)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        engine.forwards += k - len(range(self.rank, k, self.world))
        return [float(parts[i % self.world][i]) for i in range(k)]

    # ---- consistency ----------------------------------------------------------------------------
    def check(self, named_params: Sequence[tuple[str, torch.Tensor]], when: str) -> None:
        """Compare a checksum of the parameters across ranks; raise a one-line error (on every rank) if
        any block differs. The checksum is the integer sum of each block's bits, so any single changed
        element changes it."""
        sums = torch.stack([_bits_sum(p).to(self.device) for _, p in named_params])
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        bad = (low != high).nonzero().flatten().tolist()
        if bad:
            raise ZotuneError(f"the ranks' parameters differ {when} ({len(bad)} block(s), first "
                              f"{named_params[bad[0]][0]}): a rank fell out of step; check that every rank runs "
                              "the same code, model and options, then rerun (or --resume)")

    def due(self, step: int) -> bool:
        return self.check_every > 0 and step % self.check_every == 0

    # ---- coordination ---------------------------------------------------------------------------
    def share(self, value):
        """Rank 0's ``value`` (a small picklable object) on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, error: str | None) -> None:
        """Raise ``error`` (a message found on rank 0, or None) on every rank."""
        error = self.share(error)
        if error is not None:
            raise ZotuneError(error)

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def close(self) -> None:
        """End the process group (at the end of a torchrun command)."""
        if dist.is_initialized():
            dist.destroy_process_group()


_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_sum(p: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor's elements read as integers of the same width (int64, wrapping)."""
    flat = p.detach().contiguous().view(-1)
    return flat.view(_INT[flat.element_size()]).sum(dtype=torch.int64)
