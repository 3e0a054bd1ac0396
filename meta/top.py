"""The top-block part of a tuner: the lr (and schedule) of its top-block step, chosen on the meta-training tasks.

A tuner can carry a top-block step (:mod:`finetune.top`): fine-tuning with it also moves the last layer's MLP along
its exact gradient at the scored position, read off the ZO forward passes, with Adam. Like the head step's lr
(:mod:`meta.head`), its lr belongs to the base model and the tuner, not to a target task, so it is chosen once, here,
on the meta-training tasks, and carried to new tasks in the artifact (``top`` in its metadata: format 5, or 6 when the
step names its own schedule).

The choice is made by real fine-tuning runs: for every top lr of the grid, each meta-training task gets a bench of
method ``tuner`` (the tuner as it is, its head step included, at its recommended lr, under the run's lr schedule
``base.schedule``) plus the top-block step at that lr, under ``schedule`` (None: the run's own), ``forwards`` forward
passes per seed. The run's schedule (that of the ZO and head steps) goes into the artifact with the choice, as the
schedule the tuner recommends (format 8 when it is not constant), since the choice was made under it. The lr whose
runs end with the lowest dev loss, averaged over seeds and then over tasks, goes into the artifact; a run that
diverged counts as an infinite loss. A grid may hold 0 (no top-block step), so that the choice can also be "none":
with 0 in the grid, a step is only carried if it beats the tuner without it. The test split is never read for the
choice.

Each (task, top lr, seed) bench lives in its own folder under ``work`` (:func:`bench_folder`) and resumes after a
kill; finished benches are read, not rerun, so more ``seeds`` or ``tasks`` widen a choice without redoing it.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from checkpoints import Tuner
from finetune.common.errors import ZotuneError
from finetune.common.runs import SCHEDULES, check_number
from finetune.trainer import FinetuneConfig
from meta.selection import checked_start, final_dev_loss, locked_output, tuner_run, write_tuner


@dataclass
class TopSearch:
    """What the top-block step's lr is chosen on: tasks, grid, schedule, budget and seeds."""

    tasks: list[str]
    top_lrs: list[float]
    schedule: str | None = None      # the step's own lr schedule for every candidate; None: the run's --schedule
    seeds: list[int] = field(default_factory=lambda: [0])
    forwards: int = 1000
    eval_points: int = 5

    def validate(self) -> None:
        if not self.tasks:
            raise ZotuneError("give at least one meta-training task with --tasks")
        if not self.top_lrs or len(set(self.top_lrs)) != len(self.top_lrs):
            raise ZotuneError(f"--top-lrs must be distinct and not empty (got {self.top_lrs})")
        for lr in self.top_lrs:
            check_number("--top-lrs", lr, low=0)
        if self.schedule not in (None, *SCHEDULES):
            raise ZotuneError(f"unknown --top-schedule '{self.schedule}'; use one of {', '.join(SCHEDULES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ZotuneError(f"--seeds must be distinct and not empty (got {self.seeds})")
        check_number("--forwards", self.forwards, low=2, integer=True)


def bench_folder(work: Path, task: str, top_lr: float, seed: int, schedule: str | None = None,
                 run_schedule: str = "constant") -> Path:
    """The bench of one (task, top lr, seed) under ``work``: ``<task>/[schedule-<run schedule>/]top-lr-<lr>[-<schedule>]
    /seed-<seed>``, ``schedule`` the step's own, ``run_schedule`` the ZO and head steps' (its folder only when it is
    not constant)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", task).strip("-")
    name = f"top-lr-{top_lr:g}" + (f"-{schedule}" if schedule and top_lr else "")
    run = [] if run_schedule == "constant" else [f"schedule-{run_schedule}"]
    return Path(work, slug, *run, name, f"seed-{seed}")


def select_top_lr(base: FinetuneConfig, search: TopSearch, work: Path, out: Path, tuner: Tuner | None = None,
                  progress: bool = True) -> Tuner:
    """Choose the top-block step's lr for the tuner ``base.tuner`` (method ``tuner``, at ``base.lr``, its head step
    as it carries it) by the benches described in the module docstring, and write the tuner with that step to
    ``out`` (a new ``.safetensors`` file, written atomically). Returns the new tuner."""
    search.validate()
    base = replace(base, method="tuner", top_lr=None, top_schedule=None)
    out, tuner = checked_start(base, out, tuner, "top lr", "top-block step", "the last MLP")
    if tuner.top is not None:
        raise ZotuneError(f"{base.tuner} has a top-block step already (lr {tuner.top_lr:g}); start from a tuner "
                          "without one, such as the one meta-train-head wrote")
    with locked_output(out):
        losses: dict[str, float] = {}
        for top_lr in search.top_lrs:
            per_task = []
            for task in search.tasks:
                cfg = replace(base, task=task, top_lr=top_lr, top_schedule=search.schedule if top_lr else None)
                runs = [tuner_run(cfg, seed, search.forwards, search.eval_points,
                                  bench_folder(work, task, top_lr, seed, search.schedule, base.schedule), tuner,
                                  progress)
                        for seed in search.seeds]
                per_task.append(sum(final_dev_loss(r) for r in runs) / len(runs))
            losses[f"{top_lr:g}"] = sum(per_task) / len(per_task)
        best = min(search.top_lrs, key=lambda lr: losses[f"{lr:g}"])
        if not math.isfinite(losses[f"{best:g}"]):
            raise ZotuneError(f"every candidate of the grid diverged on {', '.join(search.tasks)}; try lower "
                              f"--top-lrs or a lower --lr (now {base.lr:g})")
        chosen = tuner.with_top(best, search.schedule).with_schedule(base.schedule)
        chosen.provenance = {**tuner.provenance, "top_selection": {
            "tasks": list(search.tasks), "forwards": search.forwards, "seeds": list(search.seeds), "lr": base.lr,
            "schedule": search.schedule, "run_schedule": base.schedule, "batch_size": base.batch_size,
            "autocast": base.autocast,
            "dev_loss": {k: (v if math.isfinite(v) else "diverged") for k, v in losses.items()}, "chosen": best,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
        write_tuner(chosen, out)
    return chosen
