"""The fine-tune loop: ZO steps on a task with progress display, evaluation, and atomic output."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from finetune.common.errors import ZotuneError
from finetune.common.runs import (FP16_MAX, DivergenceGuard, Diverged, RunConfig, RunLock, Snapshot,
                                  changed_fields, check_number, check_output, os_error, sha256_file,
                                  sha256_json, sha256_tensors, strict_json, write_failed)
from finetune.data.adapters import AdapterSpec, apply_peft, load_snapshot_weights, save_trained, snapshot_weights
from finetune.data.models import EMBEDDED, load_model, model_id, set_threads
from finetune.head import HeadRace, HeadStep, head_tokens, option_token_ids
from finetune.top import TopStep
from finetune.zo.optim import (SCHEDULES, PlainPass, TunedZO, ZOOptimizer, make_optimizer, make_schedule,
                               schedule_factor)
from finetune.data.scoring import TaskScorer
from finetune.data.batches import batches
from finetune.data.tasks import Example, Task, TaskColumns, example_rows, load_task

DEFAULT_TASK = "packaged:city-country"  # the main job's held-out task: data from a PyPI wheel, and ZO learns there

# method -> (optimizer, default number of SPSA directions per step)
METHODS: dict[str, tuple[str | None, int]] = {
    "mezo": (None, 1),      # two-point SPSA, one direction (MeZO); --optimizer picks sgd/momentum/adam
    "nspsa": (None, 4),     # n-SPSA: the average of q two-point estimates per step
    "zo-adam": ("adam", 1),  # MeZO's estimate fed to Adam
    "tuner": (None, 1),     # a meta-trained tuner (--tuner) sets per-block scales every step (ZO Fine-tuner)
    "gv": (None, 1),        # MeZO-GV: SPSA along best-half-minus-rest of --candidates ranked directions
    "greedy": (None, 1),    # MeZO-Greedy: SPSA along the best of --candidates directions
    "ldsd": (None, 1),      # learnable direction sampling: the best of --ldsd-k draws from N(mu, I), mu learned
    "sparse-mezo": (None, 1),  # MeZO on the small-magnitude entries of each matrix (--sparsity not trained)
    "lozo": (None, 1),      # low-rank U V^T perturbations of each matrix, V kept --lozo-interval steps
    "bcd": (None, 1),       # block-coordinate: --bcd-layers random layer groups perturbed and updated per step
    "fzoo": (None, 1),      # --fzoo-n one-sided Rademacher directions, step normalised by the losses' spread
    "hizoo": (None, 1),     # perturbation scaled by a diagonal-Hessian EMA (one extra forward pass)
    "fo": (None, 1),        # first-order reference: backpropagation, --optimizer adam (AdamW, default)/sgd/momentum
    "exact": (None, 1),     # no ZO step: one forward pass at theta per step, read by the head and top-block steps
}
FO = "fo"  # the one method with a backward pass (finetune/fo.py); not inference-level memory
EXACT = "exact"  # the head and top-block steps alone, from one plain forward pass per step (optim.PlainPass)
CANDIDATE_METHODS = ("gv", "greedy")  # take --candidates
POOL_METHODS = (*CANDIDATE_METHODS, "ldsd")  # choose among a pool of directions: --q does not apply
FO_NOT_PARALLEL = ("--method fo does not run data-parallel (its gradients are not all-reduced across ranks); "
                   "run it without torchrun")
BASELINE_METHODS = ("sparse-mezo", "lozo", "bcd", "fzoo", "hizoo")  # finetune.zo.baselines: own step, SGD, no --q
NO_Q_METHODS = (*POOL_METHODS, *BASELINE_METHODS)


@dataclass
class FinetuneConfig(RunConfig):
    """Everything that defines a fine-tune run (recorded in ``metrics.json``)."""

    model: str = EMBEDDED
    task: str = DEFAULT_TASK
    method: str = "mezo"
    optimizer: str | None = None       # sgd | momentum | adam; None = the method's default (fo: adam, else sgd)
    lr: float = 1e-6
    q: int | None = None               # directions per step; None = the method's default
    schedule: str = "constant"
    weight_decay: float = 0.0
    head_lr: float | None = None       # ZO methods: Adam lr of the head step's option rows (0 = off; finetune/head.py);
                                       # None = the method's default: the tuner's (methods tuner, exact), else off
    head_race: list[float] | None = None  # ZO methods: race these head lrs on the same passes (finetune/head.py)
    top_lr: float | None = None        # ZO methods: Adam lr of the last MLP's exact step (0 = off; finetune/top.py);
                                       # None = the method's default: the tuner's (methods tuner, exact), else off
    top_schedule: str | None = None    # the top-block step's lr schedule; None = the tuner's (as head_lr), else
                                       # the run's (--schedule)
    eval_every: int = 0                # evaluate on the dev split every N steps (0 = never)
    n_dev: int = 100
    n_test: int = 200
    tuner: str | None = None           # a tuner artifact (.safetensors), used by method "tuner"; method "exact"
                                       # takes its head and top-block steps from it
    candidates: int = 4                # candidate directions per step (methods gv, greedy)
    ldsd_k: int = 4                    # candidate directions per step (method ldsd)
    ldsd_lr: float = 0.1               # learning rate of the LDSD policy mean
    ldsd_decay: float = 0.9            # decay of the LDSD policy mean per step (1 = none)
    ldsd_cap: float = 1.0              # cap on each block's RMS of the LDSD policy mean (in units of sigma = 1)
    ldsd_rule: str = "corrected"       # "released": the public code's noise/loss mis-pairing, for ablations only
    sparsity: float = 0.8              # sparse-mezo: fraction of each matrix NOT trained (its largest |theta|)
    lozo_rank: int = 2                 # lozo: rank of U V^T
    lozo_interval: int = 50            # lozo: steps that one V is kept
    bcd_layers: float = 1              # bcd: layer groups active per step (>= 1: a count; < 1: a fraction)
    fzoo_n: int = 8                    # fzoo: one-sided directions per step (N + 1 forward passes)
    hizoo_alpha: float = 1e-6          # hizoo: smoothing of the Hessian EMA
    peft: str | None = None            # train an adapter only: lora, prefix, norms (finetune/data/adapters.py)
    lora_r: int = 8
    lora_alpha: float | None = None    # None: 2 * lora_r
    lora_dropout: float = 0.0          # must be 0 for ZO
    lora_targets: str | None = None    # None: the architecture's attention query and value projections
    prefix_tokens: int = 10
    merge: bool = False                # with peft lora or norms: save the merged full model, not the adapter
    autocast: str | None = None        # "bf16": every forward pass under torch.autocast (weights stay fp32)
    # the user's own table (CSV, JSON/JSONL, parquet, save_to_disk folder): which columns make the examples
    input_column: str | None = None    # the prompt (default "input" once any column option is given)
    options_column: str | None = None  # multiple choice: a list of options per row
    label_words: str | None = None     # multiple choice: the same options for every row, comma-separated ("no,yes")
    label_column: str | None = None    # multiple choice: the gold option (index or text)
    target_column: str | None = None   # generation: the gold answer

    def task_columns(self) -> TaskColumns | None:
        """The column mapping the ``*_column`` / ``label_words`` options give, or None when none is given."""
        given = dict(options=self.options_column, label_words=self.label_words, label=self.label_column,
                     target=self.target_column)
        if self.input_column is None and all(v is None for v in given.values()):
            return None
        return TaskColumns(input=self.input_column or "input", **given)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ZotuneError(f"unknown method '{self.method}'; use one of {', '.join(METHODS)}")
        if self.method == "tuner" and self.tuner is None:
            raise ZotuneError("--method tuner needs --tuner FILE (a .safetensors tuner from meta-train)")
        if self.optimizer not in (None, "sgd", "momentum", "adam"):
            raise ZotuneError(f"unknown optimizer '{self.optimizer}'; use sgd, momentum or adam")
        if self.method == "tuner" and self.optimizer_name not in ("sgd", "momentum"):
            raise ZotuneError(f"--method tuner works with --optimizer sgd or momentum, not {self.optimizer}")
        if self.method == FO and self.q is not None:
            raise ZotuneError("--q does not apply to --method fo (it backpropagates the loss; no directions)")
        if self.schedule not in SCHEDULES:
            raise ZotuneError(f"unknown schedule '{self.schedule}'; use one of {', '.join(SCHEDULES)}")
        self.validate_run()
        check_number("--n-test", self.n_test, low=1, integer=True)
        check_number("--n-dev", self.n_dev, low=0, integer=True)
        check_number("--eval-every", self.eval_every, low=0, integer=True)
        check_number("--lr", self.lr, low=0)
        check_number("--weight-decay", self.weight_decay, low=0)
        if self.head_lr is not None:
            check_number("--head-lr", self.head_lr, low=0)
        flag = "--head-race" if self.head_race else "--head-lr"
        if self.head_race:
            for lr in self.head_race:
                check_number("--head-race", lr, low=0, low_open=True)
            if len(set(self.head_race)) != len(self.head_race) or len(self.head_race) < 2:
                raise ZotuneError(f"--head-race needs two or more distinct lrs (got {self.head_race}); for one, use "
                                  "--head-lr")
            if self.head_lr is not None:
                raise ZotuneError("give --head-lr (one head lr) or --head-race (several, raced), not both")
        if (self.head_lr or self.head_race) and self.method == FO:
            raise ZotuneError(f"{flag} is for ZO methods; --method fo trains the head by backpropagation already: "
                              f"drop {flag}")
        if (self.head_lr or self.head_race) and self.peft not in (None, "lora"):
            raise ZotuneError(f"{flag} steps the output head, which --peft {self.peft} keeps frozen; use --peft lora "
                              f"(its adapter then carries the option rows) or drop {flag}")
        if self.top_lr is not None:
            check_number("--top-lr", self.top_lr, low=0)
        if self.top_schedule not in (None, *SCHEDULES):
            raise ZotuneError(f"unknown --top-schedule '{self.top_schedule}'; use one of {', '.join(SCHEDULES)}")
        if self.top_schedule is not None and not (self.top_lr or self.top_lr is None and self.takes_tuner_steps):
            raise ZotuneError(no_top_step(self.top_schedule))  # a tuner's step is known once it is read
        if self.top_lr and self.method == FO:
            raise ZotuneError("--top-lr is for ZO methods; --method fo trains the last MLP by backpropagation already: "
                              "drop --top-lr")
        if self.top_lr and self.peft is not None:
            raise ZotuneError(f"--top-lr steps the last MLP, which --peft {self.peft} keeps frozen; drop one of the "
                              "two")
        if self.q is not None:
            check_number("--q", self.q, low=1, integer=True)
        if self.autocast not in (None, "bf16"):
            raise ZotuneError(f"--autocast must be bf16 (got {self.autocast!r}); leave it out for fp32 compute")
        if self.autocast is not None and self.dtype != "fp32":
            raise ZotuneError(f"--autocast {self.autocast} computes in bf16 from fp32 weights; with --dtype "
                              f"{self.dtype} the weights are low-precision already: drop one of the two")
        if self.dtype == "fp16" and self.lr > FP16_MAX:
            raise ZotuneError(f"--lr {self.lr:g} does not fit in --dtype fp16 (largest value {FP16_MAX:g}); "
                              "lower --lr or use --dtype fp32")
        if self.method in POOL_METHODS and self.q is not None:
            flag = "--ldsd-k" if self.method == "ldsd" else "--candidates"
            raise ZotuneError(f"--q does not apply to --method {self.method} (one SPSA direction per step); "
                              f"set {flag} instead")
        if not isinstance(self.candidates, int) or self.candidates < 2:
            raise ZotuneError(f"--candidates must be at least 2 (got {self.candidates})")
        if not isinstance(self.ldsd_k, int) or self.ldsd_k < 2:
            raise ZotuneError(f"--ldsd-k must be at least 2 (got {self.ldsd_k}): one candidate has no baseline")
        check_number("--ldsd-lr", self.ldsd_lr, low=0)
        if not 0 <= self.ldsd_decay <= 1:
            raise ZotuneError(f"--ldsd-decay must be in [0, 1] (got {self.ldsd_decay})")
        if self.ldsd_rule not in ("corrected", "released"):
            raise ZotuneError(f"--ldsd-rule must be corrected or released (got {self.ldsd_rule})")
        if not self.ldsd_cap > 0:  # inf is allowed: no cap
            raise ZotuneError(f"--ldsd-cap must be > 0 (got {self.ldsd_cap}; inf for no cap)")
        AdapterSpec.of(self).validate()
        if self.merge and self.peft not in ("lora", "norms"):
            raise ZotuneError("--merge applies to --peft lora or norms: " + (
                "prefix tuning cannot be merged into the weights; drop --merge" if self.peft else
                "a full-model run always writes the full model; drop --merge"))
        self.task_columns()  # a contradictory column mapping fails here, before anything is loaded
        self._validate_baselines()
        self._validate_exact()

    def _validate_exact(self) -> None:
        if self.method != EXACT:
            return
        if not (self.head_lr or self.head_race or self.top_lr or self.tuner):
            raise ZotuneError("--method exact trains only with the head step or the top-block step: add --head-lr "
                              "and/or --top-lr, or --tuner (its steps) (docs/methods.md, 'The exact steps alone')")
        if self.q is not None:
            raise ZotuneError("--q does not apply to --method exact (no ZO directions: one plain forward pass per "
                              "step); drop --q")
        if self.weight_decay:
            raise ZotuneError("--weight-decay applies to ZO updates, and --method exact makes none; drop "
                              "--weight-decay")
        if self.optimizer is not None:
            raise ZotuneError(f"--method exact makes no ZO update (the head and top-block steps use Adam); drop "
                              f"--optimizer {self.optimizer}")

    def _validate_baselines(self) -> None:
        if self.method in BASELINE_METHODS and self.q is not None:
            raise ZotuneError(f"--q does not apply to --method {self.method} (its own step); drop --q")
        if self.method in BASELINE_METHODS and self.optimizer not in (None, "sgd"):
            raise ZotuneError(f"--method {self.method} uses its own SGD update; drop --optimizer {self.optimizer}")
        if not 0 <= self.sparsity < 1:
            raise ZotuneError(f"--sparsity must be in [0, 1), the fraction of each matrix not trained "
                              f"(got {self.sparsity})")
        if self.lozo_rank < 1:
            raise ZotuneError(f"--lozo-rank must be at least 1 (got {self.lozo_rank})")
        if self.lozo_interval < 1:
            raise ZotuneError(f"--lozo-interval must be at least 1 step (got {self.lozo_interval})")
        if not (0 < self.bcd_layers < 1 or (self.bcd_layers >= 1 and self.bcd_layers == int(self.bcd_layers))):
            raise ZotuneError(f"--bcd-layers must be a count >= 1 or a fraction in (0, 1) (got {self.bcd_layers})")
        if self.fzoo_n < 2:
            raise ZotuneError(f"--fzoo-n must be at least 2 (got {self.fzoo_n}): the step divides by the "
                              "spread of N losses")
        if self.method == "sparse-mezo" and self.peft == "lora":
            raise ZotuneError("--method sparse-mezo cannot train --peft lora: LoRA's B matrices start at zero, so "
                              "their magnitude threshold is 0 and every entry would stop after one step")
        if not 0 < self.hizoo_alpha < 1:
            raise ZotuneError(f"--hizoo-alpha must be in (0, 1) (got {self.hizoo_alpha}); 0 never updates the "
                              "Hessian, which is MeZO with a wasted forward pass")

    @property
    def takes_tuner_steps(self) -> bool:
        """Whether the run takes its head and top-block steps from a tuner file (method tuner, or exact with one)."""
        return self.method == "tuner" or self.method == EXACT and self.tuner is not None

    @property
    def directions(self) -> int:
        return self.q if self.q is not None else METHODS[self.method][1]

    @property
    def optimizer_name(self) -> str:
        return METHODS[self.method][0] or self.optimizer or ("adam" if self.method == FO else "sgd")

    @property
    def forwards_per_step(self) -> int:
        """Forward passes one step of the method makes (what ``engine.forwards`` advances by)."""
        if self.method == "gv":
            return self.candidates + 2  # one-sided candidates, then +- along the guiding vector
        if self.method == "greedy":
            return self.candidates + 1  # the best candidate's loss is the plus side
        if self.method == "ldsd":
            return self.ldsd_k + 1
        if self.method == "fzoo":
            return self.fzoo_n + 1  # N one-sided directions and the unperturbed loss
        if self.method == "hizoo":
            return 3  # the unperturbed loss and +- along the scaled direction
        if self.method in (FO, EXACT):
            return 1  # fo: one forward pass with autograd, then one backward pass (backwards_per_step)
        return 2 * self.directions

    @property
    def backwards_per_step(self) -> int:
        return 1 if self.method == FO else 0


@dataclass
class RunResult:
    """What a run produced: the per-step training loss and the evaluation before and after."""

    train_loss: list[float] = field(default_factory=list)
    forwards: int = 0
    backwards: int = 0
    eval_before: float = float("nan")
    eval_after: float = float("nan")
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0               # spent in training steps (evaluations excluded)
    loss_before: float = float("nan")  # test loss (the training loss's definition, mean over the test split)
    loss_after: float = float("nan")
    curve: list[dict] = field(default_factory=list)  # evaluation points: step, forwards, test and dev loss/metric
    calibration: dict | None = None    # the calibration reference (multiple choice; finetune/calibration.py)
    head_lr: float = 0.0               # the head step's lr the run took (0: none; a race: its lr holding the rows
                                       # at the end)
    head_race: dict | None = None      # a --head-race run: HeadRace.summary() at the end


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} steps/s"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def snapshot_state(step: int, cfg: FinetuneConfig, model, opt, sched, result: RunResult, inputs: dict,
                   shards: int = 1, head: HeadStep | None = None, top: TopStep | None = None) -> dict:
    """What a fine-tune snapshot holds: the model weights, the optimizer (with its seed stream), the
    schedule, the results so far, the config, the input fingerprints and into how many shards each batch
    was split (data parallelism, :func:`_shards`)."""
    return {"step": step, "config": asdict(cfg), "inputs": inputs, "model": snapshot_weights(model),
            "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "result": asdict(result),
            "shards": shards, **({"head": head.state_dict()} if head is not None else {}),
            **({"top": top.state_dict()} if top is not None else {})}


def restore(snapshot: Snapshot, cfg: FinetuneConfig, model, opt, sched, inputs: dict,
            head: HeadStep | None = None, top: TopStep | None = None) -> tuple[int, RunResult]:
    """Load ``snapshot`` into ``model``, ``opt`` and ``sched`` after checking it was made by the same run
    (options and inputs); return its step and results."""
    state = snapshot.load()
    now = asdict(cfg)
    snapshot.check(state, now, recorded_config({}), inputs, ignore=("steps", "eval_every", "threads"))
    saved_steps = state["config"].get("steps", now["steps"])
    decaying = [s for s in (cfg.schedule, cfg.top_schedule or cfg.schedule if cfg.top_lr else "constant")
                if s != "constant"]
    if saved_steps != now["steps"] and decaying:
        raise ZotuneError(f"cannot resume with steps={now['steps']}: the interrupted run's {decaying[0]} "
                          f"schedule decays over {saved_steps} steps; rerun with --steps {saved_steps} "
                          f"(only a constant schedule can be extended), or {snapshot.restart_hint}")
    try:
        load_snapshot_weights(model, state["model"])  # with an adapter, the snapshot holds its tensors only
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        if head is not None:
            head.load_state_dict(state["head"])
        if top is not None:
            top.load_state_dict(state["top"])
        result = RunResult(**state["result"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ZotuneError(f"the snapshot {snapshot.path} does not fit this run ({type(e).__name__}); "
                          f"{snapshot.restart_hint}") from None
    result.eval_history = [tuple(h) for h in result.eval_history]
    return state["step"], result


def run_tuner(cfg: FinetuneConfig, tuner=None):
    """The loaded artifact a run of method ``tuner`` uses, or a run of method ``exact`` takes its steps from
    (``tuner``, else read from ``cfg.tuner``); None for the other methods and for exact without a tuner."""
    if not cfg.takes_tuner_steps:
        return None
    from checkpoints import Tuner

    return tuner or Tuner.from_pretrained(cfg.tuner)


def head_lrs_of(cfg: FinetuneConfig, tuner=None) -> list[float]:
    """The head lrs a run takes (none, one for a head step, several for a race): ``--head-race``'s (ascending), else
    ``--head-lr`` when given (0: none), else the tuner's (method ``tuner``, or ``exact`` with one), else none."""
    if cfg.head_race:
        return sorted(cfg.head_race)
    if cfg.head_lr is not None:
        return [cfg.head_lr] if cfg.head_lr > 0 else []
    tuner = run_tuner(cfg, tuner)
    return [] if tuner is None else tuner.head_lrs


