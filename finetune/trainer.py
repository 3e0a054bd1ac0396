"""The fine-tune loop: ZO steps on a task with progress display, evaluation, and atomic output."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from finetune.common.atomic import atomic_file, refuse_existing
from finetune.common.errors import ZotuneError
from finetune.data.models import EMBEDDED, load_model, model_id, set_threads
from finetune.zo.optim import SCHEDULES, TunedZO, ZOOptimizer, make_optimizer, make_schedule
from finetune.data.scoring import TaskScorer
from finetune.data.batches import batches
from finetune.data.tasks import Example, Task, load_task

DEFAULT_TASK = "bigbench:strategyqa"

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
}
CANDIDATE_METHODS = ("gv", "greedy")  # take --candidates
POOL_METHODS = (*CANDIDATE_METHODS, "ldsd")  # choose among a pool of directions: --q does not apply
BASELINE_METHODS = ("sparse-mezo", "lozo", "bcd", "fzoo", "hizoo")  # finetune.zo.baselines: own step, SGD, no --q
NO_Q_METHODS = (*POOL_METHODS, *BASELINE_METHODS)


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tune run (recorded in ``metrics.json``)."""

    model: str = EMBEDDED
    task: str = DEFAULT_TASK
    method: str = "mezo"
    optimizer: str = "sgd"
    steps: int = 100
    lr: float = 1e-6
    eps: float = 1e-3
    q: int | None = None               # directions per step; None = the method's default
    batch_size: int = 16
    schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0                # evaluate on the dev split every N steps (0 = never)
    n_train: int = 1000
    n_dev: int = 100
    n_test: int = 200
    max_length: int = 256
    dtype: str = "fp32"
    device: str | None = None
    threads: int | None = None
    noise: str = "auto"
    tuner: str | None = None           # a tuner artifact (.safetensors), used by method "tuner"
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

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ZotuneError(f"unknown method '{self.method}'; use one of {', '.join(METHODS)}")
        if self.method == "tuner" and self.tuner is None:
            raise ZotuneError("--method tuner needs --tuner FILE (a .safetensors tuner from meta-train)")
        if self.method == "tuner" and self.optimizer not in ("sgd", "momentum"):
            raise ZotuneError(f"--method tuner works with --optimizer sgd or momentum, not {self.optimizer}")
        if self.schedule not in SCHEDULES:
            raise ZotuneError(f"unknown schedule '{self.schedule}'; use one of {', '.join(SCHEDULES)}")
        for name in ("steps", "batch_size", "n_train", "n_test", "max_length"):
            if getattr(self, name) < 1:
                raise ZotuneError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr < 0 or self.eps <= 0 or (self.q is not None and self.q < 1) or self.eval_every < 0:
            raise ZotuneError("need --lr >= 0, --eps > 0, --q >= 1 and --eval-every >= 0")
        if self.method in POOL_METHODS and self.q is not None:
            flag = "--ldsd-k" if self.method == "ldsd" else "--candidates"
            raise ZotuneError(f"--q does not apply to --method {self.method} (one SPSA direction per step); "
                              f"set {flag} instead")
        if self.candidates < 2:
            raise ZotuneError(f"--candidates must be at least 2 (got {self.candidates})")
        if self.ldsd_k < 2:
            raise ZotuneError(f"--ldsd-k must be at least 2 (got {self.ldsd_k}): one candidate has no baseline")
        if not self.ldsd_lr >= 0:
            raise ZotuneError(f"--ldsd-lr must be >= 0 (got {self.ldsd_lr})")
        if not 0 <= self.ldsd_decay <= 1:
            raise ZotuneError(f"--ldsd-decay must be in [0, 1] (got {self.ldsd_decay})")
        if self.ldsd_rule not in ("corrected", "released"):
            raise ZotuneError(f"--ldsd-rule must be corrected or released (got {self.ldsd_rule})")
        if not self.ldsd_cap > 0:
            raise ZotuneError(f"--ldsd-cap must be > 0 (got {self.ldsd_cap}; inf for no cap)")
        self._validate_baselines()

    def _validate_baselines(self) -> None:
        if self.method in BASELINE_METHODS and self.q is not None:
            raise ZotuneError(f"--q does not apply to --method {self.method} (its own step); drop --q")
        if self.method in BASELINE_METHODS and self.optimizer != "sgd":
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
        if not 0 < self.hizoo_alpha < 1:
            raise ZotuneError(f"--hizoo-alpha must be in (0, 1) (got {self.hizoo_alpha}); 0 never updates the "
                              "Hessian, which is MeZO with a wasted forward pass")

    @property
    def directions(self) -> int:
        return self.q if self.q is not None else METHODS[self.method][1]

    @property
    def optimizer_name(self) -> str:
        return METHODS[self.method][0] or self.optimizer

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
        return 2 * self.directions


