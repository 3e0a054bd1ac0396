"""The field's ZO baselines on the seeded engine: Sparse-MeZO, LOZO, block-coordinate ZO, FZOO and HiZOO.

Each is a :class:`~finetune.zo.optim.ZOOptimizer` (``step(closure)``, ``state_dict``/``load_state_dict``) with
plain SGD updates, built from the engine's :class:`~finetune.zo.engine.Direction`: nothing direction-sized is
stored, every perturbation and update is regenerated from seeds. Forward passes per step (``engine.forwards``
counts each one) and state:

============  =====================================================  ================  =========================
method        direction                                              forwards / step   state
============  =====================================================  ================  =========================
sparse-mezo   ``1[|theta| <= h_b] * z`` (matrices), ``z`` (vectors)  2                 one threshold per matrix
lozo          ``U V^T`` per matrix (V per window), ``z`` (vectors)   2                 a step counter
bcd           ``z`` on a random subset of layers, 0 elsewhere        2                 none
fzoo          N one-sided Rademacher ``u_i``, + the unperturbed loss N + 1             none
hizoo         ``H^{-1/2} * z``, H a diagonal-Hessian EMA             3                 H^{-1/2}: fp32, per parameter
============  =====================================================  ================  =========================

``docs/methods.md`` explains each method, its defaults and the public code's pitfalls these avoid.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

import torch
from torch import nn

from finetune.zo.engine import BelowMagnitude, Direction, Elementwise
from finetune.zo.kernels import fusable
from finetune.zo.noise import GaussianNoise, LowRankNoise, keyed_seed, rademacher_like
from finetune.zo.optim import ZOOptimizer

BASELINES = ("sparse-mezo", "lozo", "bcd", "fzoo", "hizoo")
_WINDOW, _ACTIVE = 11, 12  # purposes of keyed_seed: LOZO's window seeds, BCD's active sets


def _one_direction(name: str, kw: dict) -> None:
    if kw.pop("q", 1) != 1:
        raise ValueError(f"{name} takes one direction per step (q = 1)")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


# --- Sparse-MeZO ----------------------------------------------------------------------------------------


def magnitude_thresholds(params: list[torch.Tensor], sparsity: float) -> list[float | None]:
    """Per matrix (``ndim >= 2``), the threshold h with ``|theta| <= h`` for the ``1 - sparsity`` fraction of
    its entries of smallest magnitude (at least one entry; ties at h are included); ``inf`` where that is
    every entry (sparsity 0: weights that later grow past the initial largest one keep training, so the
    method is MeZO); None for vectors. One ``kthvalue`` on an fp32 copy (``torch.quantile`` refuses tensors
    over 2^24 elements)."""
    out: list[float | None] = []
    for p in params:
        if p.ndim < 2:
            out.append(None)
            continue
        flat = p.detach().reshape(-1).abs().float()
        k = min(flat.numel(), max(1, math.ceil(round((1 - sparsity) * flat.numel(), 6))))
        out.append(math.inf if k == flat.numel() else float(flat.kthvalue(k).values))
    return out


class SparseMeZO(ZOOptimizer):
    """Sparse-MeZO (Liu et al., arXiv 2402.15751): MeZO that perturbs and updates only the small-magnitude
    entries of each matrix.

    At construction, each matrix b gets a threshold ``h_b`` such that the ``1 - sparsity`` fraction of its
    entries with the smallest ``|theta_b|`` lie at or below it (``sparsity`` is the fraction NOT trained).
    Every step uses the mask ``m_b = 1[|theta_b| <= h_b]`` of the current unperturbed weights (the paper's
    dynamic mask, thresholds fixed): ``g = (L(theta + eps m z) - L(theta - eps m z)) / (2 eps)`` and
    ``theta -= lr g m z``. The mask is evaluated on the unperturbed values in the +eps pass, the -eps pass and
    the update (the engine never writes perturbed values back), so the three agree entry by entry; it is
    never stored. Vectors (norm gains ~1, biases) are trained densely: their magnitudes say nothing about
    importance and they are a negligible share of the dimension. Embedding tables and a tied head are
    matrices and are masked. Weight decay, if any, is applied after the update and to the masked entries
    only. State: the thresholds (one float per matrix), computed from the initial weights and kept in
    ``state_dict`` so a resumed run keeps them. 2 forward passes per step.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, sparsity: float = 0.8, **kw):
        if not 0 <= sparsity < 1:
            raise ValueError("sparsity (the fraction of each matrix not trained) must be in [0, 1)")
        _one_direction("Sparse-MeZO", kw)
        super().__init__(model, lr, eps, sparsity=sparsity, **kw)
        self.thresholds = magnitude_thresholds(self.engine.params, sparsity)
        self.engine.prepare_fused_kernels()

    @property
    def multipliers(self) -> list[BelowMagnitude | None]:
        return [None if h is None else BelowMagnitude(h) for h in self.thresholds]

    def masks(self) -> list[torch.Tensor | None]:
        """The current masks (materialised, for inspection and tests)."""
        return [None if m is None else m.of(p.detach(), _identity)
                for m, p in zip(self.multipliers, self.engine.params)]

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group, mult = self.param_groups[0], self.multipliers
        seed = self.draw_seed()
        g, plus, minus = self.engine.spsa(closure, Direction(seed, multipliers=mult), group["eps"])
        return self._finish(group, (plus + minus) / 2, g, plus, minus, Direction([(seed, g)], multipliers=mult),
                            seed=seed)

    def _decay(self, group: dict) -> None:
        """Done in :meth:`_apply`, after the update, so that the update's mask is the forward passes' mask."""

    def _apply(self, group: dict, estimate: Direction) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        if wd == 0:
            return self.engine.update_(estimate, -lr)
        d = self.engine.resolve(estimate)
        for i, p in enumerate(group["params"]):
            mult = d.multiplier(i)
            keep = None if mult is None else mult.of(p.detach(), _identity)  # before the update moves p
            self.engine.add_direction_(p.data, d, i, -lr)
            if keep is not None:
                p.mul_(1 - lr * wd * keep.to(p.dtype))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["sparse_thresholds"] = list(self.thresholds)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.thresholds = list(state_dict["zo"]["sparse_thresholds"])
        super().load_state_dict(state_dict)


