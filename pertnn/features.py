"""Features: the per-block input vector of the PertNN bank at one step (one row per block).

Row b, in this order (``N_FEATURES`` = 5 columns, float32):

0. ``mean``      -- mean of block b's entries, ``mean(θ_b)``.
1. ``log_var``   -- ``log(var(θ_b) + var_eps)``, population variance (divide by N), on an O(1..10) scale
   (docs/public-code.md says why not the raw variance).
2. ``loss_diff`` -- ``(L+ − L−) / running_loss``: the last step's two-point loss difference.
3. ``loss_level``-- ``((L+ + L−) / 2) / running_loss − 1``: how far the last step's loss sits from its
   running average (0 = on trend, <0 = better, >0 = worse).
4. ``log_prev``  -- ``log(max(σ_b^(t−1), scale_floor))``: the scale the bank gave this block last step
   (1 at the first step, i.e. log 1 = 0).

Features 2 and 3 are *ratios of losses*, so they are invariant to the task's loss scale: multiplying
every loss and the running loss by c changes nothing. Both are 0 before the first
step (``losses`` or ``running_loss`` is None) or when the running loss is not a positive finite number:
0 is their "no information / on trend" value.
The loss features are the same for every block (the bank's per-block MLPs differ, so they can still
respond differently).

Everything runs under ``no_grad``; no gradient flows into the features (as in the paper).

``FeatureConfig(kind="raw")`` gives the paper's features instead, for the imported published
tuners (``checkpoints.pth_import``): ``[mean(θ_b), var(θ_b), L+, L−, σ_b^(t−1)]`` with the *unbiased*
variance (N−1; a one-element block gets its population variance, 0, where torch would give NaN), the
raw losses of the last step ((0, 0) before the first step) and the raw last scale, taken *before*
energy normalisation (1 before the first step). No log, no ratio. Statistics are computed in float32
(the paper computes them in the model's dtype).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

N_FEATURES = 5
FEATURE_NAMES = ("mean", "log_var", "loss_diff", "loss_level", "log_prev")
RAW_FEATURE_NAMES = ("mean", "var", "loss_plus", "loss_minus", "prev")
KINDS = ("normalised", "raw")


@dataclass
class FeatureConfig:
    """Constants of :func:`block_features`.

    var_eps:     added to the variance before the log (a constant block, e.g. a freshly initialised
                 norm weight of ones, has variance 0 and gets log(var_eps) ≈ −27.6).
    scale_floor: σ_prev is clamped to at least this before the log, so a zero scale stays finite.
    chunk:       for reduced-precision tensors (fp16/bf16), the mean and variance are accumulated in
                 float32 over flattened chunks of this many elements, so no float32 copy of a whole
                 big tensor is made. float32/float64 tensors are reduced directly.
    running_beta: the running loss of :class:`StepHistory` is an exponential moving average of the
                 steps' mean losses with this decay (the first step's loss starts it).
    stats_every: :class:`StepHistory` recomputes the block statistics (features 0 and 1, one pass over every
                 parameter) every this many steps and reuses them in between: ZO steps move them by
                 ~1e-6 relative, and the pass costs about a third of a forward pass on CPUs.
    kind:        ``"normalised"`` (the features above, ours) or ``"raw"`` (the paper's; see the module
                 docstring). ``var_eps``, ``scale_floor`` and ``running_beta`` do not enter raw features.
    """

    var_eps: float = 1e-12
    scale_floor: float = 1e-12
    chunk: int = 1 << 22
    running_beta: float = 0.9
    kind: str = "normalised"
    stats_every: int = 10

    def __post_init__(self):
        if self.stats_every < 1:
            raise ValueError("stats_every must be at least 1")
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r}; use one of {', '.join(KINDS)}")


def tensor_var_mean(t: Tensor, chunk: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Population variance and mean of all entries of ``t`` as float32 0-d tensors (on ``t``'s device).

    The tensor is read in flattened chunks of ``chunk`` elements, each upcast to float64, and only its sum
    and its sum of squares (a dot product) are accumulated: ``var = E[x²] − mean²`` in float64 is exact to
    ~1e-13 relative for weights, and about three times faster on CPUs than ``torch.var_mean``'s Welford pass
    (this runs over every parameter at every tuned step). Only ``chunk`` elements are upcast at once.
    """
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        nan = torch.full((), float("nan"), device=t.device)
        return nan, nan
    total = torch.zeros((), dtype=torch.float64, device=t.device)
    squares = torch.zeros((), dtype=torch.float64, device=t.device)
    for start in range(0, n, chunk):
        part = flat[start:start + chunk].to(torch.float64)
        total += part.sum()
        squares += torch.dot(part, part)
    mean = total / n
    var = (squares / n - mean * mean).clamp_min(0)
    return var.float(), mean.float()


def _loss_features(losses: tuple[float, float] | None, running_loss: float | None) -> tuple[float, float]:
    if losses is None or running_loss is None:
        return 0.0, 0.0
    r = float(running_loss)
    if not (math.isfinite(r) and r > 0):
        return 0.0, 0.0
    lp, lm = float(losses[0]), float(losses[1])
    return (lp - lm) / r, 0.5 * (lp + lm) / r - 1.0