def top_lr_of(cfg: FinetuneConfig, tuner=None) -> float:
    """The top-block step's lr a run takes (0: none): ``--top-lr`` when given, else the tuner's (method ``tuner``, or
    ``exact`` with one), else 0."""
    if cfg.top_lr is not None:
        return cfg.top_lr
    tuner = run_tuner(cfg, tuner)
    return 0.0 if tuner is None else tuner.top_lr


def top_schedule_of(cfg: FinetuneConfig, tuner=None) -> str | None:
    """The top-block step's own lr schedule a run takes: ``--top-schedule`` when given, else the tuner's when the
    run takes the tuner's step (method ``tuner``, or ``exact`` with one, without ``--top-lr``), else None: the run's
    ``--schedule``. Refuses a ``--top-schedule`` for a run that takes no top-block step (a tuner without one, or
    ``--top-lr 0``)."""
    if cfg.top_schedule is not None and not top_lr_of(cfg, tuner):
        raise ZotuneError(no_top_step(cfg.top_schedule))
    if cfg.top_schedule is not None or cfg.top_lr is not None:
        return cfg.top_schedule
    tuner = run_tuner(cfg, tuner)
    return None if tuner is None else tuner.top_schedule


def no_top_step(schedule: str) -> str:
    """The refusal of a ``--top-schedule`` given to a run that takes no top-block step (it would do nothing)."""
    return (f"--top-schedule {schedule} schedules the top-block step, and this run takes none: add --top-lr (or use "
            "a tuner that carries a top-block step), or drop --top-schedule")


