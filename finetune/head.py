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

import math
import zlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from finetune.common.errors import ZotuneError
from finetune.data.tasks import Example


def option_token_ids(scorer, examples: Sequence[Example], flag: str = "--head-lr") -> list[list[int]]:
    """Each example's option token ids, or a one-line error naming ``flag`` (the step that needs them) if the task
    is not multiple choice with one-token options (the only case the closed form covers)."""
    if not examples or examples[0].is_generation:
        raise ZotuneError(f"{flag} needs a multiple-choice task (its step has no closed form for generation); "
                          f"drop {flag}")
    ids = []
    for ex in examples:
        tokens = [scorer.token_ids(o, False) for o in ex.options]
        long = [(o.strip(), len(t)) for o, t in zip(ex.options, tokens) if len(t) != 1]
        if long:
            raise ZotuneError(f"{flag} needs options of one token each; {long[0][0]!r} is {long[0][1]} tokens: "
                              f"rename the options (bigbench:<task>:OLD=NEW, --label-words) or drop {flag}")
        ids.append([t[0] for t in tokens])
    return ids


def head_gradient(h: torch.Tensor, logits: torch.Tensor, options: Sequence[Sequence[int]],
                  labels: Sequence[int]) -> dict[int, torch.Tensor]:
    """The gradient of the mean option cross-entropy in the head rows of the option tokens, in float32:
    ``h`` ``[B, d]`` (the head's input), ``logits`` ``[B, V]`` (its output) at the scoring position."""
    h, logits = h.float(), logits.float()
    return option_gradient(h, [logits[i, ids] for i, ids in enumerate(options)], options, labels)


def option_loss(option_logits: Sequence[torch.Tensor], labels: Sequence[int]) -> float:
    """The mean option cross-entropy of one pass, ``option_logits[i]`` example i's logits of its options."""
    n, loss = len(labels), 0.0
    for z, label in zip(option_logits, labels):
        loss += float(torch.logsumexp(z, dim=0) - z[label]) / n
    return loss


def option_gradient(h: torch.Tensor, option_logits: Sequence[torch.Tensor], options: Sequence[Sequence[int]],
                    labels: Sequence[int]) -> dict[int, torch.Tensor]:
    """The gradient of one pass's mean option cross-entropy (:func:`option_loss`) in the option rows: ``h``
    ``[B, d]`` float32, ``option_logits[i]`` example i's logits of its options."""
    grad, n = {}, len(labels)
    for i, (ids, label) in enumerate(zip(options, labels)):
        delta = torch.softmax(option_logits[i], dim=0)
        delta[label] -= 1
        for t, d in zip(ids, delta.tolist()):
            term = h[i] * (d / n)
            grad[t] = grad[t] + term if t in grad else term
    return grad


def head_tokens(scorer, examples: Sequence[Example]) -> list[int]:
    """Every option token of ``examples``, sorted: the rows a head step can move on them."""
    return sorted({t for ids in option_token_ids(scorer, examples) for t in ids})


def head_rows(model: nn.Module):
    """Where a head step reads and writes: the module that computes the logits (its forward is hooked), the
    tensor that holds the option rows, and a function from a token to its row in that tensor.

    * The full model: the output head (a trainable ``nn.Linear``), its weight, the token itself.
    * ``--peft lora`` with trainable tokens (peft's ``trainable_token_indices``, which
      :func:`~finetune.data.adapters.apply_peft` adds for a head step): peft's wrapper of the head, the adapter's
      table of those tokens' rows (tied to the input embedding's where the model ties them), each token's place
      in it. The adapter then carries the rows the head step moved: ``save_pretrained`` writes them and
      ``merge_and_unload`` folds them into the head.
    """
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is not None and len(adapter.token_indices) == 1:
        (name, tokens), = adapter.token_indices.items()
        place = {t: i for i, t in enumerate(tokens)}

        def row_of(t: int) -> int:
            if t not in place:
                raise ZotuneError(f"token {t} is not among the adapter's trainable tokens; the head step moves only "
                                  "the option tokens of the training split")
            return place[t]

        return head, adapter.trainable_tokens_delta[name], row_of
    if not isinstance(head, nn.Linear) or not head.weight.requires_grad:
        raise ZotuneError("the head step needs a trainable output head: the full model, or --peft lora (whose adapter "
                          "then carries the option rows); --peft prefix and norms keep the head frozen")
    return head, head.weight, int


