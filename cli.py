"""zotune's command line: parses arguments and calls the stages. Run ``python cli.py -h`` (or ``zotune -h`` once installed)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _prog() -> str:
    """The command as the user typed it: ``zotune`` for the installed console script, else ``cli.py``."""
    return "zotune" if Path(sys.argv[0]).name == "zotune" else "cli.py"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points to ``-h``."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog if self.prog.startswith("zotune") else f"python {self.prog}"
        self.exit(2, f"error: {message} (see: {command} -h)\n")


class _Finite(argparse.Action):
    """A float option that must be a finite number; the error names the option as the user typed it."""

    allow_inf = False

    def __call__(self, parser, namespace, values, option_string=None):
        import math

        try:
            value = float(values)
        except ValueError:
            parser.error(f"{option_string} expects a number, got {values!r}")
        if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            parser.error(f"{option_string} must be a finite number (got {values})")
        setattr(namespace, self.dest, value)


class _NotNaN(_Finite):
    allow_inf = True  # where inf means "no limit"


class _Count(argparse.Action):
    """An integer option that must be >= 0; the error names the option as the user typed it."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = int(values)
        except ValueError:
            parser.error(f"{option_string} expects an integer, got {values!r}")
        if value < 0:
            parser.error(f"{option_string} must be >= 0 (got {value})")
        setattr(namespace, self.dest, value)


def _comma_list(cast, what: str):
    """An argparse type: comma-separated values read with ``cast``; one line naming ``what`` when one is not."""
    def parse(text: str) -> list:
        try:
            return [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return parse


_ints = _comma_list(int, "integers")
_floats = _comma_list(float, "numbers")


def _task_list(text: str) -> list[str]:
    from finetune.data.tasks import split_task_list

    return split_task_list(text)


def _hardware_args(p: argparse.ArgumentParser):
    """The hardware options every training command takes (fields of ``finetune.common.runs.RunConfig``)."""
    from finetune.common.runs import DEVICE_MAPS, DTYPES

    g = p.add_argument_group("hardware")
    g.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    g.add_argument("--device-map", default=None, choices=list(DEVICE_MAPS),
                   help="split a model larger than one GPU across the GPUs with accelerate (instead of --device)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return g


def _run_args() -> argparse.ArgumentParser:
    """Arguments shared by every command that fine-tunes a model on a task."""
    from finetune.common.runs import SCHEDULES
    from finetune.data.models import EMBEDDED
    from finetune.trainer import DEFAULT_TASK, FinetuneConfig

    d = FinetuneConfig()
    p = Parser(add_help=False)
    g = p.add_argument_group("model and task")
    g.add_argument("--model", default=None,
                   help=f"alias, tiny-*, Hub id or local folder (default {EMBEDDED}, or the tuner's base model)")
    g.add_argument("--task", default=DEFAULT_TASK, help="sst2, copa, boolq, cb, wsc, rte, squad, drop, "
                   "bigbench:<name>, packaged:<name> (cli.py tasks), a .jsonl file, or your own "
                   ".csv/.json/.jsonl/.parquet file or Dataset.save_to_disk folder with the column options below "
                   f"(default {DEFAULT_TASK})")
    g.add_argument("--input-column", default=None, metavar="COL",
                   help="your table: the column holding the prompt (default input)")
    g.add_argument("--options-column", default=None, metavar="COL",
                   help="your table, multiple choice: a column holding each row's list of options")
    g.add_argument("--label-words", default=None, metavar="W1,W2",
                   help="your table, multiple choice: the options of every row, e.g. no,yes (each scored after a space)")
    g.add_argument("--label-column", default=None, metavar="COL",
                   help="your table, multiple choice: the gold option, as an index or as the option's text")
    g.add_argument("--target-column", default=None, metavar="COL", help="your table, generation: the gold answer")
    g.add_argument("--n-train", type=int, default=d.n_train, help="training examples (default %(default)s)")
    g.add_argument("--n-dev", type=int, default=d.n_dev, help="dev examples for --eval-every (default %(default)s)")
    g.add_argument("--n-test", type=int, default=d.n_test, help="held-out test examples (default %(default)s)")
    g.add_argument("--max-length", type=int, default=d.max_length, help="tokens per sequence (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "momentum", "adam"],
                   help="ZO methods: the update rule applied to the estimate (default sgd, i.e. MeZO); --method fo: "
                   "adam = AdamW (default), sgd, momentum = SGD with momentum 0.9")
    g.add_argument("--lr", action=_Finite, default=None,
                   help=f"learning rate (default {d.lr:g}; with --tuner, the lr the tuner recommends; not for "
                   "--method exact, which takes --head-lr and --top-lr)")
    g.add_argument("--eps", action=_Finite, default=d.eps, help="perturbation size (default %(default)g)")
    g.add_argument("--q", type=int, default=None, help="SPSA directions averaged per step: mezo, nspsa, zo-adam, tuner (default: the method's)")
    g.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help=f"the lr schedule (default {d.schedule}; with --tuner, the one the tuner recommends, if any); "
                   "linear-warmup: rises over the first tenth of the steps, then falls linearly to 0")
    g.add_argument("--weight-decay", action=_Finite, default=d.weight_decay)
    g.add_argument("--head-lr", action=_Finite, default=d.head_lr,
                   help="ZO methods, multiple choice with one-token options: also step the output head's option rows "
                   "along their exact gradient, read off the forward passes, with Adam at this lr (default off; with --tuner, the "
                   "tuner's own head step, which --head-lr 0 turns off; docs/methods.md, 'The head step')")
    g.add_argument("--head-race", type=_floats, default=d.head_race, metavar="LRS",
                   help="like --head-lr, with several lrs raced on the same forward passes: each step the model holds "
                   "the rows of the one whose shadow (never trained on one training example in five) fits those "
                   "best, e.g. 1e-4,3e-4,1e-3,3e-3 (docs/methods.md, 'Racing head lrs')")
    g.add_argument("--top-lr", action=_Finite, default=d.top_lr,
                   help="ZO methods, multiple choice with one-token options, Llama-family models: also step the last "
                   "layer's MLP along its exact gradient at the scored position, read off the forward passes, with "
                   "Adam at this lr (default off; with --tuner, the tuner's own top-block step, which --top-lr 0 turns "
                   "off; docs/methods.md, 'The top-block step')")
    g.add_argument("--top-schedule", default=d.top_schedule, choices=SCHEDULES,
                   help="the top-block step's lr schedule (default: the tuner's with --tuner and no --top-lr, else "
                   "--schedule's), e.g. linear: its lr decays to 0 over the run while the ZO method's stays")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="data split, batches and noise (default %(default)s)")
    g.add_argument("--noise", default=d.noise, choices=["auto", "table", "gaussian"],
                   help="noise source: table (fast on CPU), gaussian (MeZO's), auto (table on CPU)")
    g = p.add_argument_group("direction methods (gv, greedy, ldsd)")
    g.add_argument("--candidates", type=int, default=None, metavar="M",
                   help=f"gv, greedy: candidate directions ranked per step (default {d.candidates}; "
                   "gv costs M+2 forward passes a step, greedy M+1)")
    g.add_argument("--ldsd-k", type=int, default=None, metavar="K",
                   help=f"ldsd: candidate directions per step (default {d.ldsd_k}; K+1 forward passes a step)")
    g.add_argument("--ldsd-lr", action=_Finite, default=None,
                   help=f"ldsd: lr of the policy mean (default {d.ldsd_lr:g})")
    g.add_argument("--ldsd-decay", action=_Finite, default=None,
                   help=f"ldsd: decay of the policy mean per step, 1 = none (default {d.ldsd_decay:g})")
    g.add_argument("--ldsd-cap", action=_NotNaN, default=None,
                   help=f"ldsd: cap on each block's RMS of the policy mean, inf = none (default {d.ldsd_cap:g})")
    g.add_argument("--ldsd-rule", default=None, choices=["corrected", "released"],
                   help="ldsd: 'released' reproduces the public code's noise/loss mis-pairing, for ablations "
                   "(default corrected)")
    g = p.add_argument_group("baselines (sparse-mezo, lozo, bcd, fzoo, hizoo; docs/methods.md)")
    g.add_argument("--sparsity", action=_Finite, default=None,
                   help=f"sparse-mezo: fraction of each matrix NOT trained, its largest |weights| (default {d.sparsity:g})")
    g.add_argument("--lozo-rank", type=int, default=None, help=f"lozo: rank of the U V^T perturbation (default {d.lozo_rank})")
    g.add_argument("--lozo-interval", type=int, default=None,
                   help=f"lozo: steps one V is kept (default {d.lozo_interval})")
    g.add_argument("--bcd-layers", action=_Finite, default=None, metavar="K",
                   help=f"bcd: layer groups perturbed per step, a count >= 1 or a fraction < 1 (default {d.bcd_layers:g})")
    g.add_argument("--fzoo-n", type=int, default=None, metavar="N",
                   help=f"fzoo: one-sided directions per step (default {d.fzoo_n}; N+1 forward passes a step)")
    g.add_argument("--hizoo-alpha", action=_Finite, default=None,
                   help=f"hizoo: smoothing of the diagonal-Hessian EMA, in (0, 1) (default {d.hizoo_alpha:g})")
    g = _hardware_args(p)
    g.add_argument("--autocast", default=None, choices=["bf16"],
                   help="run every forward pass under torch.autocast in bfloat16: the matrix products in bf16, "
                   "the weights, perturbations and updates in fp32 (about 2.8x faster on CPUs with AMX; "
                   "docs/engine.md)")
    return p


