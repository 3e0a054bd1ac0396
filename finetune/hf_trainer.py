"""A ``transformers.Trainer`` that fine-tunes with zotune's ZO optimizers instead of backprop.

Change ``Trainer`` to :class:`ZOTrainer` in an existing script (and optionally pass ``zo_args``)::

    trainer = ZOTrainer(model=model, args=TrainingArguments(...), train_dataset=ds, data_collator=collator,
                        zo_args=ZOArguments(eps=1e-3))
    trainer.train()

Every training step is one ZO step (:mod:`finetune.zo.optim`): the Trainer's ``compute_loss`` on the batch is
the closure, evaluated at perturbed weights (two forward passes per direction, no backward, no gradients). The
Trainer's learning-rate scheduler drives the ZO learning rate; logging, evaluation, saving, callbacks and
``report_to`` are the Trainer's own; checkpoints hold the ZO optimizer's ``state_dict`` (with its seed stream),
so ``train(resume_from_checkpoint=...)`` continues exactly.

Not supported, each refused with a one-line error: gradient accumulation (ZO steps on one batch: raise the
batch size instead), mixed precision (``fp16``/``bf16``: load the model in half precision instead; ZO keeps no
fp32 master copy), activation (gradient) checkpointing (there is no backward pass), DeepSpeed and FSDP. ``max_grad_norm``
has no effect (there are no gradients to clip), and no ``grad_norm`` is logged. Forward passes run in eval mode
(no dropout), as in MeZO, so that the + and - passes see the same function.

After ``train()``, ``trainer.late_rise`` says whether the training loss of the steps that call took rose again late,
well beyond its noise (:func:`finetune.common.runs.late_rise`, the rule ``cli.py finetune`` applies), and a warning
on the ``finetune.hf_trainer`` logger says so in one line; nothing in the run is stopped or changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from finetune.common.errors import ZotuneError
from finetune.common.runs import LateRise, late_rise
from finetune.zo.optim import OPTIMIZERS, TunedZO, ZOOptimizer, make_optimizer

logger = logging.getLogger(__name__)


@dataclass
class ZOArguments:
    """The ZO settings the Trainer's ``TrainingArguments`` lack. The learning rate, its schedule and warm-up,
    the weight decay (decoupled, on matrices only, as in MeZO) and the seed come from ``TrainingArguments``."""

    optimizer: str = "sgd"          # "sgd" (MeZO: no state), "momentum" (one buffer per parameter), "adam" (two)
    eps: float = 1e-3               # perturbation size
    q: int = 1                      # SPSA directions averaged per step (n-SPSA when > 1): 2 q forward passes
    momentum: float = 0.9           # for optimizer "momentum"
    noise: str = "auto"             # "table" (fast on CPU), "gaussian" (MeZO's), "auto" (table on CPU)
    tuner: Any = None               # a checkpoints.Tuner, or a path / hf:// spec of one: TunedZO drives the steps
    seed: int | None = None         # seed of the ZO directions (default: TrainingArguments.seed)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ZotuneError(f"unknown ZO optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.tuner is not None and self.optimizer == "adam":
            raise ZotuneError("a tuner drives ZO-SGD: use optimizer 'sgd' or 'momentum' with a tuner")
        if not self.eps > 0 or self.q < 1:
            raise ZotuneError(f"need eps > 0 and q >= 1 (got eps={self.eps}, q={self.q})")


class _TrainerFacingOptimizer(torch.optim.Optimizer):
    """The optimizer the Trainer holds, in front of a ZO optimizer.

    It shares the ZO optimizer's ``param_groups`` and ``state`` (so the Trainer's lr scheduler sets the ZO
    learning rate) and saves and loads its ``state_dict`` (seed stream included), but its ``step()`` does
    nothing: a ZO step needs the batch, so :meth:`ZOTrainer.training_step` takes it, before the Trainer's
    (no-op) optimizer step and its scheduler step, in the same order as a backprop step.
    """

    def __init__(self, zo: ZOOptimizer):  # (like accelerate's AcceleratedOptimizer, no Optimizer.__init__)
        self.zo = zo

    @property
    def param_groups(self):
        return self.zo.param_groups

    @param_groups.setter
    def param_groups(self, groups):
        self.zo.param_groups = groups

    @property
    def state(self):
        return self.zo.state

    @state.setter
    def state(self, state):
        self.zo.state = state

    @property
    def defaults(self):
        return self.zo.defaults

    @defaults.setter
    def defaults(self, defaults):
        self.zo.defaults = defaults

    def step(self, closure=None):
        if closure is not None:
            raise RuntimeError("ZOTrainer takes its ZO step in training_step; call zo_optimizer.step(closure)")
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.zo.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.zo.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.zo.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"ZOTrainer's view of {self.zo.__class__.__name__}"


def _unwrap(optimizer) -> ZOOptimizer | None:
    """The ZO optimizer behind the Trainer's optimizer (accelerate wraps it), or None."""
    for _ in range(8):
        if isinstance(optimizer, ZOOptimizer):
            return optimizer
        if isinstance(optimizer, _TrainerFacingOptimizer):
            return optimizer.zo
        optimizer = getattr(optimizer, "optimizer", None)
    return None