class HeadStep:
    """Adam on the option rows of the output head, along :func:`head_gradient` of the passes it watched.

    ``with head.watching(batch): opt.step(closure)`` records the gradient of every forward pass of the step;
    :meth:`step` then applies one Adam step (betas 0.9, 0.999; eps 1e-8; bias-corrected) to each row that had a
    gradient. The state (one step count, two moments per row) travels in :meth:`state_dict`. A row absent from a
    step's batch (a task whose examples have different options) is not moved that step, and its moments wait: the
    bias correction counts the steps the head step took, as sparse Adam does.

    ``dp`` (a :class:`~finetune.zo.distributed.DataParallel` in batch mode): each pass runs over this rank's shard of
    the batch, and the hook all-gathers the shard's rows of ``h`` and of the option logits, so every rank computes
    the global batch's gradient from the same numbers in the same order as one process does.
    """

    def __init__(self, model: nn.Module, scorer, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, dp=None):
        self.head, self.rows, self._row_of = head_rows(model)
        self.scorer, self.lr, self.betas, self.eps, self.dp = scorer, lr, betas, eps, dp
        self.steps = 0
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sum: dict[int, torch.Tensor] = {}
        self._passes = 0
        self.applied: dict[int, torch.Tensor] = {}  # the last step's change of each row, as added to the weight

    @contextmanager
    def watching(self, batch: Sequence[Example]) -> Iterator[None]:
        """Record the head gradient of every forward pass on ``batch`` made inside the context."""
        options = option_token_ids(self.scorer, batch)
        labels = [ex.label for ex in batch]
        lo, hi = (0, len(batch)) if self.dp is None else self.dp.bounds(len(batch))[self.dp.rank]

        def hook(module, inputs, output):
            if output.shape[0] != hi - lo:
                raise RuntimeError(f"the head step watched a pass of {output.shape[0]} rows on a batch (or shard) of "
                                   f"{hi - lo}: it serves only passes over the whole batch (shard), in order")
            h, logits = inputs[0][:, -1].float(), output[:, -1].float()
            option_logits = [logits[i, ids] for i, ids in enumerate(options[lo:hi])]
            if self.dp is not None:
                h, option_logits = self._gather(h, option_logits, options)
            self._record(h, option_logits, options, labels)
            self._passes += 1

        handle = self.head.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _gather(self, h: torch.Tensor, option_logits: list[torch.Tensor], options) -> tuple[torch.Tensor, list]:
        """The global batch's ``h`` and option logits from every rank's shard rows: one all-gather of the rows
        ``[h | option logits, padded]`` (no arithmetic, so bit for bit)."""
        d, width = h.shape[1], max(map(len, options))
        local = torch.zeros((h.shape[0], d + width), device=h.device)
        local[:, :d] = h
        for i, z in enumerate(option_logits):
            local[i, d: d + len(z)] = z
        every = self.dp.gather_rows(local, len(options))
        return every[:, :d], [every[i, d: d + len(ids)] for i, ids in enumerate(options)]

    def _record(self, h: torch.Tensor, option_logits: list[torch.Tensor], options, labels) -> None:
        """One pass: ``h`` ``[B, d]`` float32 and each example's option logits, over the whole batch."""
        for t, g in option_gradient(h, option_logits, options, labels).items():
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
        self.applied = {}
        if not grad:
            return
        self.steps += 1
        weight = self.rows
        for t, g in sorted(grad.items()):
            update = adam_direction(self.moments, t, g, self.steps, self.betas, self.eps)
            delta = (self.lr * lr_factor * update).to(weight.dtype)
            weight[self._row_of(t)] -= delta
            self.applied[t] = -delta  # w - d == w + (-d) exactly, so a replay that adds it is bit for bit

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tokens": sorted(self.moments),
                "m": [self.moments[t][0] for t in sorted(self.moments)],
                "v": [self.moments[t][1] for t in sorted(self.moments)]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.moments = {t: (m, v) for t, m, v in zip(state["tokens"], state["m"], state["v"])}


def adam_direction(moments: dict, t, g: torch.Tensor, steps: int, betas: tuple[float, float],
                   eps: float) -> torch.Tensor:
    """One bias-corrected Adam direction for the tensor named ``t`` (a head row, a matrix of the top-block step), its
    moments updated in ``moments``: what :class:`HeadStep` and :class:`~finetune.top.TopStep` step along."""
    b1, b2 = betas
    m, v = moments.get(t, (torch.zeros_like(g), torch.zeros_like(g)))
    # in place, one temporary at a time (the top-block step's matrices are megabytes each), with the arithmetic of
    # m * b1 + g * (1 - b1) and v * b2 + g * g * (1 - b2) operation for operation, so bit for bit the same values
    m.mul_(b1).add_(g * (1 - b1))
    v.mul_(b2).add_((g * g).mul_(1 - b2))
    moments[t] = (m, v)
    denom = v.div(1 - b2 ** steps).sqrt_().add_(eps)
    return m.div(1 - b1 ** steps).div_(denom)