def recorded_config(config: dict) -> dict:
    """A run's recorded options with the defaults of the options newer than the run filled in (what it ran with:
    a snapshot's resume reads it the same way). ``top_lr`` is recorded resolved (:func:`finetune`): a run from
    before the option existed ran without the step, 0."""
    out = {**asdict(FinetuneConfig()), **config}
    return out | {"top_lr": 0.0} if out["top_lr"] is None else out


def make_run_optimizer(cfg: FinetuneConfig, model, tuner=None) -> ZOOptimizer:
    """The optimizer ``cfg`` asks for; for method ``tuner``, a :class:`TunedZO` driven by ``tuner`` (the
    loaded artifact; read from ``cfg.tuner`` if not given), refused with a one-line error if it was trained
    for another architecture; for method ``fo``, a ``torch.optim`` optimizer that backpropagates
    (:mod:`finetune.fo`)."""
    if cfg.method == FO:
        from finetune.fo import make_fo_optimizer

        return make_fo_optimizer(cfg.optimizer_name, model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.method in POOL_METHODS:
        from finetune.zo.directions import make_direction_optimizer

        return make_direction_optimizer(cfg.method, cfg.optimizer_name, model, lr=cfg.lr, eps=cfg.eps, seed=cfg.seed,
                                        weight_decay=cfg.weight_decay, noise=cfg.noise, candidates=cfg.candidates,
                                        ldsd_k=cfg.ldsd_k, ldsd_lr=cfg.ldsd_lr, ldsd_decay=cfg.ldsd_decay,
                                        ldsd_cap=cfg.ldsd_cap, ldsd_rule=cfg.ldsd_rule)
    if cfg.method in BASELINE_METHODS:
        from finetune.zo.baselines import layer_groups, make_baseline

        try:
            return make_baseline(cfg.method, model, lr=cfg.lr, eps=cfg.eps, seed=cfg.seed,
                                 weight_decay=cfg.weight_decay, noise=cfg.noise, sparsity=cfg.sparsity,
                                 lozo_rank=cfg.lozo_rank, lozo_interval=cfg.lozo_interval,
                                 bcd_layers=cfg.bcd_layers, fzoo_n=cfg.fzoo_n, hizoo_alpha=cfg.hizoo_alpha)
        except ValueError:
            if cfg.method == "bcd":  # the only option checked against the model: more layers than it has
                groups = len(layer_groups(model, [p for p in model.parameters() if p.requires_grad]))
                raise ZotuneError(f"--bcd-layers {cfg.bcd_layers:g} is more than the model's {groups} layer "
                                  "groups; lower it") from None
            raise
    kw = dict(lr=cfg.lr, eps=cfg.eps, q=cfg.directions, seed=cfg.seed, weight_decay=cfg.weight_decay,
              noise=cfg.noise)
    if cfg.method == EXACT:
        return PlainPass(model, **kw)
    if cfg.method == "tuner":
        momentum = 0.9 if cfg.optimizer == "momentum" else 0.0
        return TunedZO(model, run_tuner(cfg, tuner), momentum=momentum, **kw)
    return make_optimizer(cfg.optimizer_name, model, **kw)


def pass_counts(opt) -> tuple[int, int]:
    """(forward passes, backward passes) an optimizer has made so far."""
    if hasattr(opt, "backwards"):
        return opt.forwards, opt.backwards
    return opt.engine.forwards, 0


def evaluation_point(step: int, forwards: int, model, scorer: TaskScorer, task: Task, batch_size: int,
                     final: bool = False, test: dict | None = None) -> dict:
    """Test loss and metric, and dev loss and metric, at one point of a run (``test``: already computed).
    For generation, the test metric (decoding) is computed at the ``final`` point only."""
    test = test or scorer.assess(model, task.test, batch_size, metric=final)
    point = {"step": step, "forwards": forwards, "test_loss": test["loss"], "test": test["metric"]}
    if task.dev:
        dev = scorer.assess(model, task.dev, batch_size)
        point.update(dev_loss=dev["loss"], dev=dev["metric"])
    return point


def step_closure(model, scorer: TaskScorer, batch: list[Example], dp=None):
    """The loss closure of one step: the batch's loss, or under data parallelism in batch mode, the global
    batch's loss from every rank's shard (:meth:`finetune.zo.distributed.DataParallel.closure`)."""
    if dp is None or dp.mode != "batch":
        return lambda: scorer.loss(model, batch)
    return dp.closure(lambda shard: scorer.loss_terms(model, shard, like=batch),
                      lambda terms: scorer.reduce_terms(terms, batch), batch)


def check_parallel(cfg: FinetuneConfig, opt: ZOOptimizer, dp, head_lrs: list[float] | None = None) -> None:
    """Refuse, in one line, a data-parallel setting that cannot run; set up directions mode. ``head_lrs``: the
    run's head lrs (default: :func:`head_lrs_of` of ``cfg``, which reads the tuner file ``cfg`` names)."""
    if cfg.method == FO:
        raise ZotuneError(FO_NOT_PARALLEL)
    if top_lr_of(cfg):
        raise ZotuneError("the top-block step (--top-lr, or a tuner's) runs in one process (a data-parallel run does "
                          "not gather the top block's inputs yet); pass --top-lr 0 or run without torchrun")
    if dp.mode != "batch" and (head_lrs_of(cfg) if head_lrs is None else head_lrs):  # ranks' passes differ there
        raise ZotuneError("the head step (--head-lr, --head-race, or a tuner's) runs data-parallel in --dp-mode batch "
                          "only; use --dp-mode batch")
    if dp.mode == "batch":
        dp.bounds(cfg.batch_size)
        return
    if cfg.method in POOL_METHODS:  # the candidates' one-sided losses are shared out
        opt.spread_losses = dp.spread_losses
        return
    if cfg.method in BASELINE_METHODS:
        raise ZotuneError(f"--dp-mode directions is not supported for --method {cfg.method} (its step is its own); "
                          "use --dp-mode batch")
    if getattr(opt, "policy", None) is not None:
        raise ZotuneError("--dp-mode directions is not supported for a tuner with a direction policy "
                          "(one direction per step); use --dp-mode batch")
    if cfg.directions < 2:
        raise ZotuneError(f"--dp-mode directions needs several directions per step (--q >= 2, now "
                          f"{cfg.directions}); use --dp-mode batch or --method nspsa")
    opt.spread = dp.spread


def compute_precision(cfg: FinetuneConfig, model):
    """The context every forward pass of a run is made in: ``torch.autocast`` to bfloat16 on the model's device
    type with ``cfg.autocast`` (matrix products in bf16, weights, perturbations and updates in fp32), else
    nothing. It holds for the whole run, so its cast cache is off."""
    if cfg.autocast is None:
        return nullcontext()
    # no cast cache: it would keep serving the bf16 copy of a weight after the weight changed (it lives as long
    # as the context, here the whole run), so each pass casts the weights it reads, as a per-step AMP loop does
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, cache_enabled=False)