# flags that only some methods take -> those methods
_METHOD_FLAGS = {"candidates": ("gv", "greedy"), "ldsd_k": ("ldsd",), "ldsd_lr": ("ldsd",),
                 "ldsd_decay": ("ldsd",), "ldsd_cap": ("ldsd",), "ldsd_rule": ("ldsd",),
                 "sparsity": ("sparse-mezo",), "lozo_rank": ("lozo",), "lozo_interval": ("lozo",),
                 "bcd_layers": ("bcd",), "fzoo_n": ("fzoo",), "hizoo_alpha": ("hizoo",)}


def _check_method_flags(args: argparse.Namespace, methods: list[str]) -> None:
    """A method-specific flag given without any of its methods is a mistake, not something to ignore."""
    from finetune.common.errors import ZotuneError

    for name, takers in _METHOD_FLAGS.items():
        if getattr(args, name, None) is not None and not set(takers) & set(methods):
            flag = "--" + name.replace("_", "-")
            raise ZotuneError(f"{flag} applies to --method {' or '.join(takers)}, not {','.join(methods)}")


def _peft_args(p: argparse.ArgumentParser) -> None:
    """--peft and its options (finetune/data/adapters.py; docs/peft.md)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (docs/peft.md)")
    g.add_argument("--peft", default=None, choices=["lora", "prefix", "norms"],
                   help="train only an adapter: LoRA or prefix tuning (built with peft), or the norm weights and "
                   "biases (default: the full model)")
    g.add_argument("--lora-r", type=int, default=None, help="lora: rank (default 8)")
    g.add_argument("--lora-alpha", type=float, default=None, help="lora: alpha; the scale is alpha/r (default 2r)")
    g.add_argument("--lora-dropout", type=float, default=None, help="lora: must be 0 for ZO (default 0)")
    g.add_argument("--lora-targets", default=None, help="lora: comma-separated module names (default: the attention "
                   "query and value projections, q_proj,v_proj; c_attn for GPT-2)")
    g.add_argument("--prefix-tokens", type=int, default=None, help="prefix: virtual tokens (default 10)")


def _check_peft_flags(args: argparse.Namespace) -> None:
    from finetune.data.adapters import PEFT_FLAGS, check_flags

    check_flags(getattr(args, "peft", None), {k: getattr(args, k, None) for k in PEFT_FLAGS})


def _config(args: argparse.Namespace, **overrides):
    from finetune.data.adapters import PEFT_FLAGS
    from finetune.data.models import EMBEDDED
    from finetune.trainer import FinetuneConfig

    fields = FinetuneConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields
              and not ((k in _METHOD_FLAGS or k in PEFT_FLAGS) and v is None)}
    values.update(overrides)
    if values.get("model") is None:
        values["model"] = EMBEDDED
    for k in ("lr", "schedule"):  # not given: the config's default
        if values.get(k) is None:
            values.pop(k, None)
    return FinetuneConfig(**values)


def _load_tuner(args: argparse.Namespace):
    """With ``--tuner``: load and validate the artifact once for the run, and take from it the base model
    unless ``--model`` names one (a derivative), the lr it recommends unless ``--lr`` is given, and the schedule it
    recommends, if any, unless ``--schedule`` is given."""
    if args.tuner is None:
        return None
    from checkpoints import Tuner
    from checkpoints.remote import resolve
    from finetune.data.models import name_for_id

    args.tuner = str(resolve(args.tuner))  # an hf:// spec is downloaded once, here
    tuner = Tuner.from_pretrained(args.tuner)
    if args.model is None:
        args.model = name_for_id(tuner.base_model)
    if args.lr is None and tuner.recommended.get("lr") is not None:
        from finetune.common.errors import ZotuneError
        from finetune.common.runs import check_number

        lr = tuner.recommended["lr"]
        try:
            check_number(f"the lr recommended by the tuner {args.tuner}", lr, low=0, low_open=True)
        except ZotuneError as e:
            raise ZotuneError(f"{e}; pass --lr") from None
        args.lr = lr
    if args.schedule is None:
        args.schedule = tuner.schedule
    return tuner


def _say(line: str) -> None:
    """Write one line to stderr in a single write, so that ranks sharing a pipe under torchrun cannot interleave it
    with each other's lines (print() writes the text and the newline separately)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _stage(run, has_snapshot, dp):
    """Run a stage; after Ctrl-C with a snapshot kept, say how to continue (exit 130); close the process group."""
    try:
        return run()
    except KeyboardInterrupt:
        if has_snapshot() and (dp is None or dp.main):
            _say("interrupted; the last snapshot is kept: rerun the same command with --resume to continue")
            raise SystemExit(130) from None
        raise
    finally:
        if dp is not None:
            dp.close()


