"""The direction policy: per-block gates that mix an online mean direction into the PertNN perturbation.

This is the meta-trainable part of learned direction sampling (docs/tuner.md). Block b's
perturbation direction is

    z_b = σ_b · ( √(1 − w_b²) · ξ_b  +  w_b · m̂_b )

* ξ_b ~ N(0, I): the seeded noise (regenerated from the step's seed, never stored);
* σ_b: the PertNN scale of the block (:mod:`pertnn.bank`);
* m̂_b = m_b / RMS(m_b): the block's *online mean direction*, unit RMS, so ‖m̂_b‖² = n_b = E‖ξ_b‖²;
* w_b ∈ (−w_max, w_max): the **gate**, the output of this module.

The split keeps each block's expected perturbation energy at σ_b² n_b whatever the gate (the two parts
are uncorrelated in expectation), so PertNN still decides how energy is spread over blocks, and the gate
only decides how much of a block's energy goes along the mean instead of a random direction. With
w_b = 0 the direction is exactly PertNN's σ_b ξ_b: a policy whose gates are all zero (a fresh one: its
last layer starts at zero) fine-tunes exactly like the PertNN-only tuner. The two-point estimate along
z is symmetric in the sign of w_b (E[(∇f·z) z] = σ_b²[(1 − w_b²) ∇f_b + w_b² (∇f_b·m̂_b) m̂_b] per block),
so only |w_b| matters; the gate is ``w_max · tanh(out_b)`` so that it can leave 0 by gradient descent.
To first order, opening block b's gate pays iff (∇f_b·m̂_b)² > ‖∇f_b‖², i.e. iff
cos²(m_b, ∇f_b) > 1/n_b: the online mean must be better aligned with the gradient than chance.

The online mean m_b is the momentum-alias form of the LDSD mean (LDSD's mean is a running sum of ZO
gradient estimates): an exponential
moving average, with decay ``decay``, of the isotropic part of the step's SPSA estimates,
``m_b ← β m_b + (1 − β) ĉ ξ_b`` with ĉ the projected gradient over its running RMS. It is task- and
iterate-specific online state: it lives in the fine-tune run (``finetune.zo.online``), never in an artifact.

Gate network. One small MLP per block (:class:`pertnn.bank.BlockMLPs`) on the features below; ``decay``
and ``max_gate`` are constants of the policy saved with it (the spec allows constants for the decay, which
acts only through later steps and would need a longer unroll to train).

Features, row b (``N_POLICY_FEATURES`` = 5, float32):

0. ``log_coherence`` -- ``log(κ_b + 1e-3)`` with ``κ_b = ‖m_b‖² / (n_b · s · (1 − β)/(1 + β))`` and s the
   running mean of ĉ²: ≈ 1 when the recent estimates are independent noise, up to (1 + β)/(1 − β) when they
   all agree; log 1e-3 before the first step. (Early in a run independent noise gives κ ≈ 1 + β^t, since
   both running means start at 0.)
1. ``log_sigma``  -- ``log σ_b``, this step's PertNN scale.
2. ``loss_diff``  -- as PertNN's feature 2 (:mod:`pertnn.features`).
3. ``loss_level`` -- as PertNN's feature 3.
4. ``prev_gate``  -- the block's gate at the last step (0 at the first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pertnn.bank import BlockMLPs

N_POLICY_FEATURES = 5
POLICY_FEATURE_NAMES = ("log_coherence", "log_sigma", "loss_diff", "loss_level", "prev_gate")


@dataclass
class PolicyConfig:
    """Shape and constants of :class:`DirectionPolicy` (saved in the artifact's ``direction_policy``).

    hidden:   hidden width of each block's gate MLP.
    max_gate: w_max < 1: at most ``max_gate²`` of a block's perturbation energy goes along the mean.
    decay:    β of the online mean (an EMA of the SPSA estimates' isotropic part).
    """

    hidden: int = 16
    max_gate: float = 0.8
    decay: float = 0.9

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError("the policy's hidden width must be at least 1")
        if not 0 < self.max_gate < 1:
            raise ValueError("max_gate must be in (0, 1)")
        if not 0 <= self.decay < 1:
            raise ValueError("decay must be in [0, 1)")


class DirectionPolicy(BlockMLPs):
    """The gate network: features [B, 5] → gates w [B] in (−max_gate, max_gate), exactly 0 when fresh."""

    def __init__(self, n_blocks: int, cfg: PolicyConfig | None = None, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        cfg = cfg or PolicyConfig()
        super().__init__(n_blocks, N_POLICY_FEATURES, cfg.hidden, generator=generator, dtype=dtype, device=device)
        self.cfg = cfg

    def forward(self, features: Tensor) -> Tensor:
        """Gates [B] float64, differentiable w.r.t. the policy's parameters."""
        return (self.cfg.max_gate * torch.tanh(self.mlp_out(features))).to(torch.float64)

    @torch.no_grad()
    def set_constant_(self, gate: float) -> "DirectionPolicy":
        """Make every gate equal ``gate`` whatever the features (W2 = 0, b2 = atanh(gate / max_gate)):
        the "PertNN + online mean with a constant gate" ablation, and gate 0 for "PertNN only"."""
        if not abs(gate) < self.cfg.max_gate:
            raise ValueError(f"a constant gate must be smaller than max_gate = {self.cfg.max_gate} in magnitude")
        self.W2.zero_()
        self.b2.fill_(math.atanh(gate / self.cfg.max_gate))
        return self


def coherence(mean_sq: Tensor, numels: Tensor, c_sq: float, decay: float) -> Tensor:
    """κ [B]: ``‖m_b‖² / (n_b · c_sq · (1 − β)/(1 + β))`` (see the module docstring); 0 when c_sq is 0."""
    if not c_sq > 0:
        return torch.zeros_like(mean_sq, dtype=torch.float64)
    noise_level = (1 - decay) / (1 + decay)
    return mean_sq.double() / (numels.double() * c_sq * noise_level)


def policy_features(kappa: Tensor, sigma: Tensor, pertnn_features: Tensor, prev_gate: Tensor) -> Tensor:
    """The [B, 5] float32 feature matrix of the gate network (module docstring), on ``pertnn_features``'s
    device. ``pertnn_features`` is the PertNN bank's [B, 5] input of the same step (columns 2 and 3, the
    normalised loss features, are reused)."""
    device = pertnn_features.device
    out = torch.empty(pertnn_features.shape[0], N_POLICY_FEATURES, dtype=torch.float32, device=device)
    out[:, 0] = torch.log(kappa.to(device, torch.float32) + 1e-3)
    out[:, 1] = torch.log(sigma.detach().to(device, torch.float32).clamp_min(1e-12))
    out[:, 2] = pertnn_features[:, 2]
    out[:, 3] = pertnn_features[:, 3]
    out[:, 4] = prev_gate.to(device, torch.float32)
    return out


def split_scales(sigma: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ √(1 − w²), σ w)``: the coefficients of ξ_b and of m̂_b in z_b (differentiable in both)."""
    return sigma * torch.sqrt(1 - gate * gate), sigma * gate
