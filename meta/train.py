"""The meta-training stage: learn a tuner (the PertNN bank) for one base model on several tasks.

The base model follows a first-order trajectory, SGD with momentum and gradient clipping, whose learning
rate decays linearly to 0 over each period of ``restart_every`` steps, after which the weights are reset
to the pretrained ones (ZO Fine-tuner's "restarts"). At every point of it, on a minibatch of a task drawn
at random, the bank takes one Adam step on the loss after ``unroll`` virtual ZO steps
(:mod:`meta.metagrad`). With ``unroll = 1`` the first-order step reuses ∇L(θ') from the meta backward
(θ' − θ is one tiny ZO step), so a meta step costs two forward passes and one forward-backward.

Each task keeps its own loss history (the features are per run, as at deployment). With
``direction_policy``, a direction policy (:mod:`pertnn.policy`) is trained jointly with the bank by the
same Adam step, and each task also keeps its own online mean direction, reset at every restart. Steps are
deterministic given ``seed``: the task, the batch and the noise seed of step t are functions of
(seed, t), so a run resumed from a snapshot ends with the same artifact as an uninterrupted one.
"""
from __future__ import annotations

import datetime
import math
import random
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from checkpoints import Tuner
from finetune.common.atomic import atomic_file
from finetune.common.errors import ZotuneError
from finetune.common.runs import (Diverged, RunConfig, RunLock, Snapshot, check_number, check_output, flag_of,
                                  os_error, sha256_json, sha256_tensors, strict_json, write_failed)
from finetune.data.adapters import AdapterSpec, apply_peft
from finetune.data.models import EMBEDDED, load_model, model_id, set_threads
from finetune.zo.online import OnlineMean
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Task, load_task
from finetune.data.batches import batches
from finetune.zo.engine import ZOEngine
from pertnn import FeatureConfig, PertNNConfig, StepHistory
from pertnn.policy import PolicyConfig

from .metagrad import MetaStep, closed_form, unrolled

DEFAULT_TASKS = ("packaged:word-class", "packaged:article")  # the main job's: meta-training tasks where ZO learns


@dataclass
class MetaConfig(RunConfig):
    """Everything that defines a meta-training run (recorded in the artifact's provenance)."""

    model: str = EMBEDDED
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    steps: int = 200
    unroll: int = 1                # K: virtual ZO steps differentiated per meta step (1 = closed form)
    batch_size: int = 8
    virtual_lr: float = 1e-4       # η of the virtual ZO step: the fine-tuning lr the tuner prepares for
    meta_lr: float = 1e-3          # Adam on the bank
    fo_lr: float = 1e-3            # first-order SGD trajectory of the base model
    fo_momentum: float = 0.8
    restart_every: int = 50        # reset the base model to its pretrained weights every N steps
    hidden: int = 32               # PertNN hidden width
    energy_norm: bool = True
    direction_policy: bool = False  # also meta-train a direction policy (gates on an online mean direction)
    policy_hidden: int = 16
    max_gate: float = 0.8          # |gate| bound: at most max_gate² of a block's perturbation energy on the mean
    mean_decay: float = 0.9        # decay of the online mean direction (a constant of the policy)
    peft: str | None = None        # meta-train for an adapter's blocks: lora, prefix, norms (finetune/data/adapters.py)
    lora_r: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: str | None = None
    prefix_tokens: int = 10

    def validate(self) -> None:
        if not self.tasks:
            raise ZotuneError("give at least one meta-training task with --tasks")
        self.validate_run()
        if self.device_map is not None:
            raise ZotuneError("--device-map applies to finetune and bench; meta-train runs on one --device")
        for name in ("unroll", "restart_every", "hidden"):
            check_number(flag_of(name), getattr(self, name), low=1, integer=True)
        for name in ("virtual_lr", "meta_lr"):
            check_number(flag_of(name), getattr(self, name), low=0, low_open=True)
        check_number("--fo-lr", self.fo_lr, low=0)
        check_number("--fo-momentum", self.fo_momentum, low=0, high=1, high_open=True)
        if self.direction_policy:
            if self.unroll != 1:
                raise ZotuneError("--direction-policy is meta-trained with the closed form: use --unroll 1")
            check_number("--policy-hidden", self.policy_hidden, low=1, integer=True)
            check_number("--max-gate", self.max_gate, low=0, high=1, low_open=True, high_open=True)
            check_number("--mean-decay", self.mean_decay, low=0, high=1, high_open=True)
        AdapterSpec.of(self).validate()
        if self.peft is not None and self.unroll != 1:
            raise ZotuneError("--peft is meta-trained with the closed form (higher cannot wrap a peft model): use --unroll 1")