@dataclass
class RunResult:
    """What a run produced: the per-step training loss and the evaluation before and after."""

    train_loss: list[float] = field(default_factory=list)
    forwards: int = 0
    eval_before: float = float("nan")
    eval_after: float = float("nan")
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} steps/s"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


class Checkpoint:
    """A resumable snapshot of a fine-tune run in one file, written atomically every ``every`` steps:
    the model weights, the optimizer (with its seed stream), the schedule and the results so far."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = Path(path), every

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, step: int, cfg: FinetuneConfig, model, opt, sched, result: RunResult) -> None:
        state = {"step": step, "config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "schedule": sched.state_dict(), "result": asdict(result)}
        with atomic_file(self.path) as tmp:
            torch.save(state, tmp)

    def restore(self, cfg: FinetuneConfig, model, opt, sched) -> tuple[int, RunResult]:
        """Load the snapshot into ``model``, ``opt`` and ``sched``; return its step and results."""
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved, now, default = dict(state["config"]), asdict(cfg), asdict(FinetuneConfig())
        # (a field newer than the snapshot counts as its default)
        changed = [k for k in now if k not in ("steps", "eval_every") and saved.get(k, default[k]) != now[k]]
        if changed:
            k = changed[0]
            raise ZotuneError(f"cannot resume: the interrupted run used {k}={saved.get(k)!r}, not {now[k]!r}; "
                              f"rerun with its options or delete {self.path.parent}")
        if saved["steps"] != now["steps"] and now["schedule"] != "constant":
            raise ZotuneError(f"cannot resume with steps={now['steps']}: the interrupted run's {now['schedule']} "
                              f"schedule decays over {saved['steps']} steps; rerun with --steps {saved['steps']} "
                              f"(only a constant schedule can be extended) or delete {self.path.parent}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        result = RunResult(**state["result"])
        result.eval_history = [tuple(h) for h in result.eval_history]
        return state["step"], result


def make_run_optimizer(cfg: FinetuneConfig, model) -> ZOOptimizer:
    """The optimizer ``cfg`` asks for; for method ``tuner``, a :class:`TunedZO` driven by the artifact
    ``cfg.tuner`` (refused with a one-line error if it was trained for another architecture)."""
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
        except ValueError as e:
            if cfg.method == "bcd":  # the only option checked against the model: more layers than it has
                groups = len(layer_groups(model, [p for p in model.parameters() if p.requires_grad]))
                raise ZotuneError(f"--bcd-layers {cfg.bcd_layers:g} is more than the model's {groups} layer "
                                  "groups; lower it") from None
            raise
    kw = dict(lr=cfg.lr, eps=cfg.eps, q=cfg.directions, seed=cfg.seed, weight_decay=cfg.weight_decay,
              noise=cfg.noise)
    if cfg.method == "tuner":
        from checkpoints import Tuner

        momentum = 0.9 if cfg.optimizer == "momentum" else 0.0
        return TunedZO(model, Tuner.from_pretrained(cfg.tuner), momentum=momentum, **kw)
    return make_optimizer(cfg.optimizer_name, model, **kw)


def train(cfg: FinetuneConfig, model, scorer: TaskScorer, task: Task, progress: bool = True,
          checkpoint: Checkpoint | None = None) -> RunResult:
    """Run ``cfg.steps`` ZO steps of ``cfg.method`` on ``task.train``; evaluate on ``task.test``
    before and after (and on ``task.dev`` every ``cfg.eval_every`` steps). With a ``checkpoint``, the
    run is snapshotted as it goes, and continues from an existing snapshot."""
    opt = make_run_optimizer(cfg, model)
    sched = make_schedule(opt, cfg.schedule, cfg.steps)
    if checkpoint is not None and checkpoint.path.exists():
        done, result = checkpoint.restore(cfg, model, opt, sched)
    else:
        done, result = 0, RunResult(eval_before=scorer.evaluate(model, task.test, cfg.batch_size))
    data = batches(task.train, cfg.batch_size, cfg.seed)
    for _ in range(done):  # the batches the interrupted run already used
        next(data)
    start, elapsed = time.perf_counter(), result.seconds
    with progress_bar(progress) as bar:
        bar_task = bar.add_task(cfg.method, total=cfg.steps, completed=done, loss="-", speed="-")
        for step in range(done + 1, cfg.steps + 1):
            batch = next(data)
            loss = opt.step(lambda: scorer.loss(model, batch))
            if not math.isfinite(loss):
                raise ZotuneError(f"the training loss became {loss} at step {step}; lower --lr (now {cfg.lr}) "
                                  f"or --eps (now {cfg.eps}), or use --dtype fp32")
            sched.step()
            result.train_loss.append(loss)
            if cfg.eval_every and step % cfg.eval_every == 0 and task.dev:
                result.eval_history.append((step, scorer.evaluate(model, task.dev, cfg.batch_size)))
            result.seconds = elapsed + time.perf_counter() - start
            result.forwards = opt.engine.forwards
            if checkpoint is not None and checkpoint.due(step, cfg.steps):
                checkpoint.save(step, cfg, model, opt, sched, result)
            bar.update(bar_task, advance=1, loss=f"{loss:.4f}", speed=f"{(step - done) / (time.perf_counter() - start):.2f}")
    result.forwards = opt.engine.forwards
    result.eval_after = scorer.evaluate(model, task.test, cfg.batch_size)
    return result


def metrics_dict(cfg: FinetuneConfig, task: Task, result: RunResult) -> dict:
    return {
        "method": cfg.method,
        "optimizer": cfg.optimizer_name,
        "model": model_id(cfg.model),
        "task": task.name,
        "steps": cfg.steps,
        "forwards": result.forwards,
        "train_loss": result.train_loss,
        "eval": {"metric": task.metric, "split": "test", "n": len(task.test),
                 "before": result.eval_before, "after": result.eval_after},
        "eval_history": [{"step": s, "dev": v} for s, v in result.eval_history],
        "seconds": result.seconds,
        "config": asdict(cfg),
    }


def prepare(cfg: FinetuneConfig) -> tuple[Task, object, object, TaskScorer]:
    """Everything a run needs, loaded as ``cfg`` says: the task splits, the model, its tokenizer, the scorer."""
    set_threads(cfg.threads)
    task = load_task(cfg.task, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev, n_test=cfg.n_test)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)
    return task, model, tokenizer, TaskScorer(tokenizer, max_length=cfg.max_length)


def work_dir(out: Path) -> Path:
    """Where a run to ``out`` writes until it finishes (and keeps its checkpoint if interrupted)."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def finetune(cfg: FinetuneConfig, out: Path, save_model: bool = True, progress: bool = True,
             resume: bool = False, checkpoint_every: int = 100) -> dict:
    """Load the model and task, train, and write ``out/metrics.json`` (and ``out/model``) atomically.

    The run works in :func:`work_dir` and renames it to ``out`` when done. Every ``checkpoint_every``
    steps it leaves a checkpoint there; if the run is killed, the same call with ``resume=True`` continues
    from it and ends with the same result as an uninterrupted run. A run that fails before its first
    checkpoint leaves nothing behind.
    """
    cfg.validate()
    out, work = Path(out), work_dir(out)
    refuse_existing(out)
    ckpt = Checkpoint(work / "checkpoint.pt", checkpoint_every)
    if resume and not ckpt.path.exists():
        raise ZotuneError(f"nothing to resume: no checkpoint in {work}; run without --resume")
    if not resume and work.exists():
        raise ZotuneError(f"an interrupted run to {out} is in {work}; add --resume to continue it, "
                          "or delete that folder")
    work.mkdir(parents=True, exist_ok=True)
    try:
        task, model, tokenizer, scorer = prepare(cfg)
        result = train(cfg, model, scorer, task, progress=progress, checkpoint=ckpt)
        metrics = metrics_dict(cfg, task, result)
        (work / "metrics.json").write_text(json.dumps(metrics, indent=1))
        if save_model:
            model.save_pretrained(work / "model")
            tokenizer.save_pretrained(work / "model")
        ckpt.path.unlink(missing_ok=True)
        if out.exists():
            out.rmdir()  # an empty folder made beforehand
        os.replace(work, out)
        return metrics
    except BaseException:
        if not ckpt.path.exists():
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep only the checkpoint: the run can be resumed, and nothing half-written remains
            for child in work.iterdir():
                if child != ckpt.path:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