def cmd_finetune(args: argparse.Namespace) -> None:
    from finetune.trainer import finetune, snapshot_path

    if args.tuner is not None:
        from finetune.common.errors import ZotuneError

        if args.method not in ("mezo", "tuner", "exact"):
            raise ZotuneError(f"--tuner drives its own method (or, with --method exact, gives its exact steps' lrs); "
                              f"drop --method {args.method} or --tuner")
        if args.method != "exact":
            args.method = "tuner"
    if args.method == "exact" and args.lr is not None:  # a user who means the exact steps' lr would train nothing
        from finetune.common.errors import ZotuneError

        raise ZotuneError("--lr is the ZO step's lr, and --method exact makes no ZO step; drop --lr (the exact steps "
                          "take --head-lr and --top-lr)")
    _check_method_flags(args, [args.method])
    _check_peft_flags(args)
    tuner = _load_tuner(args)
    cfg = _config(args)
    dp = _data_parallel(args)
    if dp is not None and cfg.device_map and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        from finetune.common.errors import ZotuneError

        raise ZotuneError("--device-map with several ranks per machine would give every rank all its GPUs; "
                          "run one rank per machine (torchrun --nproc-per-node 1) or drop --device-map")
    metrics = _stage(lambda: finetune(cfg, Path(args.out), save_model=not args.no_save_model, resume=args.resume,
                                      snapshot_every=args.snapshot_every, start_over=args.start_over, tuner=tuner,
                                      calibrate=not args.no_calibration, dp=dp, save_log=args.save_log),
                     lambda: bool(Path(args.out).name) and snapshot_path(Path(args.out)).exists(), dp)
    if dp is not None and not dp.main:
        return
    ev = metrics["eval"]
    passes = f"{metrics['forwards']} forward passes" + (f" and {metrics['backwards']} backward passes"
                                                         if metrics.get("backwards") else "")
    if metrics.get("head_race"):
        race = metrics["head_race"]
        held = ", ".join(f"{lr:g} for {n}" for lr, n in zip(race["lrs"], race["steps_active"]))
        passes += f", with the head race (steps each lr held the rows: {held}; at the end {race['active']:g})"
    elif metrics.get("head_lr"):
        passes += f", with the head step at lr {metrics['head_lr']:g}"
    if metrics["config"].get("top_lr"):
        passes += f", with the top-block step at lr {metrics['config']['top_lr']:g}"
        if metrics["config"].get("top_schedule"):
            passes += f" ({metrics['config']['top_schedule']} schedule)"
    from finetune.bench import calibrated_metric

    cal = calibrated_metric(metrics)
    reference = "" if cal is None else f" (fitting only the label prior gives {cal:.4f})"
    print(f"{ev['metric']} on {ev['n']} test examples: {ev['before']:.4f} -> {ev['after']:.4f}{reference}; "
          f"{passes}; wrote {args.out}")
    from finetune.common.runs import late_rise

    if (rise := late_rise(metrics["train_loss"])) is not None:
        print(rise.note())


def _data_parallel(args: argparse.Namespace):
    """Under torchrun, this rank's data-parallel context (the process group is initialised here); else None,
    and --dp-mode / --check-every do nothing."""
    from finetune.zo.distributed import from_env

    return from_env(mode=args.dp_mode, check_every=args.check_every, device=getattr(args, "device", None))


