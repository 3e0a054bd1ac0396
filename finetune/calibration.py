"""The calibration reference: what fitting only per-option log-prior offsets on the training examples buys.

A fine-tuning run can lower the test loss a lot without learning anything about the inputs: shifting the
label prior (say, "No" is right 60% of the time) is enough. This module measures that shift alone. The
frozen model's option scores (mean log-probabilities, the scores the task loss uses) are computed once with
forward passes only; an offset vector ``b`` is added to them and fitted to minimise the training
cross-entropy; the test loss and accuracy with those offsets are the reference. A method's **gain beyond
calibration** is its test figure minus this reference's.

What an offset is attached to (``mode``):

* ``option``: one offset per distinct option string, when the options are label words shared across
  examples: every option string of the test examples occurs in at least ``MIN_OCCURRENCES`` training
  examples (e.g. " Yes"/" No", in whatever order the examples list them);
* ``position``: one offset per option slot (first option, second, ...) otherwise, e.g. when each example
  has its own option texts.

The fit is convex (a log-sum-exp of affine functions of ``b`` minus a linear term): L-BFGS in float64 from
``b = 0`` to a gradient norm of 1e-10 (or 500 iterations; on separable data the optimum is at infinity and the
loss only approaches 0).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from finetune.data.tasks import Example

MIN_OCCURRENCES = 5


def offset_keys(train: Sequence[Example], test: Sequence[Example]) -> tuple[str, list[str], torch.Tensor, torch.Tensor]:
    """The mode, the offsets' names, and ``[n, max_options]`` index matrices (-1 where there is no option)
    mapping each option of ``train`` and of ``test`` to its offset."""
    seen = Counter(o for e in train for o in set(e.options))
    shared = all(seen[o] >= MIN_OCCURRENCES for e in test for o in e.options)
    if shared:
        names = sorted(seen)
        index = {o: i for i, o in enumerate(names)}
        key = lambda e, j: index.get(e.options[j], -1)  # noqa: E731 (an option unseen in train: no offset)
        mode = "option"
    else:
        n_opt = max(len(e.options) for e in (*train, *test))
        names = [f"option {j + 1}" for j in range(n_opt)]
        key = lambda e, j: j  # noqa: E731
        mode = "position"

    def keys(examples: Sequence[Example]) -> torch.Tensor:
        width = max(len(e.options) for e in examples)
        k = torch.full((len(examples), width), -1, dtype=torch.long)
        for i, e in enumerate(examples):
            for j in range(len(e.options)):
                k[i, j] = key(e, j)
        return k

    return mode, names, keys(train), keys(test)


def apply_offsets(scores: torch.Tensor, keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``scores + offsets[keys]`` (an option with key -1 gets no offset; a padded slot stays ``-inf``)."""
    width = min(scores.shape[1], keys.shape[1])
    scores, keys = scores[:, :width], keys[:, :width]
    shift = torch.where(keys >= 0, offsets[keys.clamp(min=0)], torch.zeros((), dtype=offsets.dtype))
    return torch.where(torch.isfinite(scores), scores + shift, scores)


def fit_offsets(scores: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor, n_offsets: int,
                max_iter: int = 500) -> torch.Tensor:
    """The offsets ``b`` (float64, ``n_offsets``) minimising ``cross_entropy(scores + b[keys], labels)``."""
    scores, labels = scores.double(), labels.long()
    b = torch.zeros(n_offsets, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(apply_offsets(scores, keys, b), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return b.detach()


def loss_and_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    labels = labels.long()
    return (F.cross_entropy(scores.double(), labels).item(),
            (scores.argmax(-1) == labels).double().mean().item())


def calibrate(train_scores: torch.Tensor, train: Sequence[Example], test_scores: torch.Tensor,
              test: Sequence[Example]) -> dict:
    """Fit the offsets on the training scores and report train and test loss and accuracy before and after
    (the ``calibration`` block of ``metrics.json``)."""
    mode, names, train_keys, test_keys = offset_keys(train, test)
    train_labels = torch.tensor([e.label for e in train])
    test_labels = torch.tensor([e.label for e in test])
    b = fit_offsets(train_scores, train_labels, train_keys, len(names))
    report = {"mode": mode, "fit_on": "train", "n_train": len(train), "n_test": len(test),
              "offsets": {name: float(v) for name, v in zip(names, b)}}
    for split, scores, keys, labels in (("train", train_scores, train_keys, train_labels),
                                        ("test", test_scores, test_keys, test_labels)):
        loss, acc = loss_and_accuracy(scores, labels)
        cal_loss, cal_acc = loss_and_accuracy(apply_offsets(scores, keys, b), labels)
        report[split] = {"before": {"loss": loss, "accuracy": acc}, "after": {"loss": cal_loss, "accuracy": cal_acc}}
    return report


def calibration_reference(model, scorer, task, batch_size: int = 16, test_scores: torch.Tensor | None = None) -> dict | None:
    """The calibration reference of the frozen ``model`` on a multiple-choice ``task`` (``None`` for
    generation): the training and test option scores with forward passes only (``test_scores`` reuses a
    test matrix already computed), then :func:`calibrate`."""
    if task.kind != "mc" or not task.train:
        return None
    train_scores = scorer.score_matrix(model, task.train, batch_size)
    if test_scores is None:
        test_scores = scorer.score_matrix(model, task.test, batch_size)
    return calibrate(train_scores, task.train, test_scores, task.test)
