"""ZO optimizers with the ``torch.optim`` interface, and their learning-rate schedules.

Each optimizer owns a :class:`~finetune.zo.engine.ZOEngine` over the model. ``step(closure)`` evaluates the
closure (which returns the loss of the current batch) at perturbed parameters, estimates the gradient
with SPSA along ``q`` seeded directions, and updates the parameters in place::

    opt = ZOSGD(model, lr=1e-6, eps=1e-3)
    sched = make_schedule(opt, "cosine", total_steps=1000)
    for batch in batches:
        loss = opt.step(lambda: task_loss(model, batch))
        sched.step()

Memory: :class:`ZOSGD` without momentum is MeZO and needs no state (inference memory); momentum adds
one buffer per parameter and :class:`ZOAdam` two.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from pertnn.features import StepHistory

from finetune.common.runs import SCHEDULES, WARMUP_FRACTION
from finetune.zo.online import OnlineMean, tuned_direction
from finetune.zo.engine import Direction, ZOEngine

class ZOOptimizer(torch.optim.Optimizer):
    """Base class: SPSA estimation with seed replay; subclasses say how the estimate moves parameters.

    The estimate for one step is ``ghat = (1/q) * sum_i g_i * s * z(seed_i)`` with
    ``g_i = (L(theta + eps s z_i) - L(theta - eps s z_i)) / (2 eps)`` and ``s`` the per-block scales
    (ones for MeZO; :class:`TunedZO` passes a tuner's). Step seeds come from a generator seeded with
    ``seed``. :meth:`zo_step` returns a record of what the step computed (losses, projected gradient,
    and whatever else the method computed); :meth:`step` returns its loss, as ``torch.optim`` does, and
    keeps the record in ``last`` for inspection.
    """

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, q: int = 1,
                 weight_decay: float = 0.0, seed: int = 0, noise: str = "auto", **defaults):
        if lr < 0 or eps <= 0 or q < 1 or weight_decay < 0:
            raise ValueError("need lr >= 0, eps > 0, q >= 1 and weight_decay >= 0")
        self.engine = ZOEngine(model, noise=noise)
        super().__init__(self.engine.params, dict(lr=lr, eps=eps, q=q, weight_decay=weight_decay, **defaults))
        self._seeds = torch.Generator().manual_seed(seed)
        self.last: dict = {}

    def draw_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._seeds))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One ZO step on the batch that ``closure`` evaluates; returns the step's loss (the mean of the
        losses at the perturbed points)."""
        self.last = self.zo_step(closure)
        return self.last["loss"]

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor], scales=None) -> dict:
        """One q-direction SPSA step along ``scales * z`` (``scales`` None: MeZO); returns its record."""
        group = self.param_groups[0]
        seeds = [self.draw_seed() for _ in range(group["q"])]
        grads, pluses, minuses = map(list, zip(*self.estimates(closure, [Direction(s, scales) for s in seeds],
                                                               group["eps"])))
        q = len(grads)
        loss = (sum(pluses) + sum(minuses)) / (2 * q)
        estimate = Direction([(s, g / q) for s, g in zip(seeds, grads)], scales)
        return self._finish(group, loss, sum(grads) / q, sum(pluses) / q, sum(minuses) / q, estimate)

    def estimates(self, closure: Callable[[], torch.Tensor], directions: list[Direction], eps: float) -> list:
        """Two-point SPSA along each direction, in order (``spread``, when set by a data-parallel run in
        directions mode, shares them out across ranks: :meth:`finetune.zo.distributed.DataParallel.spread`)."""
        if self.spread is not None:
            return self.spread(self.engine, closure, directions, eps)
        return [self.engine.spsa(closure, d, eps) for d in directions]

    def one_sided(self, closure: Callable[[], torch.Tensor], directions: list[Direction], eps: float) -> list[float]:
        """``L(theta + eps v)`` along each direction, in order (a candidate pool; ``spread_losses``, when set by a
        data-parallel run in directions mode, shares them out across ranks)."""
        if self.spread_losses is not None:
            return self.spread_losses(self.engine, closure, directions, eps)
        losses = []
        for d in directions:
            with self.engine.perturbed(d, eps):
                losses.append(self.engine.loss(closure))
        return losses

    spread = spread_losses = None  # see estimates() and one_sided()
    applied: Direction | None = None  # the last step's update direction, if it was applied (replay logs)

    def _finish(self, group: dict, loss: float, g: float, plus: float, minus: float, estimate: Direction,
                **record) -> dict:
        """The end of every step: apply ``estimate`` (weight decay first) if the losses and ``g`` are finite,
        and return the step's record."""
        self.applied = None
        if math.isfinite(loss) and math.isfinite(g):
            self._decay(group)
            self._apply(group, estimate)
            self.applied = estimate
        return {"loss": loss, "projected_grad": g, "loss_plus": plus, "loss_minus": minus, **record}

    def _decay(self, group: dict) -> None:
        """Decoupled weight decay on matrices only (MeZO exempts biases and norm weights)."""
        if group["weight_decay"] > 0:
            factor = 1 - group["lr"] * group["weight_decay"]
            for p in group["params"]:
                if p.ndim >= 2:
                    p.mul_(factor)

    def _apply(self, group: dict, estimate: Direction) -> None:
        """Plain ZO-SGD, ``theta -= lr * ghat``, in place (one noise pass per seed) and no stored state."""
        self.engine.update_(estimate, -group["lr"])

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"] = {"seeds": self._seeds.get_state(), "forwards": self.engine.forwards}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo")
        super().load_state_dict(state_dict)
        self._seeds.set_state(zo["seeds"])
        self.engine.forwards = zo["forwards"]


