"""The top-block step: the last decoder layer's MLP stepped along its exact gradient, read off the ZO forward passes.

A multiple-choice loss reads the model at one position per example, the one that predicts the option token. There,
the last layer's MLP feeds nothing but the final norm and the output head:

    x = r + MLP(u),    logits_t = w_t . norm(x),

with ``u`` the MLP's input and ``r = x - MLP(u)`` the residual stream around it, at that position. The option
cross-entropy is therefore a function of the MLP's weights through ``B`` vectors ``u`` and ``r`` that every forward
pass computes anyway, and its gradient in those weights is a backward pass through one MLP and one norm on those
``B`` vectors: no backward pass through the model, no activation kept from one pass to the next, a cost of about
``6 B d d_ff`` multiply-adds against the forward pass's ``2 B T`` times the model's size.

:class:`TopStep` records ``u``, ``r`` (hooks on the last MLP and on the final norm) and the option rows of the head
in every forward pass of one ZO step, computes that gradient per pass, averages it over the passes (MeZO's two
passes at ``theta +- eps z`` give the gradient at ``theta`` up to O(eps^2), whether the weights it is computed with
are the perturbed ones or not: the first-order errors of the two passes cancel), and moves the MLP's weights with
Adam at its own lr (``--top-lr``), under the run's schedule. The ZO method still perturbs and updates every weight,
these included, as the head step leaves the head's rows to it as well. State: Adam's two moments of the MLP's
weights (three matrices of ``d x d_ff``, 2.7M numbers in all for SmolLM2: 21 MB for the two moments in fp32).

Llama-family models (SmolLM2, Llama 3.2, Qwen2; an MLP of ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn``
without biases, and an RMS norm) and one-token options (as the head step). benchmarks/top_block_probe.py measured
what this step could add to the head step on frozen features before it was built (reports/tuner-v2-smollm2).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finetune.common.errors import ZotuneError
from finetune.data.tasks import Example
from finetune.head import adam_direction, option_token_ids

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def top_block(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The last decoder layer's MLP, the final norm and the output head of a Llama-family model, or a one-line
    error that says what the step needs."""
    body = getattr(model, "model", None)
    layers, norm = getattr(body, "layers", None), getattr(body, "norm", None)
    mlp = layers[-1].mlp if layers is not None and len(layers) and hasattr(layers[-1], "mlp") else None
    if mlp is None or norm is None or not hasattr(norm, "variance_epsilon") or not hasattr(mlp, "act_fn") \
            or any(getattr(getattr(mlp, n, None), "bias", 0) is not None for n in PROJECTIONS):
        raise ZotuneError("--top-lr needs a Llama-family model (its last MLP of gate, up and down projections "
                          "without biases, then an RMS norm: SmolLM2, Llama 3.2, Qwen2); drop --top-lr")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ZotuneError("--top-lr needs the model's own output head (not wrapped by an adapter); drop --top-lr")
    return mlp, norm, head


