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
}
CANDIDATE_METHODS = ("gv", "greedy")  # take --candidates
POOL_METHODS = (*CANDIDATE_METHODS, "ldsd")  # choose among a pool of directions: --q does not apply


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
    device_map: str | None = None       # accelerate's device map ("auto", ...): the model split across devices
    threads: int | None = None
    noise: str = "auto"
    tuner: str | None = None           # a tuner artifact (.safetensors), used by method "tuner"
    candidates: int = 4                # candidate directions per step (methods gv, greedy)
    ldsd_k: int = 4                    # candidate directions per step (method ldsd)
    ldsd_lr: float = 0.1               # learning rate of the LDSD policy mean
    ldsd_decay: float = 0.9            # decay of the LDSD policy mean per step (1 = none)
    ldsd_cap: float = 1.0              # cap on each block's RMS of the LDSD policy mean (in units of sigma = 1)
    ldsd_rule: str = "corrected"       # "released": the public code's noise/loss mis-pairing, for ablations only

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

    def save(self, step: int, cfg: FinetuneConfig, model, opt, sched, result: RunResult, **extra) -> None:
        state = {"step": step, "config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "schedule": sched.state_dict(), "result": asdict(result), **extra}
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


def make_run_optimizer(cfg: FinetuneConfig, model, tuner=None) -> ZOOptimizer:
    """The optimizer ``cfg`` asks for; for method ``tuner``, a :class:`TunedZO` driven by ``tuner`` (the
    loaded artifact; read from ``cfg.tuner`` if not given), refused with a one-line error if it was trained
    for another architecture."""
    if cfg.method in POOL_METHODS:
        from finetune.zo.directions import make_direction_optimizer

        return make_direction_optimizer(cfg.method, cfg.optimizer_name, model, lr=cfg.lr, eps=cfg.eps, seed=cfg.seed,
                                        weight_decay=cfg.weight_decay, noise=cfg.noise, candidates=cfg.candidates,
                                        ldsd_k=cfg.ldsd_k, ldsd_lr=cfg.ldsd_lr, ldsd_decay=cfg.ldsd_decay,
                                        ldsd_cap=cfg.ldsd_cap, ldsd_rule=cfg.ldsd_rule)
    kw = dict(lr=cfg.lr, eps=cfg.eps, q=cfg.directions, seed=cfg.seed, weight_decay=cfg.weight_decay,
              noise=cfg.noise)
    if cfg.method == "tuner":
        from checkpoints import Tuner

        momentum = 0.9 if cfg.optimizer == "momentum" else 0.0
        return TunedZO(model, tuner or Tuner.from_pretrained(cfg.tuner), momentum=momentum, **kw)
    return make_optimizer(cfg.optimizer_name, model, **kw)


def step_closure(model, scorer: TaskScorer, batch: list[Example], dp=None):
    """The loss closure of one step: the batch's loss, or under data parallelism in batch mode, the global
    batch's loss from every rank's shard (:meth:`finetune.zo.distributed.DataParallel.closure`)."""
    if dp is None or dp.mode != "batch":
        return lambda: scorer.loss(model, batch)
    return dp.closure(lambda shard: scorer.loss_terms(model, shard, like=batch),
                      lambda terms: scorer.reduce_terms(terms, batch), batch)


def check_parallel(cfg: FinetuneConfig, opt: ZOOptimizer, dp) -> None:
    """Refuse, in one line, a data-parallel setting that cannot run; set up directions mode."""
    if dp.mode == "batch":
        dp.bounds(cfg.batch_size)
        return
    if cfg.method in POOL_METHODS:  # the candidates' one-sided losses are shared out
        opt.spread_losses = dp.spread_losses
        return
    if getattr(opt, "policy", None) is not None:
        raise ZotuneError("--dp-mode directions is not supported for a tuner with a direction policy "
                          "(one direction per step); use --dp-mode batch")
    if cfg.directions < 2:
        raise ZotuneError(f"--dp-mode directions needs several directions per step (--q >= 2, now "
                          f"{cfg.directions}); use --dp-mode batch or --method nspsa")
    opt.spread = dp.spread


def train(cfg: FinetuneConfig, model, scorer: TaskScorer, task: Task, progress: bool = True,
          checkpoint: Checkpoint | None = None, tuner=None, dp=None, log=None) -> RunResult:
    """Run ``cfg.steps`` ZO steps of ``cfg.method`` on ``task.train``; evaluate on ``task.test``
    before and after (and on ``task.dev`` every ``cfg.eval_every`` steps). With a ``checkpoint``, the
    run is snapshotted as it goes, and continues from an existing snapshot. ``tuner`` is the loaded
    artifact of method ``tuner`` (else read from ``cfg.tuner``). ``dp`` (a
    :class:`finetune.zo.distributed.DataParallel`) runs the steps data-parallel, comparing parameter
    checksums across ranks every ``dp.check_every`` steps; ``log`` (a :class:`finetune.replay.StepLog`)
    records every applied update."""
    opt = make_run_optimizer(cfg, model, tuner)
    sched = make_schedule(opt, cfg.schedule, cfg.steps)
    if dp is not None:
        check_parallel(cfg, opt, dp)
    resuming = checkpoint is not None and checkpoint.path.exists()
    if log is not None and not resuming:
        log.header(model, model_id(cfg.model), opt, asdict(cfg))
    if resuming:
        _check_shards(checkpoint, dp)
        done, result = checkpoint.restore(cfg, model, opt, sched)
    else:
        done, result = 0, RunResult(eval_before=scorer.evaluate(model, task.test, cfg.batch_size))
    if dp is not None:
        dp.check(opt.engine.blocks, f"before step {done + 1}")
    data = batches(task.train, cfg.batch_size, cfg.seed)
    for _ in range(done):  # the batches the interrupted run already used
        next(data)
    start, elapsed = time.perf_counter(), result.seconds
    with progress_bar(progress) as bar:
        bar_task = bar.add_task(cfg.method, total=cfg.steps, completed=done, loss="-", speed="-")
        for step in range(done + 1, cfg.steps + 1):
            batch = next(data)
            loss = opt.step(step_closure(model, scorer, batch, dp))
            if not math.isfinite(loss):
                raise ZotuneError(f"the training loss became {loss} at step {step}; lower --lr (now {cfg.lr}) "
                                  f"or --eps (now {cfg.eps}), or use --dtype fp32")
            if log is not None:
                log.record(step, opt)
            sched.step()
            result.train_loss.append(loss)
            if cfg.eval_every and step % cfg.eval_every == 0 and task.dev:
                result.eval_history.append((step, scorer.evaluate(model, task.dev, cfg.batch_size)))
            result.seconds = elapsed + time.perf_counter() - start
            result.forwards = opt.engine.forwards
            if dp is not None and dp.due(step):
                dp.check(opt.engine.blocks, f"after step {step}")
            if checkpoint is not None and checkpoint.due(step, cfg.steps) and (dp is None or dp.main):
                checkpoint.save(step, cfg, model, opt, sched, result, **({"shards": _shards(dp)} if dp else {}))
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
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
                                  **({"device_map": cfg.device_map} if cfg.device_map else {}))
    return task, model, tokenizer, TaskScorer(tokenizer, max_length=cfg.max_length)