def step_plan(seed: int, step: int, n_tasks: int) -> tuple[int, int]:
    """The task index and the noise seeds' base of meta step ``step`` (a pure function of its arguments)."""
    rng = random.Random(seed * 1_000_003 + step)
    return rng.randrange(n_tasks), rng.randrange(2**62)


def _package_version() -> str:
    try:
        return version("zotune")
    except PackageNotFoundError:
        return "unknown"


class MetaTrainer:
    """Holds a run's state (model, bank, optimizers, histories, log) and advances it step by step."""

    def __init__(self, cfg: MetaConfig, dp=None):
        cfg.validate()
        self.cfg = cfg
        self.dp = dp  # a finetune.zo.distributed.DataParallel under torchrun (meta/parallel.py), else None
        self.par = None
        if dp is not None:
            from .parallel import MetaParallel

            dp.bounds(cfg.batch_size)
            self.par = MetaParallel(dp)
        set_threads(cfg.threads)
        self.tasks: list[Task] = [load_task(t, seed=cfg.seed, n_train=cfg.n_train, n_dev=0, n_test=0)
                                  for t in cfg.tasks]
        for t in self.tasks:
            if len(t.train) < cfg.batch_size:
                raise ZotuneError(f"task {t.name} has {len(t.train)} training examples, fewer than "
                                  f"--batch-size {cfg.batch_size}")
        self.model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)
        self.model = apply_peft(self.model, AdapterSpec.of(cfg), seed=cfg.seed)  # the tuner's blocks: the adapter's
        # fingerprints of what the run reads, stored in its snapshots and checked on resume
        self.inputs = {"task data": sha256_json([[t.name, [[e.prompt, list(e.options), e.label, list(e.answers)]
                                                            for e in t.train]] for t in self.tasks]),
                       "model": sha256_tensors(self.model.state_dict().items())}
        self.scorer = TaskScorer(tokenizer, max_length=cfg.max_length)
        self.engine = ZOEngine(self.model, noise=cfg.noise)
        params = self.engine.params
        self.theta0 = [p.detach().to("cpu", copy=True) for p in params]
        pcfg = PertNNConfig(hidden=cfg.hidden, energy_norm=cfg.energy_norm)
        policy_cfg = (PolicyConfig(hidden=cfg.policy_hidden, max_gate=cfg.max_gate, decay=cfg.mean_decay)
                      if cfg.direction_policy else None)
        self.tuner = Tuner.for_model(self.model, model_id(cfg.model), pcfg, FeatureConfig(), seed=cfg.seed,
                                     policy_config=policy_cfg)
        self.bank = self.tuner.bank.to(params[0].device)
        self.policy = None if policy_cfg is None else self.tuner.policy.to(params[0].device)
        meta_params = list(self.bank.parameters()) + ([] if self.policy is None else list(self.policy.parameters()))
        self.meta_opt = torch.optim.Adam(meta_params, lr=cfg.meta_lr)
        # each task's online mean direction (task-specific state, like its loss history; never saved)
        self.onlines = [] if policy_cfg is None else [OnlineMean(self.engine, policy_cfg) for _ in self.tasks]
        self.fo_opt = torch.optim.SGD(params, lr=cfg.fo_lr, momentum=cfg.fo_momentum)
        self.histories = [StepHistory(len(params), self.tuner.feature_config) for _ in self.tasks]
        self.streams = [batches(t.train, cfg.batch_size, cfg.seed + i) for i, t in enumerate(self.tasks)]
        self.step = 0
        self.log: list[dict] = []
        self.gain_ema = [0.0, 0.0]   # running means of <∇L, σu>² and <∇L, u>² (first-order gain vs MeZO)

    # ------------------------------------------------------------------------------------ one step
    def _restart_if_due(self, step: int) -> None:
        if step > 1 and (step - 1) % self.cfg.restart_every == 0:
            with torch.no_grad():
                for p, p0 in zip(self.engine.params, self.theta0):
                    p.copy_(p0)
            self.fo_opt.state.clear()
            for h in self.histories:
                h.refresh_stats()
            for o in self.onlines:
                o.reset()

    def advance(self) -> dict:
        """Run meta step ``self.step + 1``; return its log row."""
        cfg, step = self.cfg, self.step + 1
        self._restart_if_due(step)
        task_index, seed_base = step_plan(cfg.seed, step, len(self.tasks))
        batch = next(self.streams[task_index])
        history = self.histories[task_index]

        if self.par is not None:
            loss_fn = self.par.loss_fn(self.scorer, batch)
        else:
            def loss_fn(m):
                return self.scorer.loss(m, batch)
        sync = None if self.par is None else self.par.sync

        self.meta_opt.zero_grad(set_to_none=True)
        if cfg.unroll == 1:
            online = self.onlines[task_index] if self.onlines else None
            result: MetaStep = closed_form(self.engine, self.bank, history, loss_fn, seed_base, cfg.eps, cfg.virtual_lr,
                                           self.policy, online, sync=sync)
        else:
            seeds = [(seed_base + k * 0x9E3779B9) % 2**62 for k in range(cfg.unroll)]
            result = unrolled(self.engine, self.bank, history, loss_fn, seeds, cfg.eps, cfg.virtual_lr, sync=sync)
            self.model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss_fn(self.model).backward()
            if sync is not None:
                sync([p.grad for p in self.engine.params])
        if not all(math.isfinite(x) for x in (result.meta_loss, result.loss_plus, result.loss_minus)):
            raise Diverged(f"the loss became non-finite at meta step {step}; lower --fo-lr (now {cfg.fo_lr}) "
                           f"or --virtual-lr (now {cfg.virtual_lr})")
        self.meta_opt.step()
        # first-order trajectory: SGD with momentum, clipped, lr decaying to 0 over each restart period
        phase = (step - 1) % cfg.restart_every
        for group in self.fo_opt.param_groups:
            group["lr"] = cfg.fo_lr * (1 - phase / cfg.restart_every)
        torch.nn.utils.clip_grad_norm_(self.engine.params, 1.0)
        self.fo_opt.step()
        self.model.zero_grad(set_to_none=True)
        if self.dp is not None and self.dp.due(step):
            self.check(f"after meta step {step}")

        if math.isfinite(result.tuned_sq):
            b = 0.95
            self.gain_ema = [b * self.gain_ema[0] + (1 - b) * result.tuned_sq,
                             b * self.gain_ema[1] + (1 - b) * result.mezo_sq]
        sigma = result.sigma.double()
        row = {"step": step, "task": self.tasks[task_index].name, "meta_loss": result.meta_loss,
               "loss": 0.5 * (result.loss_plus + result.loss_minus),
               "virtual_gain": 0.5 * (result.loss_plus + result.loss_minus) - result.meta_loss,
               "first_order_gain": self.gain(),
               "sigma_min": float(sigma.min()), "sigma_max": float(sigma.max())}
        if result.gate is not None:
            gate = result.gate.abs().double()
            row |= {"gate_mean": float(gate.mean()), "gate_max": float(gate.max())}
        self.log.append(row)
        self.step = step
        return row

    def check(self, when: str) -> None:
        """Compare the model's and the tuner's parameter checksums across ranks (data parallelism)."""
        named = list(self.engine.blocks) + [(f"bank.{n}", p) for n, p in self.bank.named_parameters()]
        if self.policy is not None:
            named += [(f"policy.{n}", p) for n, p in self.policy.named_parameters()]
        self.dp.check(named, when)

    def gain(self) -> float:
        """Running first-order gain of the tuned perturbation over MeZO's (1.0 = no gain; NaN before data)."""
        return self.gain_ema[0] / self.gain_ema[1] if self.gain_ema[1] > 0 else float("nan")

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"step": self.step, "config": asdict(self.cfg),
                "model": [p.detach().cpu() for p in self.engine.params],
                "bank": self.bank.state_dict(), "meta_opt": self.meta_opt.state_dict(),
                "policy": None if self.policy is None else self.policy.state_dict(),
                "onlines": [o.state_dict() for o in self.onlines],
                "fo_opt": self.fo_opt.state_dict(), "histories": [h.state_dict() for h in self.histories],
                "log": self.log, "gain_ema": self.gain_ema, "forwards": self.engine.forwards,
                "world_size": 1 if self.dp is None else self.dp.world}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (a run with the same config, inputs and number of ranks: see
        :meth:`finetune.common.runs.Snapshot.check` and :meth:`check_world`)."""
        with torch.no_grad():
            for p, v in zip(self.engine.params, state["model"]):
                p.copy_(v)
        self.bank.load_state_dict(state["bank"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
            for o, s in zip(self.onlines, state["onlines"]):
                o.load_state_dict(s)
        self.meta_opt.load_state_dict(state["meta_opt"])
        self.fo_opt.load_state_dict(state["fo_opt"])
        for h, s in zip(self.histories, state["histories"]):
            h.load_state_dict(s)
        self.log, self.gain_ema, self.engine.forwards = state["log"], state["gain_ema"], state["forwards"]
        self.step = state["step"]
        for step in range(1, self.step + 1):  # the batches the interrupted run already drew
            next(self.streams[step_plan(self.cfg.seed, step, len(self.tasks))[0]])

    def check_world(self, state: dict, restart_hint: str) -> None:
        """Refuse to resume a snapshot made on another number of ranks: gradients summed over another number
        of shards give another result in the last bits."""
        world, was = 1 if self.dp is None else self.dp.world, state.get("world_size", 1)
        if world != was:
            raise ZotuneError(f"cannot resume: the interrupted run had {was} rank(s), this one {world}; the gradient "
                              f"all-reduce would change the result: rerun with torchrun --nproc-per-node {was} "
                              f"(or without torchrun for 1), or {restart_hint}")

    def artifact(self) -> Tuner:
        """The tuner as trained so far, with its provenance; refused if its weights are not finite."""
        cfg = self.cfg
        meta_params = list(self.bank.parameters()) + ([] if self.policy is None else list(self.policy.parameters()))
        if not all(bool(torch.isfinite(p).all()) for p in meta_params):
            raise Diverged(f"the tuner's weights became non-finite by meta step {self.step}; lower --meta-lr "
                           f"(now {cfg.meta_lr})")
        self.tuner.bank = self.bank.to("cpu")
        if self.policy is not None:
            self.tuner.policy = self.policy.to("cpu")
        self.tuner.recommended = {"lr": cfg.virtual_lr, "eps": cfg.eps}
        last = self.log[-20:]
        self.tuner.provenance = {
            "meta_tasks": [t.name for t in self.tasks], "steps": self.step, "seed": cfg.seed,
            "zotune_version": _package_version(), "torch_version": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(cfg),
            "summary": {"first_order_gain": self.gain(),
                        "virtual_gain_last20": sum(r["virtual_gain"] for r in last) / max(1, len(last))},
        }
        return self.tuner


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]meta-train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("meta loss {task.fields[meta]}"), TextColumn("gain vs MeZO {task.fields[gain]}"),
                    TextColumn("{task.fields[speed]} s/step"), TimeRemainingColumn(), disable=not enabled)


def snapshot_path(out: Path) -> Path:
    """Where a meta-training run to ``out`` keeps its resumable snapshot."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial.pt")