def train(cfg: FinetuneConfig, model, scorer: TaskScorer, task: Task, progress: bool = True,
          snapshot: Snapshot | None = None, inputs: dict | None = None, tuner=None,
          calibrate: bool = False, dp=None, log=None) -> RunResult:
    """Run ``cfg.steps`` steps of ``cfg.method`` on ``task.train``; evaluate on ``task.test`` before and
    after (loss and metric), and on ``task.test`` and ``task.dev`` every ``cfg.eval_every`` steps
    (``result.curve``; the dev metric also in ``eval_history``). With ``calibrate``, a multiple-choice run
    first computes the calibration reference of the frozen model (:mod:`finetune.calibration`). With a
    ``snapshot``, the run is snapshotted as it goes, and continues from an existing snapshot (made with the
    same ``inputs``). ``tuner`` is the loaded artifact of method ``tuner`` (else read from ``cfg.tuner``).
    ``dp`` (a :class:`finetune.zo.distributed.DataParallel`) runs the steps data-parallel, comparing
    parameter checksums across ranks before the first step and every ``dp.check_every`` steps; only its
    rank 0 saves snapshots. ``log`` (a :class:`finetune.replay.StepLog`) records every applied update.
    Every forward pass (steps, evaluations, calibration) runs under :func:`compute_precision`.
    Raises :class:`Diverged` when the loss or the weights stop being finite or run away."""
    with compute_precision(cfg, model):
        return _train(cfg, model, scorer, task, progress, snapshot, inputs, tuner, calibrate, dp, log)