@torch.no_grad()
def param_stats(params: list[Tensor], cfg: FeatureConfig | None = None) -> Tensor:
    """[B, 2] float32: population variance and mean of each block (see :func:`tensor_var_mean`)."""
    cfg = cfg or FeatureConfig()
    if not params:
        return torch.zeros(0, 2)
    device = params[0].device
    return torch.stack([torch.stack(tensor_var_mean(p.detach(), cfg.chunk)).to(device) for p in params])


@torch.no_grad()
def block_features(params: list[Tensor], losses: tuple[float, float] | None, running_loss: float | None,
                   prev_scale: Tensor, cfg: FeatureConfig | None = None, var_mean: Tensor | None = None) -> Tensor:
    """The [B, 5] float32 feature matrix (see the module docstring), on ``prev_scale``'s device.

    params:       the B block tensors, in block order (e.g. ``[p for _, p in trainable_tensors(model)]``).
    losses:       the last step's ``(L+, L−)``, or None before the first step.
    running_loss: a running average of the training loss (the normaliser), or None before the first step;
                  raw features ignore it.
    prev_scale:   [B] the scales the bank produced at the last step (ones before the first step).
    var_mean:     [B, 2] precomputed :func:`param_stats` of ``params`` (computed here when None).
    """
    cfg = cfg or FeatureConfig()
    prev_scale = prev_scale.reshape(-1)
    if prev_scale.numel() != len(params):
        raise ValueError(f"prev_scale has {prev_scale.numel()} entries for {len(params)} blocks")
    device = prev_scale.device
    var_mean = (param_stats(params, cfg) if var_mean is None else var_mean).to(device)
    out = torch.empty(len(params), N_FEATURES, dtype=torch.float32, device=device)
    if cfg.kind == "raw":
        n = torch.tensor([p.numel() for p in params], dtype=torch.float32, device=device)
        out[:, 0] = var_mean[:, 1]
        out[:, 1] = var_mean[:, 0] * n / (n - 1).clamp_min(1)
        out[:, 2], out[:, 3] = (0.0, 0.0) if losses is None else (float(losses[0]), float(losses[1]))
        out[:, 4] = prev_scale.to(torch.float32)
        return out
    diff, level = _loss_features(losses, running_loss)
    out[:, 0] = var_mean[:, 1]
    out[:, 1] = torch.log(var_mean[:, 0] + cfg.var_eps)
    out[:, 2] = diff
    out[:, 3] = level
    out[:, 4] = torch.log(prev_scale.to(torch.float32).clamp_min(cfg.scale_floor))
    return out


class StepHistory:
    """The online, task-specific state behind the loss and scale features: the last step's losses,
    the running loss and the last scales. It lives with a fine-tune (or meta-training) run and is never
    saved in a tuner artifact; a fresh one is what a new task starts from.
    """

    def __init__(self, n_blocks: int, cfg: FeatureConfig | None = None):
        self.cfg = cfg or FeatureConfig()
        self.losses: tuple[float, float] | None = None
        self.running_loss: float | None = None
        self.prev_scale = torch.ones(n_blocks, dtype=torch.float32)
        self.var_mean: Tensor | None = None  # cached block statistics, refreshed every cfg.stats_every steps
        self.stats_age = 0

    def features(self, params: list[Tensor]) -> Tensor:
        """The [B, 5] features of ``params`` at this step (see :func:`block_features`), on their device.
        The block statistics are recomputed on the first call and then every ``cfg.stats_every`` calls."""
        if self.var_mean is None or self.stats_age >= self.cfg.stats_every:
            self.var_mean, self.stats_age = param_stats(params, self.cfg).cpu(), 0
        self.stats_age += 1
        prev = self.prev_scale.to(params[0].device) if params else self.prev_scale
        return block_features(params, self.losses, self.running_loss, prev, self.cfg, self.var_mean)

    def refresh_stats(self) -> None:
        """Recompute the block statistics at the next step (after the parameters jumped, e.g. a restart)."""
        self.var_mean = None

    def update(self, loss_plus: float, loss_minus: float, scale: Tensor, output: Tensor | None = None) -> None:
        """Record a finished step: its two losses and the scales it used. Non-finite losses are ignored
        for the running loss (the features then treat the step as uninformative). Raw features feed back
        ``output``, the bank's σ before energy normalisation (the paper's σ_prev), when it is given."""
        if self.cfg.kind == "raw" and output is not None:
            scale = output
        self.losses = (float(loss_plus), float(loss_minus))
        mean = 0.5 * (self.losses[0] + self.losses[1])
        if math.isfinite(mean):
            b = self.cfg.running_beta
            self.running_loss = mean if self.running_loss is None else b * self.running_loss + (1 - b) * mean
        self.prev_scale = scale.detach().to("cpu", torch.float32).reshape(-1).clone()

    def state_dict(self) -> dict:
        return {"losses": self.losses, "running_loss": self.running_loss, "prev_scale": self.prev_scale.clone(),
                "var_mean": None if self.var_mean is None else self.var_mean.clone(), "stats_age": self.stats_age}

    def load_state_dict(self, state: dict) -> None:
        self.losses = tuple(state["losses"]) if state["losses"] is not None else None
        self.running_loss = state["running_loss"]
        self.prev_scale = state["prev_scale"].clone()
        self.var_mean = None if state.get("var_mean") is None else state["var_mean"].clone()
        self.stats_age = state.get("stats_age", 0)