class PlainPass(ZOOptimizer):
    """No ZO step (method ``exact``): each step is one counted forward pass at ``theta``, and nothing is updated.

    What trains is whatever watches the pass: the head step and the top-block step (``finetune/head.py``,
    ``finetune/top.py``) take their exact gradients from it. At equal forward passes such a run sees twice the
    batches of a two-point method. ``lr``, ``eps`` and ``q`` are kept for the interface and not used. No state.
    """

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor], scales=None) -> dict:
        return {"loss": self.engine.loss(closure)}  # ``applied`` stays None: nothing is updated


class ZOSGD(ZOOptimizer):
    """ZO-SGD: MeZO when ``momentum == 0`` and ``q == 1`` (no state, inference memory);
    heavy-ball momentum ``buf = momentum * buf + ghat; theta -= lr * buf`` otherwise."""

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, momentum: float = 0.0, **kw):
        if not 0 <= momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        super().__init__(model, lr, eps, momentum=momentum, **kw)

    def _apply(self, group: dict, estimate: Direction) -> None:
        lr, mu = group["lr"], group["momentum"]
        if mu == 0:
            return super()._apply(group, estimate)
        d = self.engine.resolve(estimate)
        for i, p in enumerate(group["params"]):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"].mul_(mu)
            self.engine.add_direction_(buf, d, i, 1.0)
            p.add_(buf, alpha=-lr)