def _train(cfg: FinetuneConfig, model, scorer: TaskScorer, task: Task, progress: bool, snapshot: Snapshot | None,
           inputs: dict | None, tuner, calibrate: bool, dp, log) -> RunResult:
    inputs = inputs or {}
    tuner = run_tuner(cfg, tuner)
    cfg = replace(cfg, top_lr=top_lr_of(cfg, tuner), top_schedule=top_schedule_of(cfg, tuner))  # as taken (snapshot)
    opt = make_run_optimizer(cfg, model, tuner)
    sched = make_schedule(opt, cfg.schedule, cfg.steps)
    head, head_lrs = None, head_lrs_of(cfg, tuner)
    head_lr = head_lrs[0] if head_lrs else 0.0
    if dp is not None:
        check_parallel(cfg, opt, dp, head_lrs)
    if head_lrs:
        option_token_ids(scorer, task.train)  # a task the head step cannot serve fails here, before any pass
        # dp is None or in batch mode here: check_parallel refused a head step in directions mode
        head = HeadStep(model, scorer, head_lr, dp=dp) if len(head_lrs) == 1 else \
            HeadRace(model, scorer, head_lrs, dp=dp)
    if log is not None and cfg.method == EXACT:
        raise ZotuneError("--save-log records ZO updates, and --method exact makes none; drop --save-log")
    top, top_lr = None, cfg.top_lr
    if cfg.method == EXACT and not (head_lrs or top_lr):  # a tuner without either step, or both turned off
        raise ZotuneError("--method exact trains only with the head step or the top-block step, and this run takes "
                          "neither: add --head-lr and/or --top-lr")
    if top_lr:
        if log is not None:
            raise ZotuneError("--save-log does not record the top-block step (--top-lr, or a tuner's) yet; drop "
                              "--save-log or pass --top-lr 0")
        option_token_ids(scorer, task.train, "--top-lr")  # the same tasks as the head step: one-token options
        top = TopStep(model, scorer, top_lr)
    guard = DivergenceGuard([p for group in opt.param_groups for p in group["params"]])
    resuming = snapshot is not None and snapshot.exists()
    if log is not None and not resuming:
        log.header(model, model_id(cfg.model), opt, asdict(cfg))
    if resuming:
        _check_shards(snapshot, dp)
        done, result = restore(snapshot, cfg, model, opt, sched, inputs, head, top)
    else:
        before = scorer.assess(model, task.test, cfg.batch_size)
        done, result = 0, RunResult(eval_before=before["metric"], loss_before=before["loss"], head_lr=head_lr)
        result.curve.append(evaluation_point(0, 0, model, scorer, task, cfg.batch_size, test=before))
        if calibrate:
            from finetune.calibration import calibration_reference

            result.calibration = calibration_reference(model, scorer, task, cfg.batch_size, before["scores"])
    if dp is not None:
        dp.check(opt.engine.blocks, f"before step {done + 1}")
    data = batches(task.train, cfg.batch_size, cfg.seed)
    for _ in range(done):  # the batches the interrupted run already used
        next(data)
    hint = f"lower --lr (now {cfg.lr}) or --eps (now {cfg.eps})"
    hint += ", or use --dtype fp32" if cfg.dtype != "fp32" else ""
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        bar_task = bar.add_task(cfg.method, total=cfg.steps, completed=done, loss="-", speed="-")
        for step in range(done + 1, cfg.steps + 1):
            batch = next(data)
            tick = time.perf_counter()
            try:
                with head.watching(batch) if head is not None else nullcontext(), \
                        top.watching(batch) if top is not None else nullcontext():
                    loss = opt.step(step_closure(model, scorer, batch, dp))
            except RuntimeError as e:
                if "overflow" not in str(e):
                    raise
                raise Diverged(f"the update overflowed {cfg.dtype} at step {step}; {hint}") from None
            if not math.isfinite(loss):
                raise Diverged(f"the training loss became {loss} at step {step}; {hint}")
            if head is not None:
                head.step(schedule_factor(cfg.schedule, step - 1, cfg.steps))  # the factor the ZO step used
            if top is not None:
                top.step(schedule_factor(cfg.top_schedule or cfg.schedule, step - 1, cfg.steps))
            if log is not None:
                log.record(step, opt, head)
            sched.step()
            result.seconds += time.perf_counter() - tick
            due = snapshot is not None and snapshot.due(step, cfg.steps)
            guard.check(step, hint, force=due)
            result.train_loss.append(loss)
            guard.check_loss(result.train_loss, step, hint)
            result.forwards, result.backwards = pass_counts(opt)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                point = evaluation_point(step, result.forwards, model, scorer, task, cfg.batch_size)
                result.curve.append(point)
                if task.dev:
                    result.eval_history.append((step, point["dev"]))
            if dp is not None and dp.due(step):
                dp.check(opt.engine.blocks, f"after step {step}")
            if due and (dp is None or dp.main):
                snapshot.save(snapshot_state(step, cfg, model, opt, sched, result, inputs, shards=_shards(dp),
                                             head=head, top=top))
            bar.update(bar_task, advance=1, loss=f"{loss:.4f}", speed=f"{(step - done) / (time.perf_counter() - start):.2f}")
    guard.check(cfg.steps, hint, force=True)  # never hand back non-finite weights (also after a resume at the end)
    result.forwards, result.backwards = pass_counts(opt)
    if isinstance(head, HeadRace):
        result.head_lr, result.head_race = head.lr_active, head.summary()
    if cfg.method == FO:
        opt.zero_grad(set_to_none=True)  # free the gradients (a bench reuses the model for the next run)
    final = evaluation_point(cfg.steps, result.forwards, model, scorer, task, cfg.batch_size, final=True)
    if not result.curve or result.curve[-1]["step"] != cfg.steps:
        result.curve.append(final)
    if cfg.eval_every and cfg.steps % cfg.eval_every == 0 and task.dev:
        result.eval_history.append((cfg.steps, final["dev"]))
    result.eval_after, result.loss_after = final["test"], final["test_loss"]
    return result