# --- LOZO -------------------------------------------------------------------------------------------


class LOZO(ZOOptimizer):
    """LOZO (Chen et al., arXiv 2410.07698): MeZO with low-rank perturbations ``U V^T`` of every matrix.

    At step t (counted from 0) in window ``w = t // interval``, each matrix b (``m x n``, ``ndim >= 2``, seen
    as ``shape[0] x rest``; embedding tables included, as in the public code) is perturbed by
    ``U_b V_b^T`` with ``U_b`` (``m x rank``) drawn from the step's seed and ``V_b`` (``n x rank``) from the
    window's seed; vectors get the engine's plain noise at the step's seed
    (:class:`~finetune.zo.noise.LowRankNoise`). ``g = (L(theta + eps Z) - L(theta - eps Z)) / (2 eps)`` and
    ``theta -= lr g Z``, with the same Z: U and V are regenerated from their own seeds in the two passes and
    in the update, so a V refresh never changes which U the update uses (the public code draws V and U from
    one stream when it refreshes V and only U in the update, so on refresh steps it updates along a
    different U). The window seeds are a function of the optimizer's seed and w, so a resumed run has the
    same V. Entries have variance ``rank`` (not normalised, as in the public code, so its learning rates
    carry over). State: the step counter. 2 forward passes per step.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, rank: int = 2, interval: int = 50,
                 seed: int = 0, **kw):
        if rank < 1 or interval < 1:
            raise ValueError("LOZO needs rank >= 1 and interval >= 1")
        _one_direction("LOZO", kw)
        super().__init__(model, lr, eps, seed=seed, lozo_rank=rank, lozo_interval=interval, **kw)
        self.base_seed, self.t = int(seed), 0
        self._noise: LowRankNoise | None = None
        self.engine.prepare_fused_kernels(table=False)

    def window_seed(self, window: int) -> int:
        return keyed_seed(self.base_seed, window, _WINDOW)

    def noise(self) -> LowRankNoise:
        """This step's low-rank noise (a new object, with a new V, when a window starts)."""
        group = self.param_groups[0]
        seed = self.window_seed(self.t // group["lozo_interval"])
        if self._noise is None or self._noise.window_seed != seed:
            shapes = [p.shape for p in self.engine.params]
            self._noise = LowRankNoise(self.engine.noise, shapes, group["lozo_rank"], seed,
                                       loops=self.engine.fused_kernels())
        return self._noise

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group, noise = self.param_groups[0], self.noise()
        seed = self.draw_seed()
        g, plus, minus = self.engine.spsa(closure, Direction(seed, noise=noise), group["eps"])
        record = self._finish(group, (plus + minus) / 2, g, plus, minus, Direction([(seed, g)], noise=noise),
                              seed=seed, window=self.t // group["lozo_interval"])
        self.t += 1
        return record

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["lozo"] = {"t": self.t, "base_seed": self.base_seed}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        lozo = state_dict["zo"]["lozo"]
        self.t, self.base_seed, self._noise = lozo["t"], lozo["base_seed"], None
        super().load_state_dict(state_dict)


# --- block-coordinate ZO ---------------------------------------------------------------------------------


def layer_groups(model: nn.Module, params: list[torch.Tensor]) -> list[list[int]]:
    """Block indices grouped by layer: one group per child of the model's layer stack (the ``nn.ModuleList``
    of two or more modules of one type holding the most parameters), and one group of every other block
    (embeddings, final norm, an untied head). A model without such a stack: one group per block."""
    index = {id(p): i for i, p in enumerate(params)}
    stack, most = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(c) for c in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > most:
                stack, most = module, size
    if stack is None:
        return [[i] for i in range(len(params))]
    groups, seen = [], set()
    for layer in stack:
        group = sorted({index[id(p)] for p in layer.parameters() if id(p) in index} - seen)
        seen.update(group)
        if group:
            groups.append(group)
    rest = [i for i in range(len(params)) if i not in seen]
    return groups + ([rest] if rest else [])


def active_count(layers: float, groups: int) -> int:
    """``layers`` >= 1 is a count of groups (an integer), 0 < ``layers`` < 1 a fraction of them (at least one)."""
    if layers >= 1:
        if layers != int(layers):
            raise ValueError(f"a count of layers must be an integer, not {layers}")
        k = int(layers)
    elif layers > 0:
        k = max(1, round(layers * groups))
    else:
        raise ValueError("the number of active layers must be > 0")
    if k > groups:
        raise ValueError(f"{k} active layers, but the model has {groups} layer groups")
    return k


class BlockCoordinateZO(ZOOptimizer):
    """Block-coordinate ZO (LeZO, arXiv 2410.09823; MeZO-BCD, arXiv 2501.19099): each step perturbs and
    updates only k randomly chosen layer groups (:func:`layer_groups`: each transformer layer, plus one
    group of the embeddings, final norm and an untied head, as in MeZO-BCD's code), with MeZO's estimate on
    them: ``g = (L(theta + eps z_A) - L(theta - eps z_A)) / (2 eps)``, ``theta_A -= lr g z_A``, every other
    block untouched (no noise drawn, nothing written: a step is cheaper than MeZO's). The active set is k
    groups drawn without replacement from a generator keyed by the step's seed, so it is replayed, never
    stored. Weight decay, if any, applies to the active matrices only. No state. 2 forward passes per step.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, layers: float = 1, **kw):
        _one_direction("block-coordinate ZO", kw)
        super().__init__(model, lr, eps, bcd_layers=layers, **kw)
        self.groups = layer_groups(model, self.engine.params)
        self.k = active_count(layers, len(self.groups))
        self._active: set[int] = set()

    def active_groups(self, seed: int) -> list[int]:
        """The groups step ``seed`` perturbs (sorted)."""
        gen = torch.Generator().manual_seed(keyed_seed(seed, 0, _ACTIVE))
        return sorted(torch.randperm(len(self.groups), generator=gen)[: self.k].tolist())

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group = self.param_groups[0]
        seed = self.draw_seed()
        active = self.active_groups(seed)
        self._active = {i for a in active for i in self.groups[a]}
        scales = [1.0 if i in self._active else 0.0 for i in range(len(self.engine.blocks))]
        g, plus, minus = self.engine.spsa(closure, Direction(seed, scales), group["eps"])
        return self._finish(group, (plus + minus) / 2, g, plus, minus, Direction([(seed, g)], scales),
                            seed=seed, active=active)

    def _decay(self, group: dict) -> None:
        if group["weight_decay"] > 0:
            factor = 1 - group["lr"] * group["weight_decay"]
            for i, p in enumerate(group["params"]):
                if p.ndim >= 2 and i in self._active:
                    p.mul_(factor)


# --- FZOO ---------------------------------------------------------------------------------------------


class FZOO(ZOOptimizer):
    """FZOO (arXiv 2506.09034): N one-sided Rademacher perturbations and a step normalised by the spread of
    their losses.

    Per step, on one batch: ``l_0 = L(theta)`` and ``l_i = L(theta + eps u_i)`` for N seeds, ``u_i`` +-1
    entries (:func:`~finetune.zo.noise.rademacher_like`); ``sigma = std(l_1..l_N)`` (population form, as
    the public code); ``theta -= lr * sum_i (l_i - l_0) / (N sigma) * u_i``, regenerating each ``u_i`` from
    its seed. The step is scale-free: about ``lr / sqrt(N)`` per coordinate whatever eps and the loss scale
    (so lr means something else than in MeZO: the public code's lr 1e-5..5e-5). When the losses have no
    spread (``sigma <= 1e-6 max(1, |l_0|)``: ties, a loss that does not depend on the weights, eps rounded
    away) there is no information and no step (``skipped`` in the record); the public code divides by zero.
    Weights in fp16/bf16 receive the N terms summed in fp32 and rounded once. The record's loss is ``l_0``.
    No state. N + 1 forward passes per step.
    """

    MIN_SPREAD = 1e-6

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, n: int = 8, **kw):
        if n < 2:
            raise ValueError("FZOO needs n >= 2 directions (the step divides by their losses' spread)")
        _one_direction("FZOO", kw)
        super().__init__(model, lr, eps, fzoo_n=n, **kw)
        self.rademacher = rademacher_like(self.engine.noise)

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group = self.param_groups[0]
        eps, n = group["eps"], group["fzoo_n"]
        l0 = self.engine.loss(closure)
        seeds = [self.draw_seed() for _ in range(n)]
        losses = []
        for seed in seeds:
            with self.engine.perturbed(Direction(seed, noise=self.rademacher), eps):
                losses.append(self.engine.loss(closure))
        record = {"losses": losses, "seeds": seeds}
        if not all(math.isfinite(x) for x in [l0, *losses]):
            return {"loss": math.nan, "projected_grad": math.nan, "loss_plus": math.nan, "loss_minus": l0, **record}
        sigma, mean = statistics.pstdev(losses), statistics.fmean(losses)
        if sigma <= self.MIN_SPREAD * max(1.0, abs(l0)):
            return {"loss": l0, "projected_grad": 0.0, "loss_plus": mean, "loss_minus": l0, "spread": sigma,
                    "skipped": True, **record}
        coeffs = [(x - l0) / (n * sigma) for x in losses]
        estimate = Direction(list(zip(seeds, coeffs)), noise=self.rademacher)
        return self._finish(group, l0, sigma / eps, mean, l0, estimate, spread=sigma, coefficients=coeffs,
                            skipped=False, **record)

    def _apply(self, group: dict, estimate: Direction) -> None:
        lr = group["lr"]
        d = self.engine.resolve(estimate)
        for i, p in enumerate(group["params"]):
            if p.dtype in (torch.float32, torch.float64):
                self.engine.add_direction_(p.data, d, i, -lr)
            else:  # sum the N terms in fp32, round once (each term alone can be below half an ulp)
                acc = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                self.engine.add_direction_(acc, d, i, -lr)
                p.copy_(p.float().add_(acc))


# --- HiZOO --------------------------------------------------------------------------------------------


class HiZOO(ZOOptimizer):
    """HiZOO (Zhao et al., arXiv 2402.15173): MeZO with the perturbation scaled by a diagonal-Hessian estimate.

    Per step, on one batch: ``l_0 = L(theta)``; ``u = H^{-1/2} z`` (z the seeded noise); ``l+- = L(theta +- eps
    u)``; ``g = (l+ - l-) / (2 eps)``; ``theta -= lr g u`` with the same ``H`` that the two passes used (the public
    code updates H first); then, with ``Delta = l+ + l- - 2 l_0``,
    ``H <- (1 - alpha) H + alpha |Delta| H |z^2 - 1| / (2 eps^2)`` (the paper's Eq. 8-9, whose
    ``E[Delta H (z^2 - 1)] / (2 eps^2)`` is the Hessian's diagonal; the public code drops the ``-1``). H is
    then positive for ever. ``alpha`` must be > 0: the public scripts' default 0 keeps ``H = 1``, MeZO with a
    wasted pass. The record's loss is ``l_0``. 3 forward passes per step.

    State: the scaling ``s = H^{-1/2}`` itself, one fp32 tensor per parameter (``+4 bytes`` per parameter, also
    for bf16/fp16 models: the EMA's increments are far below a half-precision ulp), initialised to ones. Its
    update is ``s <- s f^{-1/2}`` with ``f = (1 - alpha) + alpha |Delta| |z^2 - 1| / (2 eps^2)``, H's rule:
    storing s rather than H saves an inverse square root of every entry at each of the step's writes. H is
    :meth:`hessians` (``s^-2``). A state saved with H (before 2026-12-07) loads as ``s = H^{-1/2}``.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, alpha: float = 1e-6, **kw):
        if not 0 < alpha < 1:
            raise ValueError("HiZOO's Hessian smoothing alpha must be in (0, 1); 0 would be MeZO with a wasted pass")
        _one_direction("HiZOO", kw)
        super().__init__(model, lr, eps, hizoo_alpha=alpha, **kw)
        self.engine.prepare_fused_kernels()

    def scalings(self) -> list[torch.Tensor]:
        """``s = H^{-1/2}``, one fp32 tensor per block (ones on first use): the state itself."""
        out = []
        for p in self.param_groups[0]["params"]:
            state = self.state[p]
            if "hizoo_h" in state:  # a state saved with H
                state["hizoo_s"] = state.pop("hizoo_h").rsqrt()
            if "hizoo_s" not in state:
                state["hizoo_s"] = torch.ones(p.shape, dtype=torch.float32, device=p.device)
            out.append(state["hizoo_s"])
        return out

    def hessians(self) -> list[torch.Tensor]:
        """H, one fp32 tensor per block (``s^-2``, computed)."""
        return [s.square().reciprocal_() for s in self.scalings()]

    @property
    def multipliers(self) -> list[Elementwise]:
        """The step's noise multipliers: ``H^{-1/2}``, the stored scalings."""
        return [Elementwise(s) for s in self.scalings()]

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group, mult = self.param_groups[0], self.multipliers
        l0 = self.engine.loss(closure)
        seed = self.draw_seed()
        g, plus, minus = self.engine.spsa(closure, Direction(seed, multipliers=mult), group["eps"])
        delta = plus + minus - 2 * l0
        self._pending = (seed, g, delta)
        return self._finish(group, l0, g, plus, minus, Direction([(seed, g)], multipliers=mult),
                            seed=seed, hessian_delta=delta)  # (_apply runs only if l_0 and g are finite)

    def _apply(self, group: dict, estimate: Direction) -> None:
        """``theta -= lr g s z``, then ``s *= f^{-1/2}``, from one materialised z per block part (the engine's
        update along ``estimate`` would materialise z a second time)."""
        seed, g, delta = self._pending
        lr, alpha, eps = group["lr"], group["hizoo_alpha"], group["eps"]
        c = alpha * abs(delta) / (2 * eps**2) if math.isfinite(delta) else None
        noise = self.engine.noise
        factors: dict = {}  # per dtype: s's factor of every table entry (the same numbers, computed once)
        fused = self.engine.fused_kernels()
        for i, (s, p) in enumerate(zip(self.scalings(), group["params"])):
            numel = p.numel()
            if self._apply_sliced(noise, i, p, s, seed, lr * g, c, alpha, factors, fused):
                continue
            # table noise: one table chunk at a time, so z and the temporaries stay small and in cache
            step = numel if isinstance(noise, GaussianNoise) else getattr(noise, "chunk", numel)
            flat_p, flat_s = p.data.view(-1), s.view(-1)
            for at in range(0, numel, step):
                ps, ss = flat_p[at: at + step], flat_s[at: at + step]
                z = torch.zeros_like(ps)  # the z of the two passes
                noise.add(z, seed, i, 1.0, out=z, at=at, numel=numel)
                if lr * g != 0.0:
                    ps.addcmul_(z, ss.to(p.dtype), value=-lr * g)  # the s of the two passes
                if c is not None:
                    ss.mul_(_scaling_factor(z, c, alpha))

    @staticmethod
    def _apply_sliced(noise, i: int, p: torch.Tensor, s: torch.Tensor, seed: int, step: float, c: float | None,
                      alpha: float, factors: dict, fused=None) -> bool:
        """:meth:`_apply` on block i with table noise (``z = sign * table[off:]`` per table chunk), bit for bit:
        the update is the same ``addcmul`` with the table's values; s's factor ``f^{-1/2}`` depends on z only
        through the table entry (``sign^2 = 1``), so it is computed once per step for the whole table (a
        table-sized temporary, 16 MiB by default) with the same operations, and each chunk of s is multiplied by
        its slice; with ``fused`` (:func:`finetune.zo.kernels.load`'s loops) the update and the multiply are one
        pass. Returns False, with nothing done, for other noise kinds."""
        if not hasattr(noise, "slices") or not p.is_contiguous():
            return False
        table = noise.table(p.device, p.dtype)
        if c is not None and p.dtype not in factors:
            factors[p.dtype] = _scaling_factor(table, c, alpha)
        flat_p, flat_s = p.data.view(-1), s.view(-1)
        both = fused is not None and step != 0.0 and c is not None and fusable(flat_p, flat_s, table)
        for lo, hi, sign, off in noise.slices(seed, i, p.numel()):
            ss = flat_s[lo:hi]
            if both:
                fused.scaled_update(flat_p[lo:hi], table[off:off + hi - lo], ss, factors[p.dtype][off:off + hi - lo],
                                    sign * -step)
                continue
            if step != 0.0:  # the s of the two passes
                flat_p[lo:hi].addcmul_(table[off:off + hi - lo], ss.to(p.dtype), value=sign * -step)
            if c is not None:
                ss.mul_(factors[p.dtype][off:off + hi - lo])
        return True


def _scaling_factor(z: torch.Tensor, c: float, alpha: float) -> torch.Tensor:
    """HiZOO's step of ``s = H^{-1/2}``: ``f^{-1/2}`` with ``f = (1 - alpha) + c |z^2 - 1|`` (fp32), an
    elementwise function of z, so a table's entries give the same numbers as z materialised from them."""
    return z.float().square().sub_(1).abs_().mul_(c).add_(1 - alpha).rsqrt_()


def make_baseline(method: str, model: nn.Module, lr: float, eps: float, seed: int = 0, weight_decay: float = 0.0,
                  noise: str = "auto", sparsity: float = 0.8, lozo_rank: int = 2, lozo_interval: int = 50,
                  bcd_layers: float = 1, fzoo_n: int = 8, hizoo_alpha: float = 1e-6) -> ZOOptimizer:
    """The baseline ``method`` (one of :data:`BASELINES`) with its options."""
    kw = dict(lr=lr, eps=eps, seed=seed, weight_decay=weight_decay, noise=noise)
    if method == "sparse-mezo":
        return SparseMeZO(model, sparsity=sparsity, **kw)
    if method == "lozo":
        return LOZO(model, rank=lozo_rank, interval=lozo_interval, **kw)
    if method == "bcd":
        return BlockCoordinateZO(model, layers=bcd_layers, **kw)
    if method == "fzoo":
        return FZOO(model, n=fzoo_n, **kw)
    if method == "hizoo":
        return HiZOO(model, alpha=hizoo_alpha, **kw)
    raise ValueError(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")