def log_path(out: Path) -> Path:
    """The per-step log written next to the artifact (JSON lines of :meth:`MetaTrainer.advance`)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.metalog.json")


def meta_train(cfg: MetaConfig, out: Path, resume: bool = False, snapshot_every: int = 25,
               progress: bool = True, start_over: bool = False, dp=None) -> Tuner:
    """Meta-train a tuner and write it to ``out`` (a ``.safetensors`` file) and its log beside it.

    ``out`` is checked and locked before any work. Every ``snapshot_every`` steps the whole state goes to
    :func:`snapshot_path`; after a kill, the same call with ``resume=True`` continues from it (refused if
    the options or inputs changed). The artifact is written atomically at the end, then the snapshot is
    removed. ``start_over`` discards an interrupted run's snapshot first. Under data parallelism (``dp``,
    :mod:`meta.parallel`) every rank trains on its shard of each batch, rank 0 alone checks, locks and
    writes (its refusal stops every rank), and a resume needs the same number of ranks.
    """
    cfg.validate()
    check_number("--checkpoint-every", snapshot_every, low=0, integer=True)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ZotuneError(f"--out must name a .safetensors file, got {out}")
    writer = dp is None or dp.main
    log = log_path(out)
    snap = Snapshot(snapshot_path(out), snapshot_every,
                    restart_hint=f"rerun with --start-over (or delete {snapshot_path(out)}) to start over")
    with ExitStack() as stack:
        error = None
        try:
            if writer:
                check_output(out, kind="file")
                stack.enter_context(RunLock(out))
                check_output(out, kind="file")  # again, now that no other run can write it
                if log.exists() or log.is_symlink():
                    raise ZotuneError(f"{log} already exists and would be overwritten; move it away or choose "
                                      "another --out")
                if start_over:
                    snap.path.unlink(missing_ok=True)
                if resume and not snap.exists():
                    raise ZotuneError(f"nothing to resume: no snapshot {snap.path}; run without --resume")
                if not resume and snap.exists():
                    raise ZotuneError(f"an interrupted run to {out} left {snap.path}; add --resume to continue it, "
                                      "or --start-over to discard it")
        except ZotuneError as e:
            if dp is None:
                raise
            error = str(e)
        if dp is not None:
            dp.agree(error)  # rank 0's refusal stops every rank
        trainer = MetaTrainer(cfg, dp)
        if resume:  # every rank reads the same snapshot and makes the same checks
            state = snap.load()
            snap.check(state, asdict(cfg), asdict(MetaConfig()), trainer.inputs, ignore=("steps", "threads"))
            trainer.check_world(state, snap.restart_hint)
            try:
                trainer.load_state_dict(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise ZotuneError(f"the snapshot {snap.path} does not fit this run ({type(e).__name__}); "
                                  f"{snap.restart_hint}") from None
        if dp is not None:
            trainer.check(f"before meta step {trainer.step + 1}")
        start, done = time.perf_counter(), trainer.step
        try:
            with progress_bar(progress and writer) as bar:
                task = bar.add_task("meta", total=cfg.steps, completed=done, meta="-", gain="-", speed="-")
                while trainer.step < cfg.steps:
                    row = trainer.advance()
                    if writer and snap.due(trainer.step, cfg.steps):
                        snap.save(trainer.state_dict() | {"inputs": trainer.inputs})
                    bar.update(task, advance=1, meta=f"{row['meta_loss']:.4f}",
                               gain=f"×{row['first_order_gain']:.3f}",
                               speed=f"{(time.perf_counter() - start) / (trainer.step - done):.1f}")
            tuner = trainer.artifact()
        except Diverged as e:
            if snap.exists():  # resuming would diverge again from the same snapshot
                raise Diverged(f"{e}; its snapshot {snap.path} is kept: rerun with the lower value and "
                                  "--start-over (which discards it)") from None
            raise
        if not writer:
            return tuner
        then = "rerun the same command" + (" with --resume" if snap.exists() else "")
        if out.exists() or out.is_symlink():
            raise ZotuneError(f"{out} appeared during the run and is not overwritten; move it away and "
                              + ("rerun with --resume" if snap.exists() else "rerun"))
        try:
            tuner.save_pretrained(out)
        except Exception as e:  # noqa: BLE001 - only write errors are turned into one line
            if (e := os_error(e)) is None:
                raise
            raise write_failed(out, e, then) from None
        try:
            with atomic_file(log) as tmp:
                tmp.write_text(strict_json(trainer.log, indent=0))
        except OSError as e:
            out.unlink(missing_ok=True)
            raise write_failed(log, e, then) from None
        snap.path.unlink(missing_ok=True)
    return tuner