def gains(result: RunResult) -> dict:
    """The run's raw gain on the test split (metric up, loss down) and, for multiple choice, its gain beyond
    the calibration reference (the test metric and loss after fitting only per-option offsets)."""
    out = {"metric": result.eval_after - result.eval_before, "loss": result.loss_before - result.loss_after}
    if result.calibration is not None:
        cal = result.calibration["test"]["after"]
        out.update(metric_beyond_calibration=result.eval_after - cal["accuracy"],
                   loss_beyond_calibration=cal["loss"] - result.loss_after)
    return out


def metrics_dict(cfg: FinetuneConfig, task: Task, result: RunResult) -> dict:
    return {
        "method": cfg.method,
        "optimizer": cfg.optimizer_name,
        "head_lr": result.head_lr,
        **({"head_race": result.head_race} if result.head_race else {}),
        "model": model_id(cfg.model),
        "task": task.name,
        "steps": cfg.steps,
        "forwards": result.forwards,
        "backwards": result.backwards,
        "train_loss": result.train_loss,
        "eval": {"metric": task.metric, "split": "test", "n": len(task.test),
                 "sha256": sha256_json(example_rows(task.test)),
                 "before": result.eval_before, "after": result.eval_after,
                 "loss_before": result.loss_before, "loss_after": result.loss_after},
        "eval_history": [{"step": s, "dev": v} for s, v in result.eval_history],
        "curve": result.curve,
        "calibration": result.calibration,
        "gain": gains(result),
        "seconds": result.seconds,
        "seconds_per_forward": result.seconds / result.forwards if result.forwards else None,
        "config": asdict(cfg),
    }


