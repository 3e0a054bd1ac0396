"""The first-order reference (``--method fo``): backpropagation on the same losses, data and loop as ZO.

``make_fo_optimizer`` maps the ``--optimizer`` flag (which for ZO methods names the update rule applied
to the SPSA estimate) onto ``torch.optim``:

* ``adam`` (the default for ``fo``) -> :class:`torch.optim.AdamW` (betas 0.9, 0.999, eps 1e-8);
* ``sgd`` -> :class:`torch.optim.SGD` without momentum;
* ``momentum`` -> :class:`torch.optim.SGD` with momentum 0.9.

Weight decay is applied as the ZO optimizers apply it: decoupled, ``theta *= 1 - lr * wd``, on matrices
only (tensors with at least two dimensions; biases and norm weights are exempt). AdamW decays that way
itself; plain SGD's L2 term is the same thing without momentum; with momentum it is torch's coupled L2.

A step is one forward pass with autograd and one backward pass: ``forwards`` and ``backwards`` count them
(one each per step), so that a comparison with ZO methods at equal forward passes says what it compares.
The parameters are those the ZO engine perturbs (:func:`pertnn.blocks.trainable_tensors`), in its order.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from pertnn.blocks import trainable_tensors

FO_OPTIMIZERS = ("adam", "sgd", "momentum")


def _groups(model: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for _, p in trainable_tensors(model)]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class _FirstOrder:
    """Mixed into a ``torch.optim`` optimizer: ``step(closure)`` runs the closure with autograd, backpropagates
    and steps, like the ZO optimizers' ``step`` (it returns the loss as a float)."""

    forwards: int
    backwards: int

    def _init_counts(self) -> None:
        self.forwards = 0
        self.backwards = 0

    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
            self.forwards += 1
            value = float(loss.detach())
            if not math.isfinite(value):  # no update from a non-finite loss (the trainer stops the run)
                return value
            loss.backward()
            self.backwards += 1
        super().step()  # type: ignore[misc]
        return value

    def state_dict(self) -> dict:
        state = super().state_dict()  # type: ignore[misc]
        state["fo"] = {"forwards": self.forwards, "backwards": self.backwards}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        counts = state_dict.pop("fo")
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.forwards, self.backwards = counts["forwards"], counts["backwards"]


class FOAdamW(_FirstOrder, torch.optim.AdamW):
    """AdamW on the backpropagated gradient."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, **kw):
        torch.optim.AdamW.__init__(self, _groups(model, weight_decay), lr=lr, **kw)
        self._init_counts()


class FOSGD(_FirstOrder, torch.optim.SGD):
    """SGD (optionally with momentum) on the backpropagated gradient."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, momentum: float = 0.0):
        torch.optim.SGD.__init__(self, _groups(model, weight_decay), lr=lr, momentum=momentum)
        self._init_counts()


def make_fo_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float = 0.0) -> _FirstOrder:
    """The first-order optimizer the ``--optimizer`` flag ``name`` maps to (see the module docstring)."""
    if name == "adam":
        return FOAdamW(model, lr=lr, weight_decay=weight_decay)
    if name in ("sgd", "momentum"):
        return FOSGD(model, lr=lr, weight_decay=weight_decay, momentum=0.9 if name == "momentum" else 0.0)
    raise ValueError(f"unknown first-order optimizer {name!r}; use one of {', '.join(FO_OPTIMIZERS)}")