def cmd_replay(args: argparse.Namespace) -> None:
    from finetune.replay import replay

    n = replay(Path(args.log), args.model, Path(args.out), device=args.device, threads=args.threads)
    print(f"replayed {n} steps of {args.log} on {args.model}; wrote {args.out}")


def parse_lr_grid(specs: list[str] | None, methods: list[str]) -> dict[str, list[float]]:
    """``METHOD=LR,LR`` specs, separate arguments or joined by ``;`` (``mezo=1e-5,3e-5;fo=1e-4``)."""
    from finetune.common.errors import ZotuneError
    from finetune.common.runs import check_number

    lrs: dict[str, list[float]] = {}
    for spec in (part.strip() for arg in specs or [] for part in arg.split(";")):
        if not spec:
            continue
        method, _, values = spec.partition("=")
        if not values:
            raise ZotuneError(f"--lr-grid expects METHOD=LR1,LR2,..., got {spec!r}")
        if method not in methods:
            raise ZotuneError(f"--lr-grid names {method!r}, which is not in --methods {','.join(methods)}")
        if method in lrs:
            raise ZotuneError(f"--lr-grid names {method!r} twice; give one list per method")
        try:
            lrs[method] = [float(x) for x in values.split(",") if x.strip()]
        except ValueError:
            raise ZotuneError(f"--lr-grid {method}: expected comma-separated numbers, got {values!r}") from None
        for lr in lrs[method]:
            check_number(f"--lr-grid {method}: each lr", lr, low=0)
    return lrs


def cmd_bench(args: argparse.Namespace) -> None:
    from finetune.bench import BenchConfig, bench
    from finetune.trainer import work_dir

    from finetune.common.errors import ZotuneError
    from finetune.zo.distributed import launched

    if launched():
        raise ZotuneError("bench does not run data-parallel; run it without torchrun")
    lrs = parse_lr_grid(args.lr_grid, args.methods)
    _check_method_flags(args, args.methods)
    _check_peft_flags(args)
    tuner = _load_tuner(args)
    cfg = BenchConfig(base=_config(args, method=args.methods[0]), methods=args.methods, lrs=lrs,
                      seeds=args.seeds, forwards=args.forwards, eval_points=args.eval_points, select=args.select_on)
    try:
        rows = bench(cfg, Path(args.out), resume=args.resume, snapshot_every=args.snapshot_every, tuner=tuner)
    except KeyboardInterrupt:
        if Path(args.out).name and work_dir(Path(args.out)).exists():
            _say("interrupted; the finished runs are kept: rerun the same command with --resume to continue")
            raise SystemExit(130) from None
        raise
    from finetune.bench import late_rises, lr_text

    for r in sorted(rows, key=lambda r: r["method"]):
        if r.get("best"):
            print(f"{r['method']:>8}  {lr_text(r['method'], r['lr'], 'lr ') or 'no ZO lr':<11} final loss "
                  f"{r['final_loss']:.4f}  eval {r['eval_before']:.3f} -> {r['eval_after']:.3f}")
    if rose := late_rises(rows):
        print(f"note: the training loss rose late in some runs ({'; '.join(rose)}); such an lr may be too high for a "
              "run this long: try --schedule linear or a lower lr (bench.md)")
    print(f"wrote {args.out}/bench.json, bench.md and bench.png")


def cmd_bench_merge(args: argparse.Namespace) -> None:
    from finetune.bench import merge

    rows = merge([Path(f) for f in args.benches], Path(args.out))
    for r in sorted(rows, key=lambda r: r["method"]):
        if r.get("best"):
            print(f"{r['method']:>11}  lr {r['lr']:<8g} seeds {r['seeds']}  eval {r['eval_before']:.3f} -> "
                  f"{r['eval_after']:.3f}")
    print(f"wrote {args.out}/bench.json, bench.md and bench.png")


def cmd_meta_train(args: argparse.Namespace) -> None:
    from meta.train import MetaConfig, log_path, meta_train, snapshot_path

    _check_peft_flags(args)
    d = MetaConfig()
    fields = MetaConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    cfg = MetaConfig(**{**{k: getattr(d, k) for k in fields}, **values})
    out = Path(args.out)
    from finetune.zo.distributed import from_env

    dp = from_env(mode="batch", check_every=args.check_every, device=args.device)
    tuner = _stage(lambda: meta_train(cfg, out, resume=args.resume, snapshot_every=args.snapshot_every,
                                      start_over=args.start_over, dp=dp),
                   lambda: snapshot_path(out).exists(), dp)
    if dp is not None and not dp.main:
        return
    s = tuner.provenance["summary"]
    print(f"meta-trained {cfg.steps} steps on {', '.join(cfg.tasks)}; first-order gain over MeZO "
          f"x{s['first_order_gain']:.3f}; wrote {out} and {log_path(out)}")