def prepare(cfg: FinetuneConfig) -> tuple[Task, object, object, TaskScorer]:
    """Everything a run needs, loaded as ``cfg`` says: the task splits, the model, its tokenizer, the scorer."""
    set_threads(cfg.threads)
    task = load_task(cfg.task, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev, n_test=cfg.n_test,
                     columns=cfg.task_columns())
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
                                  **({"device_map": cfg.device_map} if cfg.device_map else {}))
    scorer = TaskScorer(tokenizer, max_length=cfg.max_length)
    # with --peft, only the adapter is trainable; a head step adds the option rows to a LoRA adapter
    tokens = head_tokens(scorer, task.train) if cfg.peft == "lora" and (cfg.head_lr or cfg.head_race) else ()
    model = apply_peft(model, AdapterSpec.of(cfg), seed=cfg.seed, head_tokens=tokens)
    return task, model, tokenizer, scorer


def work_dir(out: Path) -> Path:
    """Where a run to ``out`` writes until it finishes (and keeps its snapshot if interrupted)."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


SNAPSHOT_FILE = "snapshot.pt"
FINISHED_FILE = "finished.json"  # in the working folder: the outputs are complete, only the rename is left
_LEGACY_SNAPSHOT = "checkpoint.pt"


def snapshot_path(out: Path) -> Path:
    """The resumable snapshot of a run to ``out`` (inside :func:`work_dir`)."""
    work = work_dir(out)
    legacy = work / _LEGACY_SNAPSHOT  # written before snapshots had their own name
    return legacy if legacy.exists() and not (work / SNAPSHOT_FILE).exists() else work / SNAPSHOT_FILE


def run_inputs(cfg: FinetuneConfig, task: Task, model) -> dict:
    """Fingerprints of what a run reads: the task data, the model's weights, the tuner file."""
    examples = example_rows((*task.train, *task.dev, *task.test))
    inputs = {"task data": sha256_json([task.name, task.kind, examples]),
              "model": sha256_tensors(model.state_dict().items())}
    if cfg.tuner is not None:
        inputs["tuner"] = sha256_file(cfg.tuner)
    return inputs


def _save_outputs(work: Path, metrics: dict, model, tokenizer, save_model: bool, merge: bool = False) -> None:
    (work / "metrics.json").write_text(strict_json(metrics, indent=1))
    if save_model:
        folder = save_trained(model, tokenizer, work, merge=merge)  # out/model, or out/adapter with --peft
        mask = os.umask(0)
        os.umask(mask)
        for f in folder.iterdir():  # some writers make private (0600) files; follow the umask
            if f.is_file():
                os.chmod(f, 0o666 & ~mask)


def _move_into_place(work: Path, out: Path) -> None:
    """Rename the finished working folder to ``out``; on failure keep it whole and say how to finish."""
    try:
        if out.is_symlink() or out.is_file() or (out.is_dir() and any(out.iterdir())):
            raise FileExistsError(errno.EEXIST, "it exists now")
        if out.exists():
            out.rmdir()  # an empty folder made beforehand
        os.replace(work, out)
    except OSError as e:
        raise ZotuneError(f"the run finished but could not be moved to {out} ({e.strerror or e}); it is kept "
                          f"in {work}: free {out} and rerun the same command with --resume") from None
    for name in (SNAPSHOT_FILE, _LEGACY_SNAPSHOT, FINISHED_FILE):
        (out / name).unlink(missing_ok=True)