def mlp_forward(mlp: nn.Module, weights: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """The MLP's output at ``u`` ``[B, d]`` with the projection weights ``weights`` (name -> matrix)."""
    gate, up = F.linear(u, weights["gate_proj"]), F.linear(u, weights["up_proj"])
    return F.linear(mlp.act_fn(gate) * up, weights["down_proj"])


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """The final norm of the Llama family: ``gain * x / sqrt(mean(x^2) + eps)`` over the last dimension."""
    return gain * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def top_gradient(mlp: nn.Module, weights: dict[str, torch.Tensor], u: torch.Tensor, r: torch.Tensor,
                 gain: torch.Tensor, eps: float, rows: Sequence[torch.Tensor], labels: Sequence[int]
                 ) -> dict[str, torch.Tensor]:
    """The gradient in ``weights`` of the mean option cross-entropy of ``logits_i = rows[i] @ norm(r_i +
    MLP(u_i))`` (``rows[i]`` ``[n_options_i, d]``, the head's rows of example i's options), in float32."""
    leaves = {n: w.detach().float().requires_grad_(True) for n, w in weights.items()}
    y = rms_norm(r + mlp_forward(mlp, leaves, u), gain, eps)
    loss = sum(F.cross_entropy(w @ y[i], torch.tensor(label)) for i, (w, label) in enumerate(zip(rows, labels)))
    grads = torch.autograd.grad(loss / len(labels), list(leaves.values()))
    return dict(zip(leaves, grads))


class TopStep:
    """Adam on the last MLP's weights along :func:`top_gradient` of the forward passes it watched.

    ``with top.watching(batch): opt.step(closure)`` records the gradient of every forward pass of the step;
    :meth:`step` then applies one Adam step (betas 0.9, 0.999; eps 1e-8; bias-corrected, moments in float32) to
    the three projections. The state (one step count, two moments per matrix) travels in :meth:`state_dict`.
    """

    def __init__(self, model: nn.Module, scorer, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.mlp, self.norm, self.head = top_block(model)
        self.weights = {n: getattr(self.mlp, n).weight for n in PROJECTIONS}
        self.scorer, self.lr, self.betas, self.eps = scorer, lr, betas, eps
        self.steps = 0
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sum: dict[str, torch.Tensor] = {}
        self._passes = 0

    @contextmanager
    def watching(self, batch: Sequence[Example]) -> Iterator[None]:
        """Record the top-block gradient of every forward pass on ``batch`` made inside the context."""
        options = option_token_ids(self.scorer, batch, "--top-lr")
        labels = [ex.label for ex in batch]
        seen: dict[str, torch.Tensor] = {}

        def at_mlp(module, inputs, output) -> None:
            with torch.inference_mode(False):  # normal tensors: the local backward pass saves them
                seen["u"], seen["m"] = inputs[0][:, -1].float().clone(), output[:, -1].float().clone()

        def at_norm(module, inputs, output) -> None:
            with torch.inference_mode(False):
                seen["x"] = inputs[0][:, -1].float().clone()

        def at_head(module, inputs, output) -> None:
            if len(seen) != 3 or seen["u"].shape[0] != len(batch) or seen["x"].shape[0] != len(batch):
                raise RuntimeError("the top-block step watched a pass that is not one forward pass of the whole batch "
                                   "through the last MLP, the final norm and the head, in that order")
            device = seen["u"].device.type  # the local backward pass in float32, also inside --autocast bf16
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device, enabled=False):
                weight = self.head.weight.detach()
                rows = [weight[ids].float() for ids in options]  # the option rows only, not the whole head
                gain = self.norm.weight.detach().float()
                grad = top_gradient(self.mlp, self.weights, seen["u"], seen["x"] - seen["m"], gain,
                                    self.norm.variance_epsilon, rows, labels)
            for n, g in grad.items():  # (g is this pass's own tensor: summed in place)
                if n in self._sum:
                    self._sum[n].add_(g)
                else:
                    self._sum[n] = g
            self._passes += 1
            seen.clear()

        handles = [self.mlp.register_forward_hook(at_mlp), self.norm.register_forward_hook(at_norm),
                   self.head.register_forward_hook(at_head)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def gradient(self) -> dict[str, torch.Tensor]:
        """The mean gradient over the passes watched since the last :meth:`step`."""
        return {n: g / self._passes for n, g in self._sum.items()}

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One Adam step of the projections along :meth:`gradient` (nothing if no pass was watched), then forget it.
        ``lr_factor``: the run's lr schedule at this step, which scales the top lr as it scales the ZO method's."""
        grad = {n: g.div_(self._passes) for n, g in self._sum.items()} if self._passes else {}  # the mean, in place
        self._sum, self._passes = {}, 0
        if not grad:
            return
        self.steps += 1
        for n in PROJECTIONS:
            update = adam_direction(self.moments, n, grad[n], self.steps, self.betas, self.eps)
            weight = self.weights[n]
            weight -= (self.lr * lr_factor * update).to(weight.dtype)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "m": [self.moments[n][0] for n in PROJECTIONS if n in self.moments],
                "v": [self.moments[n][1] for n in PROJECTIONS if n in self.moments]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.moments = {n: (m, v) for n, m, v in zip(PROJECTIONS, state["m"], state["v"])}