class ZOAdam(ZOOptimizer):
    """Adam on the SPSA estimate (ZO-Adam), with bias correction; two state tensors per parameter."""

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, **kw):
        super().__init__(model, lr, eps, betas=betas, adam_eps=adam_eps, **kw)

    def _apply(self, group: dict, estimate: Direction) -> None:
        beta1, beta2 = group["betas"]
        d = self.engine.resolve(estimate)
        for i, p in enumerate(group["params"]):
            state = self.state[p]
            if "step" not in state:  # (the state may already hold a direction method's buffers)
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            g = self.engine.direction_like(d, i)
            state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bc1 = 1 - beta1 ** state["step"]
            bc2 = 1 - beta2 ** state["step"]
            denom = (state["exp_avg_sq"] / bc2).sqrt_().add_(group["adam_eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bc1)


class TunedZO(ZOSGD):
    """ZO-SGD (optionally with momentum) whose per-block scales a learned tuner sets at every step.

    Before each step the tuner's PertNN bank maps the block features (block statistics, the last
    step's normalised losses, the last scales; :mod:`pertnn.features`) to one scale per block, which
    multiplies that block's noise in both the perturbation and the update (the ZO Fine-tuner). The
    loss history is online state of this run (``state_dict`` keeps it), never part of the tuner.
    ``tuner`` is anything with a ``bank`` (:class:`pertnn.PertNNBank`) and a ``feature_config``
    (:class:`pertnn.FeatureConfig`), such as :class:`checkpoints.Tuner`; if it has ``check_model``, the
    model is checked against the architecture the tuner was trained for. A bank whose scales are all
    equal gives MeZO's step bit for bit. With the paper's raw features (an imported ZO Fine-tuner
    tuner), the bank's output before energy normalisation is what is fed back as the last scale.

    If the tuner also has a direction ``policy`` (:class:`pertnn.policy.DirectionPolicy`), each block's
    direction is ``σ_b (√(1 − w_b²) ξ_b + w_b m̂_b)``: the policy's gates w_b mix in the run's online mean
    direction m̂_b (:class:`finetune.zo.online.OnlineMean`, updated after every step from the step's own
    seed). Still two forward passes per step; the means cost one parameter-sized buffer. With every gate
    at zero the steps are exactly the PertNN-only tuner's.
    """

    def __init__(self, model: nn.Module, tuner, lr: float, eps: float = 1e-3, **kw):
        super().__init__(model, lr, eps, **kw)
        check = getattr(tuner, "check_model", None)
        if check is not None:
            check(model)
        device = self.engine.params[0].device
        self.bank = copy.deepcopy(tuner.bank).to(device).requires_grad_(False)
        if self.bank.n_blocks != len(self.engine.blocks):
            raise ValueError(f"the tuner has {self.bank.n_blocks} blocks, the model {len(self.engine.blocks)}")
        self.history = StepHistory(len(self.engine.blocks), tuner.feature_config)
        policy = getattr(tuner, "policy", None)
        self.policy = self.online = None
        if policy is not None:
            if self.param_groups[0]["q"] != 1:
                raise ValueError("a tuner with a direction policy takes one SPSA direction per step (q = 1)")
            if policy.n_blocks != len(self.engine.blocks):
                raise ValueError(f"the direction policy has {policy.n_blocks} blocks, the model {len(self.engine.blocks)}")
            self.policy = copy.deepcopy(policy).to(device).requires_grad_(False)
            self.online = OnlineMean(self.engine, policy.cfg)

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        """The tuner sets this step's scales (and gates), then one ZO step; the record adds ``scales``."""
        features = self.history.features(self.engine.params)
        sigma, output = self.bank.scales_and_output(features)
        if self.policy is None:
            record = super().zo_step(closure, scales=sigma)
        else:
            record = self._directed_step(closure, features, sigma)
        self.history.update(record["loss_plus"], record["loss_minus"], sigma, output)
        return {**record, "scales": sigma}

    def _directed_step(self, closure: Callable[[], torch.Tensor], features: torch.Tensor, sigma: torch.Tensor) -> dict:
        """One step along ``σ (√(1 − w²) ξ + w m̂)``; the same operations as the plain step when w = 0."""
        group = self.param_groups[0]
        seed = self.draw_seed()
        direction, gate, _, _ = tuned_direction(seed, sigma, features, self.policy, self.online)
        g, plus, minus = self.engine.spsa(closure, direction, group["eps"])
        record = self._finish(group, (plus + minus) / 2, g, plus, minus, direction.times(g), gates=gate, seed=seed)
        self.online.update(seed, g, gate)
        return record

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["history"] = self.history.state_dict()
        if self.online is not None:
            state["zo"]["online_mean"] = self.online.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.history.load_state_dict(state_dict["zo"]["history"])
        if self.online is not None:
            self.online.load_state_dict(state_dict["zo"]["online_mean"])
        super().load_state_dict(state_dict)


OPTIMIZERS = {"sgd": ZOSGD, "momentum": ZOSGD, "adam": ZOAdam}


def make_optimizer(name: str, model: nn.Module, lr: float, eps: float, q: int = 1, seed: int = 0,
                   weight_decay: float = 0.0, noise: str = "auto", momentum: float = 0.9) -> ZOOptimizer:
    """Build the optimizer called ``name`` (``sgd``, ``momentum`` or ``adam``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    kw = dict(q=q, seed=seed, weight_decay=weight_decay, noise=noise)
    if name == "momentum":
        kw["momentum"] = momentum
    return OPTIMIZERS[name](model, lr=lr, eps=eps, **kw)


def schedule_factor(name: str, t: int, total_steps: int) -> float:
    """The factor schedule ``name`` puts on the learning rate after ``t`` steps of ``total_steps`` (T): 1
    (constant), ``1 - t/T`` (linear), ``(1 + cos(pi t/T)) / 2`` (cosine), or for linear-warmup, with
    ``W = max(1, round(WARMUP_FRACTION * T))`` warm-up steps, ``(t + 1)/W`` while ``t < W`` and then
    ``1 - (t - W)/(T - W)``. Step ``k`` (from 1) uses ``t = k - 1``."""
    total = max(1, total_steps)
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, 1 - t / total)
    if name == "linear-warmup":
        warm = max(1, round(WARMUP_FRACTION * total))
        return (t + 1) / warm if t < warm else max(0.0, 1 - (t - warm) / max(1, total - warm))
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


def make_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` multiplying the learning rate by :func:`schedule_factor` of the steps taken."""
    schedule_factor(name, 0, total_steps)  # an unknown name fails here
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: schedule_factor(name, t, total_steps))