class ZOTrainer(Trainer):
    """``transformers.Trainer`` with zeroth-order steps (MeZO, n-SPSA, ZO momentum, ZO-Adam, or a tuner).

    Takes the Trainer's arguments plus ``zo_args`` (:class:`ZOArguments`). Instead of ``zo_args`` you may pass
    a ready ZO optimizer as ``optimizers=(zo_optimizer, None)`` (any :class:`~finetune.zo.optim.ZOOptimizer`,
    for example a direction method from :func:`finetune.zo.directions.make_direction_optimizer`); its own lr
    is then the base lr the scheduler multiplies.
    """

    def __init__(self, *args, zo_args: ZOArguments | None = None, **kwargs):
        self.zo_args = zo_args or ZOArguments()
        self.zo_args.validate()
        optimizers = kwargs.get("optimizers")
        if optimizers is not None and optimizers[0] is not None:
            if not isinstance(optimizers[0], ZOOptimizer):
                raise ZotuneError(f"ZOTrainer needs a zotune ZO optimizer, not {type(optimizers[0]).__name__}; "
                                  "pass zo_args=ZOArguments(...) or a ZOSGD/ZOAdam/TunedZO instance")
            kwargs["optimizers"] = (_TrainerFacingOptimizer(optimizers[0]), *optimizers[1:])
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ZotuneError("ZOTrainer builds its own ZO optimizer: drop optimizer_cls_and_kwargs, use zo_args")
        super().__init__(*args, **kwargs)
        self._check_supported()
        self.zo_losses: list[float] = []  # the training loss of every ZO step of the last train() call
        self.late_rise: LateRise | None = None

    def train(self, *args, **kwargs):
        """The Trainer's ``train``; then, where the steps' training loss rose late, ``late_rise`` and a warning."""
        self.zo_losses, self.late_rise = [], None
        out = super().train(*args, **kwargs)
        self.late_rise = late_rise(self.zo_losses)
        if self.late_rise is not None and self.is_world_process_zero():
            logger.warning(self.late_rise.note("try lr_scheduler_type='linear' or a lower learning_rate"))
        return out

    def _check_supported(self) -> None:
        args = self.args
        if args.gradient_accumulation_steps != 1:
            raise ZotuneError(f"ZOTrainer takes one ZO step per batch: set gradient_accumulation_steps=1 (got "
                              f"{args.gradient_accumulation_steps}) and raise per_device_train_batch_size instead")
        if args.fp16 or args.bf16:
            raise ZotuneError("ZOTrainer does not use mixed precision (fp16/bf16 in TrainingArguments): load the "
                              "model in half precision instead (dtype=torch.bfloat16); ZO needs no fp32 master weights")
        if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False):
            raise ZotuneError("activation (gradient) checkpointing saves backward-pass memory, and ZO has no backward pass: "
                              "drop it")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ZotuneError("ZOTrainer does not support DeepSpeed or FSDP; ZO fine-tuning needs only inference "
                              "memory, so run it without them")

    # ---- the optimizer ---------------------------------------------------------------------------
    @property
    def zo_optimizer(self) -> ZOOptimizer | None:
        """The ZO optimizer (None before training creates it)."""
        return _unwrap(self.optimizer)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = _TrainerFacingOptimizer(self._make_zo_optimizer(self.model if model is None else model))
        return self.optimizer

    def _make_zo_optimizer(self, model) -> ZOOptimizer:
        z, args = self.zo_args, self.args
        seed = args.seed if z.seed is None else z.seed
        kw = dict(lr=args.learning_rate, eps=z.eps, q=z.q, seed=seed, weight_decay=args.weight_decay, noise=z.noise)
        if z.tuner is not None:
            tuner = z.tuner
            if isinstance(tuner, str):
                from checkpoints import Tuner  # (an hf:// spec is downloaded once into the cache)

                tuner = Tuner.from_pretrained(tuner)
            if getattr(tuner, "head", None) is not None:  # never dropped in silence
                raise ZotuneError(f"this tuner carries a head step ({tuner.head_text}), which ZOTrainer cannot take: "
                                  "its loss is the Trainer's compute_loss, not an option cross-entropy; pass "
                                  "zo_args.tuner = tuner.with_head(0) to run its bank alone, or use cli.py finetune")
            if getattr(tuner, "top", None) is not None:
                raise ZotuneError(f"this tuner carries a top-block step (lr {tuner.top_lr:g}), which ZOTrainer cannot "
                                  "take: its loss is the Trainer's compute_loss, not an option cross-entropy; pass "
                                  "zo_args.tuner = tuner.with_top(0) to run without it, or use cli.py finetune")
            return TunedZO(model, tuner, momentum=z.momentum if z.optimizer == "momentum" else 0.0, **kw)
        return make_optimizer(z.optimizer, model, momentum=z.momentum, **kw)

    # ---- the step ---------------------------------------------------------------------------------
    def training_step(self, model, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """One ZO step on ``inputs``: the Trainer's ``compute_loss`` at perturbed weights, no backward.
        Returns the mean of the perturbed losses (what the Trainer logs as ``loss``)."""
        zo = self.zo_optimizer
        if zo is None:
            raise RuntimeError("ZOTrainer.training_step runs inside train(), after create_optimizer")
        model.eval()  # no dropout: the + and - passes must compute the same function
        inputs = self._prepare_inputs(inputs)

        def closure() -> torch.Tensor:
            with self.compute_loss_context_manager():
                # (a copy: compute_loss may pop the labels out of the dict it gets)
                loss = self.compute_loss(model, dict(inputs), num_items_in_batch=num_items_in_batch)
            return loss.mean() if loss.dim() else loss

        loss = zo.step(closure)
        self.zo_losses.append(loss)
        return torch.tensor(loss, device=self.args.device)

    # there are no gradients: nothing to clip, no gradient norm to log
    def _clip_grad_norm(self, model):
        return None

    def _get_grad_norm(self, model, grad_norm=None):
        return None