HELD_BACK = 5  # the race scores its lanes on one training example in HELD_BACK (see held_back)


def race_key(example: Example) -> int:
    """The head race's name for a training example: the CRC-32 of its prompt and label, the same in every run,
    process and resumed run."""
    return zlib.crc32(f"{example.prompt}\x00{example.label}".encode())


def held_back(example: Example) -> bool:
    """Whether the head race keeps ``example`` from its shadow lanes: one training example in :data:`HELD_BACK`."""
    return _held_back_key(race_key(example))


def _held_back_key(key: int) -> bool:
    """:func:`held_back` of the example whose :func:`race_key` is ``key``."""
    return key % HELD_BACK == 0


class HeadRace(HeadStep):
    """Several head steps, one per lr of ``lrs``, raced on the same forward passes; the model holds the rows of
    the one whose shadow fits held-back training examples best (``--head-race``).

    Each lane keeps its own Adam state and its own offset of the option rows (the sum of its updates; the ZO
    method moves the rows under all of them alike). The option logits are linear in those rows, so a lane's
    logits on a pass are the observed ones plus ``h_i . (offset_lane - offset_active)``: every lane's loss and
    exact gradient on every pass come from what the passes computed, with no pass added.

    A lane learns from every example. Its score comes from its **shadow**: the same lr and Adam, stepped on the
    same passes, but never on the held-back examples (:func:`held_back`, one training example in five). Each time
    a held-back example is in a batch, every shadow's loss on it (mean over the step's passes) replaces that
    example's previous entry in the shadow's table; a lane's score is the mean of its shadow's table. The shadows
    have never trained on those examples, in any epoch, so the score measures how each lr generalises, paired
    across lanes (same examples, same passes). After the updates the model takes the rows of the lane with the
    lowest score (ties, and before any held-back example was seen: the lower lr). The dev and test splits are not
    read. With a tied head the rows are also input embeddings of the option tokens; a lane's loss then ignores
    what its offset would change in a prompt that contains an option token (the passes ran with the active lane's
    rows).
    """

    def __init__(self, model: nn.Module, scorer, lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, dp=None):
        lrs = sorted(float(x) for x in lrs)
        if len(lrs) < 2 or len(set(lrs)) != len(lrs) or lrs[0] <= 0:
            raise ZotuneError(f"--head-race needs two or more distinct positive lrs (got {lrs})")
        super().__init__(model, scorer, lrs[0], betas, eps, dp)
        self.lrs = lrs
        self.lanes: list[dict] = [{"moments": {}, "offsets": {}, "shadow_moments": {}, "shadow_offsets": {},
                                   "table": {}, "steps_active": 0} for _ in lrs]
        self.active = 0
        self.shadow_steps = 0
        self._seen: list[tuple] = []
        self._keys: list[int | None] = []

    @property
    def lr_active(self) -> float:
        return self.lrs[self.active]

    @contextmanager
    def watching(self, batch: Sequence[Example]) -> Iterator[None]:
        self._keys = [key if _held_back_key(key) else None for key in map(race_key, batch)]
        with super().watching(batch):
            yield

    def _record(self, h: torch.Tensor, option_logits: list[torch.Tensor], options, labels) -> None:
        self._seen.append((h, [z.clone() for z in option_logits], options, labels, list(self._keys)))

    def gradient(self) -> dict[int, torch.Tensor]:
        """The active lane's mean gradient over the passes watched since the last :meth:`step`."""
        return self._fit(self.lanes[self.active]["offsets"])[1] if self._seen else {}

    def _fit(self, offsets: dict, shadow: bool = False) -> tuple[dict, dict[int, torch.Tensor]]:
        """With the rows moved by ``offsets`` (relative to the active lane's), over the watched passes: the mean
        gradient over the examples, and for a ``shadow`` each held-back example's loss (its key -> mean over the
        passes, and over its copies if the batch holds it twice; the shadow's gradient then leaves those examples
        out)."""
        active = self.lanes[self.active]["offsets"]
        losses, counts, grad, n = {}, {}, {}, 0
        for h, option_logits, options, labels, keys in self._seen:
            if offsets is not active:  # the logits these rows would have given on this pass
                zero = torch.zeros(h.shape[1], device=h.device)
                option_logits = [z + torch.stack([offsets.get(t, zero) - active.get(t, zero) for t in ids]) @ h[i]
                                 for i, (z, ids) in enumerate(zip(option_logits, options))]
            for i, key in enumerate(keys):
                if shadow and key is not None:
                    loss = option_loss(option_logits[i:i + 1], labels[i:i + 1])
                    losses[key], counts[key] = losses.get(key, 0.0) + loss, counts.get(key, 0) + 1
            used = [i for i, key in enumerate(keys) if not shadow or key is None]
            if used:
                n += 1
                part = option_gradient(h[used], [option_logits[i] for i in used], [options[i] for i in used],
                                       [labels[i] for i in used])
                for t, g in part.items():
                    grad[t] = grad[t] + g if t in grad else g
        return {k: x / counts[k] for k, x in losses.items()}, {t: g / n for t, g in grad.items()}

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """Score every shadow on the held-back examples of the watched passes, move each lane and each shadow
        along its own gradient, and put the rows of the lane with the lowest score into the model; then forget
        the passes."""
        self.applied = {}
        if not self._seen:
            return
        fits = [(self._fit(lane["offsets"])[1], self._fit(lane["shadow_offsets"], shadow=True)) for lane in self.lanes]
        self._seen, self._sum, self._passes = [], {}, 0
        self.steps += 1
        if any(shadow_grad for _, (_, shadow_grad) in fits):
            self.shadow_steps += 1
        before = dict(self.lanes[self.active]["offsets"])
        for lane, lr, (grad, (held, shadow_grad)) in zip(self.lanes, self.lrs, fits):
            lane["table"].update(held)
            for moments, offsets, g_all, steps in ((lane["moments"], lane["offsets"], grad, self.steps),
                                                   (lane["shadow_moments"], lane["shadow_offsets"], shadow_grad,
                                                    self.shadow_steps)):
                for t, g in sorted(g_all.items()):
                    update = adam_direction(moments, t, g, steps, self.betas, self.eps)
                    offsets[t] = offsets.get(t, torch.zeros_like(g)) - lr * lr_factor * update
        self.active = min(range(len(self.lrs)), key=lambda k: (self.score(k), k))
        self.lanes[self.active]["steps_active"] += 1
        weight = self.rows
        after = self.lanes[self.active]["offsets"]
        zero = torch.zeros(weight.shape[1], device=weight.device)  # (the offsets live on the weight's device)
        for t in sorted(set(before) | set(after)):
            self.applied[t] = (after.get(t, zero) - before.get(t, zero)).to(weight.dtype)
            weight[self._row_of(t)] += self.applied[t]

    def score(self, lane: int) -> float:
        """Lane ``lane``'s score: its shadow's mean loss over the held-back examples seen (inf before any, and
        when it is not finite: a lane whose losses overflowed never takes the rows)."""
        table = self.lanes[lane]["table"]
        score = sum(table[k] for k in sorted(table)) / len(table) if table else math.inf
        return score if math.isfinite(score) else math.inf

    def summary(self) -> dict:
        """What the race did: its lrs, the active lane's lr at the end, how many steps each lane held the rows,
        each lane's final score and how many held-back examples it covers."""
        scores = [self.score(k) for k in range(len(self.lrs))]
        return {"lrs": self.lrs, "active": self.lr_active, "steps_active": [x["steps_active"] for x in self.lanes],
                "scores": [None if math.isinf(x) else x for x in scores],  # (score() is finite or inf)
                "held_back": len(self.lanes[0]["table"])}

    def state_dict(self) -> dict:
        lanes = []
        for lane in self.lanes:
            state = {"steps_active": lane["steps_active"], "table_keys": sorted(lane["table"]),
                     "table": [lane["table"][k] for k in sorted(lane["table"])]}
            for prefix in ("", "shadow_"):
                moments, offsets = lane[prefix + "moments"], lane[prefix + "offsets"]
                tokens = sorted(moments)
                state.update({prefix + "tokens": tokens, prefix + "m": [moments[t][0] for t in tokens],
                              prefix + "v": [moments[t][1] for t in tokens],
                              prefix + "offset_tokens": sorted(offsets),
                              prefix + "offsets": [offsets[t] for t in sorted(offsets)]})
            lanes.append(state)
        return {"steps": self.steps, "shadow_steps": self.shadow_steps, "lrs": self.lrs, "active": self.active,
                "lanes": lanes}

    def load_state_dict(self, state: dict) -> None:
        if state["lrs"] != self.lrs:
            raise ValueError("the snapshot raced other head lrs")
        self.steps, self.shadow_steps, self.active = state["steps"], state["shadow_steps"], state["active"]
        self.lanes = []
        for x in state["lanes"]:
            lane = {"steps_active": x["steps_active"], "table": dict(zip(x["table_keys"], x["table"]))}
            for prefix in ("", "shadow_"):
                lane[prefix + "moments"] = {t: (m, v) for t, m, v in zip(x[prefix + "tokens"], x[prefix + "m"],
                                                                          x[prefix + "v"])}
                lane[prefix + "offsets"] = dict(zip(x[prefix + "offset_tokens"], x[prefix + "offsets"]))
            self.lanes.append(lane)