def cmd_meta_train_head(args: argparse.Namespace) -> None:
    from checkpoints import Tuner
    from checkpoints.inspect import dev_losses_text
    from finetune.common.errors import ZotuneError
    from finetune.data.models import EMBEDDED, name_for_id, set_threads
    from meta.head import HeadSearch, select_head_lr, untrained_tuner
    from meta.selection import check_out

    out = check_out(Path(args.out))  # before an untrained tuner is written into the work folder
    work = Path(args.work) if args.work else out.with_name(f"{out.stem}.head-benches")
    set_threads(args.threads)
    if args.tuner is not None:
        tuner = Tuner.from_pretrained(args.tuner)
        model = args.model or name_for_id(tuner.base_model)
        path = args.tuner
    else:
        model = args.model or EMBEDDED
        path = str(untrained_tuner(model, work, dtype=args.dtype))
        tuner = Tuner.from_pretrained(path)
    if args.lr is not None and args.lrs is not None:
        raise ZotuneError("give --lr (one ZO lr) or --lrs (a grid, chosen with the head lr), not both")
    lr = args.lrs[0] if args.lrs else args.lr if args.lr is not None else tuner.recommended.get("lr")
    if lr is None:
        raise ZotuneError("this tuner records no recommended lr; pass --lr (the fine-tuning lr the head step goes "
                          "with) or --lrs (a grid)")
    base = _config(args, method="tuner", tuner=path, model=model, lr=lr,  # the run options, as finetune takes them
                   schedule=tuner.schedule)
    search = HeadSearch(tasks=args.tasks, head_lrs=args.head_lrs, race=args.race, seeds=args.seeds,
                        forwards=args.forwards, eval_points=args.eval_points, lrs=args.lrs)
    try:
        chosen = select_head_lr(base, search, work, out, tuner=tuner)
    except KeyboardInterrupt:
        _say(f"interrupted; the finished benches in {work} are kept: rerun the same command to continue")
        raise SystemExit(130) from None
    sel = chosen.provenance["head_selection"]
    grid = dev_losses_text(sel)
    head = chosen.head_text if chosen.head is not None else "lr 0, no head step"
    zo = f"; recommended lr {sel['lr']:g}" if "lrs" in sel else ""
    print(f"head {head}{zo} (final dev loss by candidate: {grid}); wrote {out} (benches in {work})")


def cmd_meta_train_top(args: argparse.Namespace) -> None:
    from checkpoints import Tuner
    from checkpoints.inspect import dev_losses_text
    from finetune.common.errors import ZotuneError
    from finetune.data.models import name_for_id, set_threads
    from meta.selection import check_out
    from meta.top import TopSearch, select_top_lr

    out = check_out(Path(args.out))
    work = Path(args.work) if args.work else out.with_name(f"{out.stem}.top-benches")
    set_threads(args.threads)
    tuner = Tuner.from_pretrained(args.tuner)
    lr = args.lr if args.lr is not None else tuner.recommended.get("lr")
    if lr is None:
        raise ZotuneError("this tuner records no recommended lr; pass --lr (the fine-tuning lr the top-block step "
                          "goes with)")
    base = _config(args, method="tuner", tuner=args.tuner, model=args.model or name_for_id(tuner.base_model), lr=lr,
                   schedule=args.schedule or tuner.schedule)
    search = TopSearch(tasks=args.tasks, top_lrs=args.top_lrs, schedule=args.top_schedule, seeds=args.seeds,
                       forwards=args.forwards, eval_points=args.eval_points)
    try:
        chosen = select_top_lr(base, search, work, out, tuner=tuner)
    except KeyboardInterrupt:
        _say(f"interrupted; the finished benches in {work} are kept: rerun the same command to continue")
        raise SystemExit(130) from None
    sel = chosen.provenance["top_selection"]
    grid = dev_losses_text(sel)
    top = f"lr {chosen.top_lr:g}" + (f", {chosen.top_schedule} schedule" if chosen.top_schedule else "") \
        if chosen.top is not None else "lr 0, no top-block step"
    top += f"; runs under the {chosen.schedule} schedule" if chosen.schedule else ""
    print(f"top-block step {top} (final dev loss by top lr: {grid}); wrote {out} (benches in {work})")


def cmd_tuners_inspect(args: argparse.Namespace) -> None:
    from checkpoints.inspect import inspect_text

    print(inspect_text(args.file, all_blocks=args.all))


def cmd_tuners_list(args: argparse.Namespace) -> None:
    from checkpoints.hub import list_text

    print(list_text())


def cmd_tuners_export(args: argparse.Namespace) -> None:
    from checkpoints.hub import export

    out = export(args.file, args.dir, repo=args.repo)
    print(f"wrote {out}/tuner.safetensors and {out}/README.md (upload with: python cli.py tuners push "
          f"{args.file} --repo {args.repo or 'owner/name'})")


def cmd_tuners_push(args: argparse.Namespace) -> None:
    from checkpoints.hub import push

    print(f"pushed {args.file} to {push(args.file, args.repo, private=args.private)}")


def cmd_tuners_pull(args: argparse.Namespace) -> None:
    from checkpoints.hub import pull
    from checkpoints.remote import TUNER_FILE, parse_hf

    if args.repo.startswith("hf://"):
        repo, filename = parse_hf(args.repo)
        if args.file is not None:
            named = args.repo[len("hf://"):].strip("/").count("/") > 1
            if named and args.file != filename:
                from finetune.common.errors import ZotuneError

                raise ZotuneError(f"{args.repo} already names the file {filename}; drop --file {args.file}")
            filename = args.file
    else:
        repo, filename = args.repo, args.file or TUNER_FILE
    path, tuner = pull(repo, filename)
    print(f"{path}: tuner for {tuner.base_model} ({len(tuner.blocks)} blocks); use it with --tuner {path}")


def cmd_tuners_import_pth(args: argparse.Namespace) -> None:
    from checkpoints.pth_import import convert
    from finetune.common.errors import ZotuneError
    from finetune.common.runs import check_number, check_output
    from finetune.data.models import load_model, model_id, set_threads

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ZotuneError(f"--out must name a .safetensors file, got {out}")
    check_output(out, kind="file")
    if args.threads is not None:
        check_number("--threads", args.threads, low=1, integer=True)
    set_threads(args.threads)
    model, _ = load_model(args.model, device="cpu")
    tuner = convert(args.file, model, model_id(args.model), paper_batch=args.paper_batch)
    tuner.save_pretrained(out)
    print(f"converted {len(tuner.blocks)} blocks of {args.file} for {tuner.base_model}; wrote {out} "
          "(the paper's mode: raw features, sigma = |MLP|)")


