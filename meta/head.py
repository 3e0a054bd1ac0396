"""The head part of a tuner: the lr of its head step, chosen on the meta-training tasks.

A tuner can carry a head step (:mod:`finetune.head`): fine-tuning with it also moves the output head's option
rows along their exact gradient, read off the ZO forward passes, with Adam. Its lr is a property of the base
model and the tuner, not of the target task, so it is chosen once, here, on the meta-training tasks, and
carried to new tasks in the artifact (``head`` in its metadata, format version 3).

The choice is made by real fine-tuning runs, not by a proxy: for every lr of the grid, each meta-training task
gets a bench (:func:`finetune.bench.bench`) of method ``tuner``, with the tuner's own scales at its recommended
lr plus the head step at that lr, ``forwards`` forward passes per seed. The lr whose runs end with the lowest
dev loss, averaged over seeds and then over tasks, goes into the artifact; a run that diverged counts as an
infinite loss. A grid may hold 0 (no head step), so that the choice can also be "none". With ``race``, one more
candidate joins the grid: a head race over those lrs (:class:`finetune.head.HeadRace`; format version 4 when it
wins). The test split is never read for the choice (it is evaluated, as in every bench, and left alone).

The ZO step's lr can be chosen with the head lr (``lrs``, ``--lrs``): then every (lr, head lr) pair of the two
grids gets its benches, the pair with the lowest mean final dev loss wins, and its lr becomes the tuner's
recommended lr, so that the number the tuner recommends is chosen by the same rule on the same tasks, not carried
in by hand. Without ``lrs`` the ZO lr is the one given (``--lr``, else the tuner's recommended lr), as before.

Each (task, head lr, seed) bench lives in its own folder under ``work`` (:func:`bench_folder`) and resumes after a
kill, so an interrupted selection continues where it stopped when the same command is given again; finished benches
are read, not rerun. One bench per seed means a choice can be widened later: the same command with more
``--seeds`` or ``--tasks`` (or a wider grid) runs only the benches it does not have yet.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from checkpoints import Tuner
from finetune.common.errors import ZotuneError
from finetune.common.runs import check_number
from finetune.trainer import FinetuneConfig
from meta.selection import checked_start, final_dev_loss, locked_output, tuner_run, write_tuner


@dataclass
class HeadSearch:
    """What the head lr is chosen on: tasks, grid, budget and seeds (the run options are in the base config)."""

    tasks: list[str]
    head_lrs: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])
    forwards: int = 1000
    eval_points: int = 5
    race: list[float] | None = None    # one more candidate: a head race over these lrs
    lrs: list[float] | None = None     # a grid of the ZO step's lr, chosen with the head lr (None: the base lr)

    def grid_lr(self, lr: float) -> float | None:
        """The ZO lr as the benches' folders and candidate names carry it: None without ``--lrs`` (their old
        layout, which names no ZO lr)."""
        return None if self.lrs is None else lr

    @property
    def candidates(self) -> list:
        """The grid's head lrs, then the race (a tuple of lrs) when there is one."""
        return [*self.head_lrs, *([tuple(sorted(self.race))] if self.race else [])]

    def validate(self) -> None:
        if not self.tasks:
            raise ZotuneError("give at least one meta-training task with --tasks")
        if not self.head_lrs or len(set(self.head_lrs)) != len(self.head_lrs):
            raise ZotuneError(f"--head-lrs must be distinct and not empty (got {self.head_lrs})")
        for lr in self.head_lrs:
            check_number("--head-lrs", lr, low=0)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ZotuneError(f"--seeds must be distinct and not empty (got {self.seeds})")
        check_number("--forwards", self.forwards, low=2, integer=True)
        if self.race is not None:
            if len(self.race) < 2 or len(set(self.race)) != len(self.race):
                raise ZotuneError(f"--race needs two or more distinct lrs (got {self.race})")
            for lr in self.race:
                check_number("--race", lr, low=0, low_open=True)
        if self.lrs is not None:
            if not self.lrs or len(set(self.lrs)) != len(self.lrs):
                raise ZotuneError(f"--lrs must be distinct and not empty (got {self.lrs})")
            for lr in self.lrs:
                check_number("--lrs", lr, low=0, low_open=True)


def candidate_name(head: float | tuple, lr: float | None = None) -> str:
    """A candidate's name in the grid's dev losses: ``0.0003``, or ``race 0.0001,0.0003``; with a grid of ZO lrs,
    the pair: ``lr 3e-05, head 0.0003``."""
    name = f"{head:g}" if not isinstance(head, tuple) else "race " + ",".join(f"{x:g}" for x in head)
    return name if lr is None else f"lr {lr:g}, head {name}"