def work_dir(out: Path) -> Path:
    """Where a run to ``out`` writes until it finishes (and keeps its checkpoint if interrupted)."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def finetune(cfg: FinetuneConfig, out: Path, save_model: bool = True, progress: bool = True,
             resume: bool = False, checkpoint_every: int = 100, tuner=None, dp=None, save_log: bool = False) -> dict:
    """Load the model and task, train, and write ``out/metrics.json`` (and ``out/model``) atomically.

    The run works in :func:`work_dir` and renames it to ``out`` when done. Every ``checkpoint_every``
    steps it leaves a checkpoint there; if the run is killed, the same call with ``resume=True`` continues
    from it and ends with the same result as an uninterrupted run. A run that fails before its first
    checkpoint leaves nothing behind. With ``save_log``, ``out/log.jsonl`` holds the run as a replayable
    log (:mod:`finetune.replay`). Under data parallelism (``dp``) rank 0 alone writes; the other ranks
    only read the checkpoint they resume from.
    """
    cfg.validate()
    out, work = Path(out), work_dir(out)
    ckpt = Checkpoint(work / "checkpoint.pt", checkpoint_every)
    writer, error = dp is None or dp.main, None
    try:
        if writer:
            refuse_existing(out)
            if resume and not ckpt.path.exists():
                raise ZotuneError(f"nothing to resume: no checkpoint in {work}; run without --resume")
            if not resume and work.exists():
                raise ZotuneError(f"an interrupted run to {out} is in {work}; add --resume to continue it, "
                                  "or delete that folder")
            work.mkdir(parents=True, exist_ok=True)
    except ZotuneError as exc:
        if dp is None:
            raise
        error = str(exc)
    if dp is not None:
        dp.agree(error)  # rank 0's refusal stops every rank
        if not writer:
            return _follow(cfg, ckpt, tuner, dp)
    try:
        task, model, tokenizer, scorer = prepare(cfg)
        log = None
        if save_log:
            from finetune.replay import LOG_FILE, StepLog

            log = StepLog(work / LOG_FILE, start=_checkpoint_step(ckpt))
        result = train(cfg, model, scorer, task, progress=progress, checkpoint=ckpt, tuner=tuner, dp=dp, log=log)
        metrics = metrics_dict(cfg, task, result)
        if dp is not None:
            metrics["parallel"] = dp.describe()
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
        else:  # keep only the checkpoint (and the log so far): the run can be resumed, nothing half-written remains
            for child in work.iterdir():
                if child not in (ckpt.path, work / "log.jsonl"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _shards(dp) -> int:
    """Into how many shards a step's batch is split (1: the whole batch, as one process computes it)."""
    return 1 if dp is None or dp.mode != "batch" else dp.world


def _check_shards(ckpt: Checkpoint, dp) -> None:
    """Refuse to resume with the batch split into another number of shards: the per-example losses of
    another shard size can differ in the last bits (docs/distributed.md), so the run would not end as the
    interrupted one would have."""
    was, now = torch.load(ckpt.path, map_location="cpu", weights_only=True, mmap=True).get("shards", 1), _shards(dp)
    if was != now:
        how = "in one process (or --dp-mode directions)" if was == 1 else f"with torchrun --nproc-per-node {was}"
        raise ZotuneError(f"cannot resume: the interrupted run split each batch into {was} shard(s), this one into "
                          f"{now}, which can change the losses in the last bits; resume it {how}")


def _checkpoint_step(ckpt: Checkpoint) -> int:
    if not ckpt.path.exists():
        return 0
    return int(torch.load(ckpt.path, map_location="cpu", weights_only=True)["step"])


def _follow(cfg: FinetuneConfig, ckpt: Checkpoint, tuner, dp) -> dict:
    """A data-parallel rank other than 0: train in step with rank 0 (resuming from its checkpoint, if any);
    write nothing."""
    task, model, _, scorer = prepare(cfg)
    result = train(cfg, model, scorer, task, progress=False, checkpoint=ckpt, tuner=tuner, dp=dp)
    return {**metrics_dict(cfg, task, result), "parallel": dp.describe()}