def cmd_fetch(args: argparse.Namespace) -> None:
    from finetune.data.models import fetch_embedded
    from finetune.data.tasks import load_task
    from finetune.trainer import FinetuneConfig

    print(f"model: {fetch_embedded()}")
    run = FinetuneConfig()  # the split a fine-tune takes without --n-train, --n-dev, --n-test
    for task in args.tasks:
        t = load_task(task, seed=run.seed, n_train=run.n_train, n_dev=run.n_dev, n_test=run.n_test)
        print(f"task {t.name}: {len(t.train)} train, {len(t.dev)} dev, {len(t.test)} test examples "
              "(a fine-tune's default split)")


def cmd_compare(args: argparse.Namespace) -> None:
    from finetune.bench import compare_runs

    print(compare_runs([[Path(f) for f in args.runs]] + [[Path(f) for f in arm] for arm in args.vs or []]))


def cmd_tasks(args: argparse.Namespace) -> None:
    from finetune.data.packaged import HELD_OUT, META_TRAIN
    from finetune.data.tasks import TASK_NAMES, list_bigbench_tasks

    print("Hub tasks: " + ", ".join(TASK_NAMES))
    print("Tasks from packaged data (use packaged:<name>; docs/models-and-tasks.md):")
    print("  held out: " + ", ".join(HELD_OUT))
    print("  for meta-training: " + ", ".join(META_TRAIN))
    print("BIG-bench tasks (use bigbench:<name>):")
    for name in list_bigbench_tasks():
        print(f"  {name}")