def bench_folder(work: Path, task: str, head_lr: float | tuple, seed: int, lr: float | None = None) -> Path:
    """The bench of one (task, head lr, seed) under ``work``; with a grid of ZO lrs, of one (task, lr, head lr,
    seed), under ``lr-<lr>`` (a search without that grid keeps the layout it always had)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", task).strip("-")
    if lr is not None:
        slug = f"{slug}/lr-{lr:g}"
    if isinstance(head_lr, tuple):
        name = "head-race-" + "-".join(f"{x:g}" for x in head_lr)
    else:
        name = f"head-lr-{head_lr:g}"
    return Path(work) / slug / name / f"seed-{seed}"


def run_bench(base: FinetuneConfig, search: HeadSearch, task: str, head_lr: float | tuple, seed: int, work: Path,
              tuner: Tuner, progress: bool = True) -> dict:
    """The run of one (task, head lr or race, seed) bench at ``base.lr``: read when finished, resumed when
    interrupted, else run."""
    folder = bench_folder(work, task, head_lr, seed, lr=search.grid_lr(base.lr))
    head = dict(head_race=list(head_lr)) if isinstance(head_lr, tuple) else dict(head_lr=head_lr)
    run = tuner_run(replace(base, task=task, **head), seed, search.forwards, search.eval_points, folder, tuner,
                    progress)
    if isinstance(head_lr, tuple) and "held_back" not in (run.get("head_race") or {}):
        raise ZotuneError(f"{folder} raced its head lrs by an older rule (a running loss on the training stream, not "
                          "the held-back examples of today's race): give this search its own --work, or move that "
                          "folder away")
    return run


def select_head_lr(base: FinetuneConfig, search: HeadSearch, work: Path, out: Path, tuner: Tuner | None = None,
                   progress: bool = True) -> Tuner:
    """Choose the head step's lr for the tuner ``base.tuner`` (method ``tuner``, at ``base.lr``) by the benches
    described in the module docstring, and write the tuner with that head step to ``out`` (a ``.safetensors``
    file, written atomically; an existing file is refused). Returns the new tuner."""
    search.validate()
    base = replace(base, method="tuner", head_lr=None, head_race=None)
    out, tuner = checked_start(base, out, tuner, "head lr", "head step", "the output head")
    if tuner.head is not None:
        raise ZotuneError(f"{base.tuner} has a head step already ({tuner.head_text}); start from a tuner without "
                          "one, such as the one meta-train wrote")
    with locked_output(out):
        losses: dict[str, float] = {}
        pairs = {}  # candidate name -> (ZO lr, head lr or race)
        for lr in (search.lrs or [base.lr]):
            for head_lr in search.candidates:
                per_task = []
                for task in search.tasks:
                    runs = [run_bench(replace(base, lr=lr), search, task, head_lr, seed, work, tuner, progress)
                            for seed in search.seeds]
                    per_task.append(sum(final_dev_loss(r) for r in runs) / len(runs))
                key = candidate_name(head_lr, search.grid_lr(lr))
                losses[key], pairs[key] = sum(per_task) / len(per_task), (lr, head_lr)
        best_key = min(losses, key=lambda k: losses[k])
        if not math.isfinite(losses[best_key]):
            lower = "lower --lrs" if search.lrs else f"a lower --lr (now {base.lr:g})"
            raise ZotuneError(f"every candidate of the grid diverged on {', '.join(search.tasks)}; try lower "
                              f"--head-lrs or {lower}")
        lr, best = pairs[best_key]
        chosen = tuner.with_head_race(best) if isinstance(best, tuple) else tuner.with_head(best)
        chosen.recommended = {**tuner.recommended, "lr": lr, "eps": base.eps}
        chosen.provenance = {**tuner.provenance, "head_selection": {
            "tasks": list(search.tasks), "forwards": search.forwards, "seeds": list(search.seeds), "lr": lr,
            **({"lrs": list(search.lrs)} if search.lrs else {}),
            "batch_size": base.batch_size, "autocast": base.autocast,
            "dev_loss": {k: (v if math.isfinite(v) else "diverged") for k, v in losses.items()},
            "chosen": list(best) if isinstance(best, tuple) else best,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
        write_tuner(chosen, out)
    return chosen


def untrained_tuner(model: str, work: Path, dtype: str = "fp32", seed: int = 0) -> Path:
    """An untrained tuner for ``model`` (every scale 1: MeZO) in ``work``, written once and reused on resume."""
    from finetune.data.models import load_model, model_id

    path = Path(work) / "untrained-tuner.safetensors"
    if not path.exists():
        net, _ = load_model(model, dtype=dtype, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        Tuner.for_model(net, model_id(model), seed=seed).save_pretrained(path)
    return path
