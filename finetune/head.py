"""The head step: the output head's option rows stepped along their exact gradient, read off the ZO forward passes.

For a multiple-choice task whose options are one token each, the loss reads the output head only through the
option tokens' logits ``h_i . w_t`` (``h_i`` the head's input at the position that predicts the option, ``w_t``
the head's row of option token ``t``): the option cross-entropy (:meth:`TaskScorer.option_scores`; the
log-softmax normaliser cancels in it) is a softmax regression on ``h``. Its gradient in those rows is therefore,
in closed form,

    dL/dw_t = (1/B) sum_i (softmax(logits_i[options_i]) - onehot(label_i))_t h_i,

which needs ``h`` and the logits at one position per example: what every forward pass computes anyway. No
backward pass runs and no activation is kept, so memory stays at inference level, and no forward pass is added.

:class:`HeadStep` watches the forward passes of one ZO step (a hook on the head), averages their gradients
(MeZO's two passes at ``theta +- eps z`` give the gradient at ``theta`` up to O(eps^2)), and then moves the rows
with Adam (their own learning rate, ``--head-lr``, under the run's ``--schedule``). The rest of the model is left
to the ZO method. With a tied head (SmolLM2, Llama 3.2) the rows are also input embeddings: that part of their
gradient is not in the formula and stays with the ZO method. A large first-order step on a few thousand numbers
that the ZO estimate can only reach through one noisy scalar a step is what the head step adds
(reports/tuner-v2-smollm2).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from finetune.common.errors import ZotuneError
from finetune.data.tasks import Example


def option_token_ids(scorer, examples: Sequence[Example]) -> list[list[int]]:
    """Each example's option token ids, or a one-line error if the task is not multiple choice with one-token
    options (the only case the closed form covers)."""
    if not examples or examples[0].is_generation:
        raise ZotuneError("--head-lr needs a multiple-choice task (the head step has no closed form for generation); "
                          "drop --head-lr")
    ids = []
    for ex in examples:
        tokens = [scorer.token_ids(o, False) for o in ex.options]
        long = [(o.strip(), len(t)) for o, t in zip(ex.options, tokens) if len(t) != 1]
        if long:
            raise ZotuneError(f"--head-lr needs options of one token each; {long[0][0]!r} is {long[0][1]} tokens: "
                              "rename the options (bigbench:<task>:OLD=NEW, --label-words) or drop --head-lr")
        ids.append([t[0] for t in tokens])
    return ids


def head_gradient(h: torch.Tensor, logits: torch.Tensor, options: Sequence[Sequence[int]],
                  labels: Sequence[int]) -> dict[int, torch.Tensor]:
    """The gradient of the mean option cross-entropy in the head rows of the option tokens, in float32:
    ``h`` ``[B, d]`` (the head's input), ``logits`` ``[B, V]`` (its output) at the scoring position."""
    h, logits = h.float(), logits.float()
    return option_loss_and_gradient(h, [logits[i, ids] for i, ids in enumerate(options)], options, labels)[1]


def option_loss_and_gradient(h: torch.Tensor, option_logits: Sequence[torch.Tensor], options: Sequence[Sequence[int]],
                             labels: Sequence[int], grad: dict | None = None) -> tuple[float, dict[int, torch.Tensor]]:
    """The mean option cross-entropy of one pass and its gradient in the option rows, added into ``grad``:
    ``h`` ``[B, d]`` float32, ``option_logits[i]`` example i's logits of its options."""
    grad = {} if grad is None else grad
    n, loss = len(labels), 0.0
    for i, (ids, label) in enumerate(zip(options, labels)):
        delta = torch.softmax(option_logits[i], dim=0)
        loss += float(torch.logsumexp(option_logits[i], dim=0) - option_logits[i][label]) / n
        delta[label] -= 1
        for t, d in zip(ids, delta.tolist()):
            term = h[i] * (d / n)
            grad[t] = grad[t] + term if t in grad else term
    return loss, grad


class HeadStep:
    """Adam on the option rows of the output head, along :func:`head_gradient` of the passes it watched.

    ``with head.watching(batch): opt.step(closure)`` records the gradient of every forward pass of the step;
    :meth:`step` then applies one Adam step (betas 0.9, 0.999; eps 1e-8; bias-corrected) to each row that had a
    gradient. The state (one step count, two moments per row) travels in :meth:`state_dict`. A row absent from a
    step's batch (a task whose examples have different options) is not moved that step, and its moments wait: the
    bias correction counts the steps the head step took, as sparse Adam does.
    """

    def __init__(self, model: nn.Module, scorer, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.head = model.get_output_embeddings()
        if not isinstance(self.head, nn.Linear) or not self.head.weight.requires_grad:
            raise ZotuneError("--head-lr needs the model's output head to be a trainable linear layer "
                              "(it is frozen under --peft); drop --head-lr")
        self.scorer, self.lr, self.betas, self.eps = scorer, lr, betas, eps
        self.steps = 0
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sum: dict[int, torch.Tensor] = {}
        self._passes = 0

    @contextmanager
    def watching(self, batch: Sequence[Example]) -> Iterator[None]:
        """Record the head gradient of every forward pass on ``batch`` made inside the context."""
        options = option_token_ids(self.scorer, batch)
        labels = [ex.label for ex in batch]

        def hook(module, inputs, output):
            if output.shape[0] != len(labels):
                raise RuntimeError(f"the head step watched a pass of {output.shape[0]} rows on a batch of "
                                   f"{len(labels)}: it serves only passes over the whole batch, in order")
            self._record(inputs[0][:, -1], output[:, -1], options, labels)
            self._passes += 1

        handle = self.head.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _record(self, h: torch.Tensor, logits: torch.Tensor, options, labels) -> None:
        for t, g in head_gradient(h, logits, options, labels).items():
            self._sum[t] = self._sum[t] + g if t in self._sum else g

    def gradient(self) -> dict[int, torch.Tensor]:
        """The mean gradient over the passes watched since the last :meth:`step`."""
        return {t: g / self._passes for t, g in self._sum.items()}

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One Adam step of the rows along :meth:`gradient` (nothing if no pass was watched), then forget it.
        ``lr_factor``: the run's lr schedule at this step (:func:`~finetune.zo.optim.schedule_factor`), which
        scales the head lr as it scales the ZO method's."""
        grad, self._sum, self._passes = self.gradient() if self._passes else {}, {}, 0
        if not grad:
            return
        self.steps += 1
        weight = self.head.weight
        for t, g in sorted(grad.items()):
            update = _adam(self.moments, t, g, self.steps, self.betas, self.eps)
            weight[t] -= (self.lr * lr_factor * update).to(weight.dtype)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tokens": sorted(self.moments),
                "m": [self.moments[t][0] for t in sorted(self.moments)],
                "v": [self.moments[t][1] for t in sorted(self.moments)]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.moments = {t: (m, v) for t, m, v in zip(state["tokens"], state["m"], state["v"])}


def _adam(moments: dict, t: int, g: torch.Tensor, steps: int, betas: tuple[float, float], eps: float) -> torch.Tensor:
    """One bias-corrected Adam direction for row ``t`` (its moments updated in ``moments``), as :class:`HeadStep`."""
    b1, b2 = betas
    m, v = moments.get(t, (torch.zeros_like(g), torch.zeros_like(g)))
    m = m * b1 + g * (1 - b1)
    v = v * b2 + g * g * (1 - b2)
    moments[t] = (m, v)
    return (m / (1 - b1 ** steps)) / ((v / (1 - b2 ** steps)).sqrt() + eps)


class HeadRace(HeadStep):
    """Several head steps, one per lr of ``lrs``, raced on the same forward passes; the model holds the rows of
    the one whose running loss is lowest (``--head-race``).

    Each lane keeps its own Adam state and its own offset of the option rows (the sum of its updates; the ZO
    method moves the rows under all of them alike). The option logits are linear in those rows, so a lane's
    logits on a pass are the observed ones plus ``h_i . (offset_lane - offset_active)``: every lane's loss and
    exact gradient on every pass come from what the passes computed, with no pass added. Before a lane learns
    from a batch, its loss on that batch (mean over the step's passes) enters its running loss, an exponential
    moving average with factor ``decay``: a prequential estimate on examples the lane has not yet trained on.
    After the update the model takes the rows of the lane with the lowest running loss (ties: the lower lr).
    This chooses the head lr per task from the training stream, where one lr per base model is a compromise.
    With a tied head the rows are also input embeddings of the option tokens; a lane's loss then ignores what its
    offset would change in a prompt that contains an option token (the passes ran with the active lane's rows).
    """

    def __init__(self, model: nn.Module, scorer, lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, decay: float = 0.95):
        lrs = sorted(float(x) for x in lrs)
        if len(lrs) < 2 or len(set(lrs)) != len(lrs) or lrs[0] <= 0:
            raise ZotuneError(f"--head-race needs two or more distinct positive lrs (got {lrs})")
        super().__init__(model, scorer, lrs[0], betas, eps)
        self.lrs, self.decay = lrs, decay
        self.lanes: list[dict] = [{"moments": {}, "offsets": {}, "loss": None, "steps_active": 0} for _ in lrs]
        self.active = 0
        self._seen: list[tuple] = []

    @property
    def lr_active(self) -> float:
        return self.lrs[self.active]

    def _record(self, h: torch.Tensor, logits: torch.Tensor, options, labels) -> None:
        h, logits = h.float(), logits.float()
        self._seen.append((h, [logits[i, ids].clone() for i, ids in enumerate(options)], options, labels))

    def gradient(self) -> dict[int, torch.Tensor]:
        """The active lane's mean gradient over the passes watched since the last :meth:`step`."""
        return self._lane_loss_and_gradient(self.active)[1] if self._seen else {}

    def _lane_loss_and_gradient(self, lane: int) -> tuple[float, dict[int, torch.Tensor]]:
        """Lane ``lane``'s mean option cross-entropy and its gradient in the option rows over the watched passes."""
        mine, active = self.lanes[lane]["offsets"], self.lanes[self.active]["offsets"]
        loss, grad = 0.0, {}
        for h, option_logits, options, labels in self._seen:
            if lane != self.active:  # the logits this lane's rows would have given on this pass
                zero = torch.zeros(h.shape[1])
                option_logits = [z + torch.stack([mine.get(t, zero) - active.get(t, zero) for t in ids]) @ h[i]
                                 for i, (z, ids) in enumerate(zip(option_logits, options))]
            loss += option_loss_and_gradient(h, option_logits, options, labels, grad)[0]
        passes = len(self._seen)
        return loss / passes, {t: g / passes for t, g in grad.items()}

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """Score every lane on the watched passes (its running loss), move each along its own gradient, and
        put the rows of the lane with the lowest running loss into the model; then forget the passes."""
        if not self._seen:
            return
        results = [self._lane_loss_and_gradient(k) for k in range(len(self.lrs))]
        self._seen, self._sum, self._passes = [], {}, 0
        self.steps += 1
        before = dict(self.lanes[self.active]["offsets"])
        for lane, lr, (loss, grad) in zip(self.lanes, self.lrs, results):
            lane["loss"] = loss if lane["loss"] is None else self.decay * lane["loss"] + (1 - self.decay) * loss
            for t, g in sorted(grad.items()):
                update = _adam(lane["moments"], t, g, self.steps, self.betas, self.eps)
                lane["offsets"][t] = lane["offsets"].get(t, torch.zeros_like(g)) - lr * lr_factor * update
        self.active = min(range(len(self.lrs)), key=lambda k: (self.lanes[k]["loss"], k))
        self.lanes[self.active]["steps_active"] += 1
        weight = self.head.weight
        after = self.lanes[self.active]["offsets"]
        for t in sorted(set(before) | set(after)):
            zero = torch.zeros(weight.shape[1])
            weight[t] += (after.get(t, zero) - before.get(t, zero)).to(weight.dtype)

    def summary(self) -> dict:
        """What the race did: its lrs, the active lane's lr at the end, and how many steps each lane held the rows."""
        return {"lrs": self.lrs, "active": self.lr_active, "steps_active": [x["steps_active"] for x in self.lanes]}

    def state_dict(self) -> dict:
        lanes = []
        for lane in self.lanes:
            tokens = sorted(lane["moments"])
            lanes.append({"tokens": tokens, "m": [lane["moments"][t][0] for t in tokens],
                          "v": [lane["moments"][t][1] for t in tokens], "loss": lane["loss"],
                          "offset_tokens": sorted(lane["offsets"]),
                          "offsets": [lane["offsets"][t] for t in sorted(lane["offsets"])],
                          "steps_active": lane["steps_active"]})
        return {"steps": self.steps, "lrs": self.lrs, "active": self.active, "lanes": lanes}

    def load_state_dict(self, state: dict) -> None:
        if state["lrs"] != self.lrs:
            raise ValueError("the snapshot raced other head lrs")
        self.steps, self.active = state["steps"], state["active"]
        self.lanes = [{"moments": {t: (m, v) for t, m, v in zip(x["tokens"], x["m"], x["v"])},
                       "offsets": dict(zip(x["offset_tokens"], x["offsets"])), "loss": x["loss"],
                       "steps_active": x["steps_active"]} for x in state["lanes"]]