def _meta_args(p: argparse.ArgumentParser) -> None:
    from finetune.data.models import EMBEDDED
    from meta.train import MetaConfig

    d = MetaConfig()
    p.add_argument("--model", default=d.model, help=f"base model: alias, tiny-*, Hub id or folder (default {EMBEDDED})")
    p.add_argument("--tasks", type=_task_list, default=d.tasks,
                   help=f"comma-separated meta-training tasks (default {','.join(d.tasks)})")
    p.add_argument("--steps", type=int, default=d.steps, help="meta steps (default %(default)s)")
    p.add_argument("--unroll", type=int, default=d.unroll,
                   help="virtual ZO steps per meta step, K (default 1: closed form; K>1 uses higher)")
    p.add_argument("--out", required=True, help="the tuner file to write (.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run to the same --out")
    p.add_argument("--start-over", action="store_true", help="discard an interrupted run's snapshot first")
    p.add_argument("--snapshot-every", "--checkpoint-every", dest="snapshot_every", action=_Count, default=25,
                   help="meta steps between resumable snapshots (default %(default)s; 0 = never)")
    g = p.add_argument_group("meta-optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--eps", action=_Finite, default=d.eps, help="ZO perturbation size (default %(default)g)")
    g.add_argument("--virtual-lr", action=_Finite, default=d.virtual_lr,
                   help="lr of the virtual ZO step, i.e. the fine-tuning lr prepared for (default %(default)g)")
    g.add_argument("--meta-lr", action=_Finite, default=d.meta_lr, help="Adam lr of the tuner (default %(default)g)")
    g.add_argument("--fo-lr", action=_Finite, default=d.fo_lr, help="first-order trajectory lr (default %(default)g)")
    g.add_argument("--restart-every", type=int, default=d.restart_every,
                   help="reset the base model to its pretrained weights every N steps (default %(default)s)")
    g.add_argument("--hidden", type=int, default=d.hidden, help="PertNN hidden width (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    g = p.add_argument_group("direction policy (trained jointly with PertNN when --direction-policy is given)")
    g.add_argument("--direction-policy", action="store_true", default=None,
                   help="also meta-train per-block gates that mix an online mean direction into the perturbation")
    g.add_argument("--policy-hidden", type=int, default=d.policy_hidden, help="gate MLP hidden width (default %(default)s)")
    g.add_argument("--max-gate", action=_Finite, default=d.max_gate,
                   help="bound on |gate|: at most max_gate² of a block's perturbation energy on the mean (default %(default)g)")
    g.add_argument("--mean-decay", action=_Finite, default=d.mean_decay,
                   help="decay of the online mean direction, a constant of the policy (default %(default)g)")
    g.add_argument("--n-train", type=int, default=d.n_train, help="examples per task (default %(default)s)")
    g.add_argument("--max-length", type=int, default=d.max_length, help="(default %(default)s)")
    g = _hardware_args(p)
    g.add_argument("--noise", default=d.noise, choices=["auto", "table", "gaussian"])
    g.add_argument("--check-every", action=_Count, default=25,
                   help="under torchrun: compare model and tuner checksums across ranks every N meta steps "
                        "(default %(default)s; 0 = never)")


def _parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data parallelism (under torchrun --nproc-per-node N; docs/distributed.md)")
    g.add_argument("--dp-mode", default="batch", choices=["batch", "directions"],
                   help="split each step's batch across ranks, or its directions (nspsa / --q >= 2) or candidates "
                        "(gv, greedy, ldsd) (default batch)")
    g.add_argument("--check-every", action=_Count, default=100,
                   help="compare a parameter checksum across ranks every N steps (default %(default)s; 0 = never)")


def _selection_run_args(p: argparse.ArgumentParser, d, work: str) -> None:
    """The options of the short fine-tunes that meta-train-head and meta-train-top choose by (``d``: the defaults),
    then where their benches go (``work``: its help) and the tuner they write."""
    p.add_argument("--forwards", type=int, default=1000, help="forward passes per run (default %(default)s)")
    p.add_argument("--eval-points", action=_Count, default=5, help="evaluations along each run (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    p.add_argument("--eps", action=_Finite, default=d.eps, help="perturbation size (default %(default)g)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="(default %(default)s)")
    p.add_argument("--n-dev", type=int, default=d.n_dev, help="dev examples, which choose the lr (default %(default)s)")
    p.add_argument("--n-test", type=int, default=d.n_test, help="(default %(default)s)")
    p.add_argument("--max-length", type=int, default=d.max_length, help="(default %(default)s)")
    p.add_argument("--noise", default=d.noise, choices=["auto", "table", "gaussian"])
    p.add_argument("--work", default=None, metavar="DIR", help=work)
    p.add_argument("--out", required=True, help="the tuner file to write (.safetensors)")
    g = _hardware_args(p)
    g.add_argument("--autocast", default=None, choices=["bf16"], help="every forward pass under bf16 autocast")


def parser() -> argparse.ArgumentParser:
    from finetune.common.runs import SCHEDULES
    from finetune.trainer import DEFAULT_TASK, METHODS

    top = Parser(prog=_prog(), description="zotune: learned zeroth-order fine-tuning of LLMs.")
    sub = top.add_subparsers(dest="command", required=True)
    run = _run_args()
    _peft_args(run)

    p = sub.add_parser("finetune", parents=[run], help="fine-tune a model on a task with a ZO method (or fo: backpropagation)")
    p.add_argument("--method", default="mezo", choices=list(METHODS))
    p.add_argument("--steps", type=int, default=100, help="ZO steps (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on the dev split every N steps")
    p.add_argument("--out", required=True, help="output folder (metrics.json, model/)")
    p.add_argument("--no-save-model", action="store_true", help="write metrics only")
    p.add_argument("--snapshot-every", "--checkpoint-every", dest="snapshot_every", action=_Count, default=100,
                   help="save a resumable snapshot every N steps (default %(default)s; 0 = never)")
    p.add_argument("--no-calibration", action="store_true",
                   help="skip the calibration reference (it scores the training examples once with the frozen model)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run to the same --out")
    p.add_argument("--start-over", action="store_true", help="discard an interrupted run's snapshot first")
    p.add_argument("--save-log", action="store_true",
                   help="also write out/log.jsonl: the run as seeds and coefficients (and a head step's rows), "
                        "which 'cli.py replay' turns back into the fine-tuned model")
    _parallel_args(p)
    p.add_argument("--tuner", default=None, metavar="FILE|hf://OWNER/NAME",
                   help="a tuner artifact (.safetensors path, or hf://owner/name[/file] on the Hugging Face Hub): "
                        "fine-tune with it (method 'tuner'; with --method exact, its head and top-block steps alone)")
    p.add_argument("--merge", action="store_true",
                   help="with --peft lora or norms: write the merged full model to out/model instead of the adapter")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("meta-train", help="meta-train a tuner (PertNN bank) for a base model")
    _meta_args(p)
    _peft_args(p)
    p.set_defaults(func=cmd_meta_train)

    from finetune.trainer import FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser("meta-train-head", help="choose a tuner's head step lr on meta-training tasks (short fine-tunes "
                       "per lr) and write the tuner with it")
    p.add_argument("--tuner", default=None, metavar="FILE",
                   help="the tuner to extend (default: an untrained one for --model, i.e. MeZO's scales)")
    p.add_argument("--model", default=None, help="base model (default: the tuner's, else the embedded model)")
    p.add_argument("--tasks", type=_task_list, required=True,
                   help="comma-separated meta-training tasks (multiple choice, one-token options); never held-out ones")
    p.add_argument("--head-lrs", type=_floats, default=[1e-4, 3e-4, 1e-3],
                   help="the head lrs tried, comma-separated; 0 = no head step (default 1e-4,3e-4,1e-3)")
    p.add_argument("--race", type=_floats, default=None, metavar="LRS",
                   help="one more candidate: a head race over these lrs (finetune --head-race); the tuner carries the "
                   "race if it wins")
    p.add_argument("--lr", action=_Finite, default=None,
                   help="the fine-tuning lr of the tuner's ZO step (default: the tuner's recommended lr)")
    p.add_argument("--lrs", type=_floats, default=None,
                   help="instead of --lr, a grid of ZO lrs chosen with the head lr: every (lr, head lr) pair gets its "
                   "benches, and the winning pair's lr becomes the tuner's recommended lr")
    p.add_argument("--seeds", type=_ints, default=[0],
                   help="comma-separated seeds, one bench each per (task, lr, head lr) (default 0)")
    _selection_run_args(p, d, work="where the benches go, one per (task, [lr,] head lr, seed); rerun the same command "
                        "to continue after a kill, or with more --seeds/--tasks to widen a choice (finished benches are "
                        "reused; default: <out stem>.head-benches beside --out)")
    p.set_defaults(func=cmd_meta_train_head)

    p = sub.add_parser("meta-train-top", help="choose a tuner's top-block step lr on meta-training tasks (short "
                       "fine-tunes per lr) and write the tuner with it")
    p.add_argument("--tuner", required=True, metavar="FILE",
                   help="the tuner to extend, its head step included (e.g. the one meta-train-head wrote)")
    p.add_argument("--model", default=None, help="base model (default: the tuner's)")
    p.add_argument("--tasks", type=_task_list, required=True,
                   help="comma-separated meta-training tasks (multiple choice, one-token options); never held-out ones")
    p.add_argument("--top-lrs", type=_floats, default=[0, 1e-4, 3e-4, 1e-3],
                   help="the top-block step's Adam lrs tried, comma-separated; 0 = no step, so that one is carried only "
                   "if it beats the tuner without it (default 0,1e-4,3e-4,1e-3)")
    p.add_argument("--top-schedule", default=None, choices=SCHEDULES,
                   help="the step's own lr schedule for every candidate, carried in the tuner (format 6; 7 for "
                   "linear-warmup) (default: none, the run's --schedule)")
    p.add_argument("--lr", action=_Finite, default=None,
                   help="the fine-tuning lr of the tuner's ZO step (default: the tuner's recommended lr)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="the lr schedule of the ZO and head steps in every candidate's runs, carried in the tuner as "
                   "the schedule it recommends (format 8 unless constant) (default: the tuner's, else constant)")
    p.add_argument("--seeds", type=_ints, default=[0],
                   help="comma-separated seeds, one bench each per (task, top lr) (default 0)")
    _selection_run_args(p, d, work="where the benches go, one per (task, top lr, seed); rerun the same command to "
                        "continue after a kill, or with more --seeds/--tasks to widen a choice (default: <out "
                        "stem>.top-benches beside --out)")
    p.set_defaults(func=cmd_meta_train_top)

    tuners = sub.add_parser("tuners", help="inspect, share and import tuner artifacts").add_subparsers(
        dest="tuners_command", required=True)
    p = tuners.add_parser("inspect", help="print a tuner's metadata and a per-block summary of its scales")
    p.add_argument("file", help="a tuner .safetensors file (or hf://owner/name[/file])")
    p.add_argument("--all", action="store_true", help="list every block, not a summary by kind")
    p.set_defaults(func=cmd_tuners_inspect)
    p = tuners.add_parser("list", help="the tuners shipped in checkpoints/pretrained/ and those in the cache")
    p.set_defaults(func=cmd_tuners_list)
    p = tuners.add_parser("export", help="write a Hub-ready folder: tuner.safetensors and a model card README.md")
    p.add_argument("file", help="a tuner .safetensors file")
    p.add_argument("dir", help="the folder to write (must not exist or be empty)")
    p.add_argument("--repo", default=None, help="owner/name to show in the card's usage examples")
    p.set_defaults(func=cmd_tuners_export)
    p = tuners.add_parser("push", help="publish a tuner with a generated model card on the Hugging Face Hub")
    p.add_argument("file", help="a tuner .safetensors file")
    p.add_argument("--repo", required=True, help="the Hub repository, owner/name (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.set_defaults(func=cmd_tuners_push)
    p = tuners.add_parser("pull", help="download a tuner from the Hugging Face Hub into the local cache")
    p.add_argument("repo", help="owner/name or hf://owner/name[/file]")
    p.add_argument("--file", default=None, help="the file in the repository (default tuner.safetensors)")
    p.set_defaults(func=cmd_tuners_pull)
    p = tuners.add_parser("import-pth", help="convert a published ZO Fine-tuner .pth tuner (never runs pickled code)")
    p.add_argument("file", help="the .pth file (a dict of Sequential(Linear(5,64), Tanh, Linear(64,1)))")
    p.add_argument("--model", required=True, help="the base model it was trained for: alias (llama-3.2-1b), "
                   "Hub id or folder; loaded once to map parameter names to blocks")
    p.add_argument("--out", required=True, help="the tuner file to write (.safetensors)")
    p.add_argument("--paper-batch", type=int, default=None, metavar="N",
                   help="count embedding blocks as the paper does in the energy normalisation, 15*N*hidden with "
                        "N = per-device batch x GPUs of the run (16 in its recipe); default: plain numels")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=cmd_tuners_import_pth)

    p = sub.add_parser("bench", parents=[run], help="compare methods and seeds at an equal forward budget")
    p.add_argument("--methods", type=lambda s: s.split(","), default=["mezo", "nspsa", "zo-adam"],
                   help="comma-separated methods among " + ", ".join(METHODS) + " (default mezo,nspsa,zo-adam)")
    p.add_argument("--lr-grid", nargs="*", metavar="METHOD=LR,LR",
                   help="one lr grid per method, e.g. mezo=1e-6,1e-5 fo=1e-4 or 'mezo=1e-6,1e-5;fo=1e-4' "
                   "(default: --lr)")
    p.add_argument("--select-on", default="dev", choices=["dev", "train"],
                   help="choose each method's lr by its final dev loss (default) or final training loss; "
                   "never by the test split")
    p.add_argument("--eval-points", action=_Count, default=10,
                   help="test and dev evaluations along each run, for the curves and forwards-to-target "
                   "(default %(default)s)")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--tuner", default=None, metavar="FILE", help="the tuner artifact that method 'tuner' uses")
    p.add_argument("--forwards", type=int, default=400, help="forward passes per run (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder (bench.json, bench.md, bench.png)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted bench to the same --out")
    p.add_argument("--snapshot-every", "--checkpoint-every", dest="snapshot_every", action=_Count, default=100,
                   help="steps between resumable snapshots of the run in progress (default %(default)s; 0 = never)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-merge", help="join finished benches of one task and budget (an lr grid on one "
                       "seed, the selected lrs on more) into one report")
    p.add_argument("benches", nargs="+", help="the --out folders of finished benches")
    p.add_argument("--out", required=True, help="output folder (bench.json, bench.md, bench.png)")
    p.set_defaults(func=cmd_bench_merge)

    p = sub.add_parser("replay", help="rebuild a fine-tuned model from its base model and a --save-log log")
    p.add_argument("log", help="the log.jsonl a 'finetune --save-log' run wrote")
    p.add_argument("--model", required=True, help="the base model the log was written for (alias, tiny-*, Hub id, folder)")
    p.add_argument("--out", required=True, help="the folder to write the fine-tuned model to")
    p.add_argument("--device", default=None, help="default: the device type the run used")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("fetch", help="download the embedded model and task data into the cache")
    p.add_argument("--tasks", nargs="*", default=[DEFAULT_TASK],
                   help=f"tasks to fetch (default {DEFAULT_TASK}; --tasks alone: the model only)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("compare", help="a table of finished finetune runs of one task: accuracy, loss, gains")
    p.add_argument("runs", nargs="+", help="the --out folders of finished finetune runs")
    p.add_argument("--vs", nargs="+", action="append", metavar="RUN",
                   help="another arm: runs of one other setting over the same seeds as the first runs (repeatable); "
                        "adds a table paired by seed, with 95%% bootstrap intervals")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("tasks", help="list the tasks that --task accepts")
    p.set_defaults(func=cmd_tasks)
    return top


def main(argv: list[str] | None = None) -> int:
    from finetune.common.errors import ZotuneError

    try:
        args = parser().parse_args(argv)  # imports torch: Ctrl-C is common here
        args.func(args)
    except ZotuneError as e:
        _say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