def finetune(cfg: FinetuneConfig, out: Path, save_model: bool = True, progress: bool = True,
             resume: bool = False, snapshot_every: int = 100, start_over: bool = False, tuner=None,
             calibrate: bool = True, dp=None, save_log: bool = False) -> dict:
    """Load the model and task, train, and write ``out/metrics.json`` (and ``out/model``) atomically.

    ``out`` is checked and locked before any work. The run works in :func:`work_dir` and renames it to
    ``out`` when done. Every ``snapshot_every`` steps it leaves a snapshot there; if the run is killed,
    the same call with ``resume=True`` continues from it (refused if the options or inputs changed) and
    ends with the same result as an uninterrupted run. ``start_over`` discards an interrupted run first.
    A run that fails before its first snapshot leaves nothing behind. ``tuner``: the loaded artifact of
    method ``tuner`` (else read from ``cfg.tuner``). ``calibrate``: compute the calibration reference of
    the frozen model first (multiple choice; :mod:`finetune.calibration`). With ``cfg.peft`` the adapter
    is written to ``out/adapter`` instead of ``out/model`` (with ``cfg.merge``, the merged model to ``out/model``).
    With ``save_log``,
    ``out/log.jsonl`` holds the run as a replayable log (:mod:`finetune.replay`; kept with the snapshot
    when the run is interrupted). Under data parallelism (``dp``) rank 0 alone checks, locks and writes
    the folder, its refusal stops every rank, and the other ranks train in step (:func:`_follow`),
    reading only the snapshot they resume from.
    """
    cfg.validate()
    check_number("--checkpoint-every", snapshot_every, low=0, integer=True)
    if save_log and cfg.method == FO:
        raise ZotuneError("--save-log does not support --method fo (a backpropagated update is not a list of "
                          "seeds and coefficients); drop --save-log")
    tuner = run_tuner(cfg, tuner)  # loaded once for the run (it may set the head step's and top-block step's lrs)
    # recorded as taken, so that runs of one computation pair
    cfg = replace(cfg, top_lr=top_lr_of(cfg, tuner), top_schedule=top_schedule_of(cfg, tuner))
    if dp is not None and cfg.method == FO:
        raise ZotuneError(FO_NOT_PARALLEL)
    writer = dp is None or dp.main
    with ExitStack() as stack:
        shared: dict = {"error": None, "done": None, "snapshot": None}
        try:
            if writer:
                out = check_output(Path(out))
                stack.enter_context(RunLock(out))
                shared["done"] = _prepare_folder(cfg, out, resume, snapshot_every, start_over)
                shared["snapshot"] = str(snapshot_path(out))
        except ZotuneError as e:
            if dp is None:
                raise
            shared["error"] = str(e)
        if dp is not None:
            shared = dp.share(shared)  # rank 0's refusal stops every rank; the others learn where to resume from
            if shared["error"] is not None:
                raise ZotuneError(shared["error"])
        if shared["done"] is not None:  # a finished run moved into place
            return shared["done"]
        if not writer:
            return _follow(cfg, Snapshot(Path(shared["snapshot"]), snapshot_every, restart_hint=_restart_hint(out)),
                           tuner, dp)
        out = Path(out)
        work = work_dir(out)
        snapshot = Snapshot(snapshot_path(out), snapshot_every, restart_hint=_restart_hint(out))
        finished = work / FINISHED_FILE
        log_file = work / "log.jsonl"
        try:
            task, model, tokenizer, scorer = prepare(cfg)
            inputs = run_inputs(cfg, task, model)
            log = None
            if save_log:
                from finetune.replay import LOG_FILE, StepLog

                log_file = work / LOG_FILE
                log = StepLog(log_file, start=_snapshot_step(snapshot))
            result = train(cfg, model, scorer, task, progress=progress, snapshot=snapshot, inputs=inputs,
                           tuner=tuner, calibrate=calibrate, dp=dp, log=log)
            metrics = metrics_dict(cfg, task, result)
            if dp is not None:
                metrics["parallel"] = dp.describe()
            try:
                _save_outputs(work, metrics, model, tokenizer, save_model, cfg.merge)
                finished.write_text(strict_json({"config": asdict(cfg), "inputs": inputs}))
            except Exception as e:  # noqa: BLE001 - only write errors are turned into one line
                if (e := os_error(e)) is None:
                    raise
                raise write_failed(f"the outputs in {work}", e, "rerun the same command"
                                   + (" with --resume" if snapshot.exists() else "")) from None
        except BaseException as e:
            if not snapshot.exists():
                shutil.rmtree(work, ignore_errors=True)
            else:  # keep only the snapshot (and the log so far): the run can be resumed, nothing half-written remains
                for child in work.iterdir():
                    if child not in (snapshot.path, log_file):
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                if isinstance(e, Diverged):  # resuming would diverge again from the same snapshot
                    raise Diverged(f"{e}; its snapshot is kept in {work}: rerun with the lower value and "
                                   "--start-over (which discards it)") from None
            raise
        _move_into_place(work, out)
        return metrics


def _restart_hint(out: Path) -> str:
    return f"rerun with --start-over (or delete {work_dir(Path(out))}) to start over"


def _prepare_folder(cfg: FinetuneConfig, out: Path, resume: bool, snapshot_every: int,
                    start_over: bool) -> dict | None:
    """With ``out`` locked: check it again, discard an interrupted run (``start_over``), refuse a resume
    without a snapshot or a fresh run over an interrupted one, and make the working folder. A finished run
    whose final rename failed is moved into place on ``resume``: its metrics are returned (else None)."""
    work = work_dir(out)
    check_output(out)  # again, now that no other run can write it
    if start_over and work.exists():
        shutil.rmtree(work)
    snapshot = Snapshot(snapshot_path(out), snapshot_every, restart_hint=_restart_hint(out))
    finished = work / FINISHED_FILE
    if resume and finished.exists():  # a finished run whose final rename failed
        try:
            saved = json.loads(finished.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ZotuneError(f"{finished} is unreadable; move the outputs in {work} by hand, or "
                              "rerun with --start-over") from None
        changed = changed_fields(saved, asdict(cfg), recorded_config({}), ignore=("threads",))
        if changed:
            raise ZotuneError(f"cannot resume: the finished run in {work} used {changed[0]}="
                              f"{saved.get(changed[0])!r}; rerun with its options, or {snapshot.restart_hint}")
        _move_into_place(work, out)
        return json.loads((out / "metrics.json").read_text())
    if resume and not snapshot.exists():
        raise ZotuneError(f"nothing to resume: no snapshot in {work}; run without --resume")
    if not resume and work.exists():
        raise ZotuneError(f"an interrupted run to {out} is in {work}; add --resume to continue it, "
                          "or --start-over to discard it")
    work.mkdir(parents=True, exist_ok=True)
    return None


def _shards(dp) -> int:
    """Into how many shards a step's batch is split (1: the whole batch, as one process computes it)."""
    return 1 if dp is None or dp.mode != "batch" else dp.world


def _check_shards(snapshot: Snapshot, dp) -> None:
    """Refuse to resume with the batch split into another number of shards: the per-example losses of
    another shard size can differ in the last bits (docs/distributed.md), so the run would not end as the
    interrupted one would have."""
    try:
        was = torch.load(snapshot.path, map_location="cpu", weights_only=True, mmap=True).get("shards", 1)
    except Exception:  # noqa: BLE001 - an unreadable snapshot is refused on one line by restore()
        return
    now = _shards(dp)
    if was != now:
        how = "in one process (or --dp-mode directions)" if was == 1 else f"with torchrun --nproc-per-node {was}"
        raise ZotuneError(f"cannot resume: the interrupted run split each batch into {was} shard(s), this one into "
                          f"{now}, which can change the losses in the last bits; resume it {how}")


def _snapshot_step(snapshot: Snapshot) -> int:
    """The step an existing snapshot was taken after (0 without one)."""
    if not snapshot.exists():
        return 0
    return int(snapshot.load()["step"])


def _follow(cfg: FinetuneConfig, snapshot: Snapshot, tuner, dp) -> dict:
    """A data-parallel rank other than 0: train in step with rank 0 (resuming from its snapshot, if any);
    write nothing. The calibration reference (which needs no other rank) is rank 0's alone."""
    task, model, _, scorer = prepare(cfg)
    inputs = run_inputs(cfg, task, model)
    result = train(cfg, model, scorer, task, progress=False, snapshot=snapshot, inputs=inputs, tuner=tuner,
                   calibrate=False, dp=dp)
    return {**metrics_dict(cfg, task, result), "parallel": dp.describe()}
