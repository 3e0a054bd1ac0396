"""The online state of a direction policy during one run: the mean directions m_b and their statistics.

Task- and iterate-specific, so it lives with a fine-tune (or meta-training) run and its checkpoints and
never in a tuner artifact (see :mod:`pertnn.policy` for the policy it serves). After each step along seed
s with projected gradient g, every block's mean follows

    m_b ← β m_b + (1 − β) ĉ ξ_b(s),     ĉ = g / RMS_running(g)

with ξ_b(s) regenerated from the step's own seed (one more noise pass over the parameters, no buffer).
Memory: one parameter-sized buffer per block, like a momentum buffer.
"""
from __future__ import annotations

import math

import torch

from pertnn.policy import DirectionPolicy, PolicyConfig, coherence, policy_features, split_scales

from finetune.zo.engine import Direction, ZOEngine

C_EMA = 0.9  # smoothing of the running RMS of the projected gradient


def tuned_direction(seed: int, sigma: torch.Tensor, features: torch.Tensor, policy: DirectionPolicy | None = None,
                    online: "OnlineMean | None" = None):
    """The direction a tuner picks for one step from its PertNN scales ``sigma`` (and, with a direction
    ``policy``, the gated online mean of ``online``): ``(direction, gate, iso, mean_scale)``, where the
    direction is ``iso_b ξ_b + mean_scale_b m̂_b`` (``iso = sigma`` and no mean without a policy). ``gate``,
    ``iso`` and ``mean_scale`` stay differentiable for the meta-gradient; the direction holds plain numbers."""
    if policy is None:
        return Direction(seed, sigma.detach().cpu()), None, sigma, None
    if online is None:
        raise ValueError("a direction policy needs the task's online mean")
    gate, iso, mean_scale = online.direction(policy, sigma, features)
    return Direction(seed, iso.detach().cpu(), online.means, online.mean_coefficients(mean_scale)), gate, iso, mean_scale


class OnlineMean:
    """m_b for every block of ``engine``'s model, their squared norms, and the last gates."""

    def __init__(self, engine: ZOEngine, cfg: PolicyConfig):
        self.engine, self.decay = engine, cfg.decay
        self.means = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in engine.params]
        self.numels = torch.tensor([p.numel() for p in engine.params], dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new task, or the parameters jumped)."""
        for m in self.means:
            m.zero_()
        self.mean_sq = torch.zeros(len(self.means), dtype=torch.float64)
        self.c_rms: float | None = None
        self.c_sq = 0.0
        self.prev_gate = torch.zeros(len(self.means), dtype=torch.float64)

    def kappa(self) -> torch.Tensor:
        """The coherence κ_b of every block's mean (:func:`pertnn.policy.coherence`)."""
        return coherence(self.mean_sq, self.numels, self.c_sq, self.decay)

    def rms(self) -> torch.Tensor:
        return torch.sqrt(self.mean_sq / self.numels)

    def mean_coefficients(self, mean_scale: torch.Tensor) -> list[float]:
        """The engine's per-block ``offset_scales`` for ``mean_scale_b m̂_b``: the stored mean m_b has RMS(m_b), so
        m̂_b = m_b / RMS(m_b) and the coefficient of m_b is ``mean_scale_b / RMS(m_b)`` (0 where either is 0)."""
        return [b / r if b != 0.0 and r > 0.0 else 0.0
                for b, r in zip(mean_scale.detach().cpu().tolist(), self.rms().tolist())]

    def direction(self, policy: DirectionPolicy, sigma: torch.Tensor, features: torch.Tensor):
        """This step's gates and direction for the PertNN scales ``sigma`` and features ``features``:
        ``(gate, iso, mean_scale)``, the direction being ``iso_b ξ_b + mean_scale_b m̂_b``. All three are
        differentiable in the policy and in ``sigma`` (for the meta-gradient) and live on ``sigma``'s device."""
        gate = policy(policy_features(self.kappa(), sigma, features, self.prev_gate)).to(sigma.device)
        iso, mean_scale = split_scales(sigma, gate)
        return gate, iso, mean_scale

    @torch.no_grad()
    def update(self, seed: int, g: float, gate: torch.Tensor) -> None:
        """Fold the step along ``seed`` with projected gradient ``g`` into the means; record ``gate``."""
        self.prev_gate = gate.detach().to("cpu", torch.float64).reshape(-1).clone()
        if not math.isfinite(g):
            return
        self.c_rms = abs(g) if self.c_rms is None else math.sqrt(C_EMA * self.c_rms**2 + (1 - C_EMA) * g * g)
        c = g / self.c_rms if self.c_rms > 0 else 0.0
        b = self.decay
        for i, m in enumerate(self.means):
            m.mul_(b)
            if c != 0.0:
                self.engine.noise.add(m, seed, i, (1 - b) * c, out=m)
            self.mean_sq[i] = torch.linalg.vector_norm(m, dtype=torch.float64).item() ** 2
        self.c_sq = b * self.c_sq + (1 - b) * c * c

    def state_dict(self) -> dict:
        return {"means": [m.detach().cpu().clone() for m in self.means], "mean_sq": self.mean_sq.clone(),
                "c_rms": self.c_rms, "c_sq": self.c_sq, "prev_gate": self.prev_gate.clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for m, v in zip(self.means, state["means"]):
                m.copy_(v)
        self.mean_sq = state["mean_sq"].clone()
        self.c_rms, self.c_sq = state["c_rms"], state["c_sq"]
        self.prev_gate = state["prev_gate"].clone()
