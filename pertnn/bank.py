"""The PertNN bank: one small MLP per block, all evaluated in one batched call, giving one σ per block.

Block b's MLP is ``Linear(F→H) → Tanh → Linear(H→1)`` (the paper's architecture), with its own
weights (no sharing across blocks). The B MLPs are stored as stacked parameters

    W1 [B, H, F], b1 [B, H], W2 [B, 1, H], b2 [B, 1]

and evaluated with two ``torch.baddbmm`` calls, never a Python loop over blocks.

Output. ``σ_b = softplus(out_b + bias0)`` with ``bias0 = log(expm1(init_scale))`` (the inverse softplus),
so σ is positive and smooth (see docs/public-code.md for why not ``|out|``).
``output="abs"`` is the paper's mode, kept for the imported published tuners
(``checkpoints.pth_import``): ``σ_b = |out_b|``, no offset, and the last layer gets PyTorch's default
``nn.Linear`` init as in the paper (a zero one would give σ = 0).
The last layer (W2, b2) is initialised to **zero**, so a freshly initialised bank outputs exactly the
same σ = softplus(bias0) ≈ init_scale for every block whatever its features: an untrained bank is
MeZO (and exactly MeZO with energy normalisation). The first layer gets PyTorch's default
``nn.Linear`` init, U(±1/√F). Consequence: at init only W2 and b2 receive gradient (∂σ/∂W1 ∝ W2 = 0);
W1 and b1 start learning once W2 has moved.

Energy normalisation (``energy_norm=True``, the paper's ``NEED_NORMALIZATION``): σ is rescaled by one
common factor so that ``Σ_b n_b σ_b² = Σ_b n_b = D`` with n_b the block numels, i.e. the expected
squared norm of the whole perturbation equals MeZO's and σ only decides the *relative* allocation of
perturbation energy. With all σ equal this gives σ_b = 1 exactly (σ is divided by its detached max
first, which changes neither the value nor the gradient of the scale-invariant result but makes the
equal case exact), and the sums run in float64, exact for integer numels up to 2**53. The factor is
part of the autograd graph.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


OUTPUTS = ("softplus", "abs")


@dataclass
class PertNNConfig:
    """Shape and output options of :class:`PertNNBank`.

    hidden:      H, hidden width of each block's MLP (the paper uses 64).
    n_features:  F, input features per block (``pertnn.features.N_FEATURES`` = 5).
    energy_norm: rescale σ so that Σ_b n_b σ_b² = Σ_b n_b (see the module docstring).
    init_scale:  σ of a freshly initialised bank before energy normalisation (must be > 0).
    output:      ``"softplus"`` (σ = softplus(out + bias0), ours) or ``"abs"`` (σ = |out|, the paper's).
    """

    hidden: int = 32
    n_features: int = 5
    energy_norm: bool = True
    init_scale: float = 1.0
    output: str = "softplus"

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown PertNN output {self.output!r}; use one of {', '.join(OUTPUTS)}")
        if not self.init_scale > 0:
            raise ValueError("init_scale must be positive")


def energy_normalise(sigma: Tensor, numels: Tensor) -> Tensor:
    """``sigma * sqrt(Σ n / Σ n sigma²)`` in float64 (differentiable; exact 1.0 when all sigma are equal)."""
    s = sigma.to(torch.float64)
    s = s / s.detach().max()
    n = numels.to(torch.float64)
    return s * torch.sqrt(n.sum() / (n * s * s).sum())


class BlockMLPs(nn.Module):
    """B independent MLPs ``Linear(F→H) → Tanh → Linear(H→1)``, one per block, as stacked parameters
    evaluated with two ``torch.baddbmm`` calls. The first layer gets PyTorch's default ``nn.Linear``
    init, U(±1/√F); the last layer is zero, so every output starts at exactly 0. The shared core of
    :class:`PertNNBank` and of the direction policy's gate network (:mod:`pertnn.policy`)."""

    def __init__(self, n_blocks: int, n_features: int, hidden: int, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        if n_blocks < 1 or n_features < 1 or hidden < 1:
            raise ValueError("need at least one block, one feature and one hidden unit")
        self.n_features, self.hidden = n_features, hidden
        B, H, Fn = n_blocks, hidden, n_features
        bound = 1.0 / math.sqrt(Fn)  # nn.Linear's default init for the first layer
        kw = {"dtype": dtype, "device": device}
        self.W1 = nn.Parameter(torch.empty(B, H, Fn, **kw).uniform_(-bound, bound, generator=generator))
        self.b1 = nn.Parameter(torch.empty(B, H, **kw).uniform_(-bound, bound, generator=generator))
        self.W2 = nn.Parameter(torch.zeros(B, 1, H, **kw))
        self.b2 = nn.Parameter(torch.zeros(B, 1, **kw))

    @property
    def n_blocks(self) -> int:
        return self.W1.shape[0]

    def mlp_out(self, features: Tensor) -> Tensor:
        """The raw last-layer outputs [B] of the B MLPs."""
        if features.shape != (self.n_blocks, self.n_features):
            raise ValueError(f"features must be [{self.n_blocks}, {self.n_features}], got {list(features.shape)}")
        x = features.to(self.W1.dtype).unsqueeze(-1)                       # [B, F, 1]
        h = torch.tanh(torch.baddbmm(self.b1.unsqueeze(-1), self.W1, x))   # [B, H, 1]
        return torch.baddbmm(self.b2.unsqueeze(-1), self.W2, h).reshape(-1)  # [B]


def inverse_softplus(x: float | Tensor) -> float | Tensor:
    """``y`` with ``softplus(y) == x`` for ``x > 0``, as ``x + log(-expm1(-x))``: no overflow for large ``x``,
    no cancellation for small ``x``. A float is computed with :mod:`math`, a tensor elementwise."""
    if isinstance(x, Tensor):
        return x + torch.log(-torch.expm1(-x))
    return x + math.log(-math.expm1(-x))


class PertNNBank(BlockMLPs):
    """B per-block MLPs mapping features [B, F] to positive scales σ [B] (see the module docstring).

    numels: the B block sizes n_b (e.g. ``[b.numel for b in model_blocks(model)]``), used by the
    energy normalisation. ``generator`` seeds the first layer's init; ``dtype``/``device`` place the bank.
    """

    def __init__(self, numels: Sequence[int] | Tensor, cfg: PertNNConfig | None = None, *,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        cfg = cfg or PertNNConfig()
        numels = torch.as_tensor(numels, dtype=torch.float64).reshape(-1)
        if numels.numel() == 0 or bool((numels <= 0).any()):
            raise ValueError("need at least one block, each with a positive numel")
        super().__init__(numels.numel(), cfg.n_features, cfg.hidden, generator=generator, dtype=dtype, device=device)
        self.cfg = cfg
        self.register_buffer("numels", numels.to(device))
        # softplus(bias0) == init_scale (up to rounding)
        self.bias0 = float(inverse_softplus(cfg.init_scale))
        if cfg.output == "abs":
            self.randomize_output_(generator)

    @torch.no_grad()
    def randomize_output_(self, generator: torch.Generator | None = None) -> "PertNNBank":
        """Give the last layer PyTorch's default ``nn.Linear`` init, U(±1/√H), instead of zeros: an
        *untrained* bank whose σ already differs across blocks (the paper's untrained tuner, the ablation
        that tells learned structure from structure inherited from a random init)."""
        bound = 1.0 / math.sqrt(self.cfg.hidden)
        self.W2.uniform_(-bound, bound, generator=generator)
        self.b2.uniform_(-bound, bound, generator=generator)
        return self

    def output(self, features: Tensor) -> Tensor:
        """σ [B] float64 *before* energy normalisation: ``softplus(out + bias0)`` or ``|out|``."""
        out = self.mlp_out(features)
        sigma = out.abs() if self.cfg.output == "abs" else F.softplus(out + self.bias0)
        return sigma.to(torch.float64)

    def normalise(self, sigma: Tensor) -> Tensor:
        """Energy normalisation of an :meth:`output` when the config asks for it, else ``sigma``."""
        return energy_normalise(sigma, self.numels) if self.cfg.energy_norm else sigma

    def forward(self, features: Tensor) -> Tensor:
        """σ [B] float64, differentiable w.r.t. the bank's parameters."""
        return self.normalise(self.output(features))

    @torch.no_grad()
    def scales(self, features: Tensor) -> Tensor:
        """σ [B] as a float64 CPU tensor, ready for ``ZOEngine.scales``."""
        return self.forward(features).detach().to("cpu", torch.float64)

    @torch.no_grad()
    def scales_and_output(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(σ, output)`` as float64 CPU tensors: the scales and the same step's σ before energy
        normalisation (what the paper's features feed back as σ_prev)."""
        out = self.output(features)
        return self.normalise(out).to("cpu", torch.float64), out.to("cpu", torch.float64)
