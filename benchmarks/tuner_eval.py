"""Does a meta-trained tuner beat MeZO? MeZO vs the tuner vs an untrained tuner, at equal forward passes.

    python benchmarks/tuner_eval.py --tuner T.safetensors --task bigbench:strategyqa --out DIR \
        [--model M] [--lrs 5e-5,1e-4] [--seeds 0,1,2] [--steps 80] [--batch-size 8] [--n-test 200]

Methods (same learning-rate grid, same seeds, same task split, same number of forward passes):

* ``mezo``: MeZO (every block's scale is 1);
* ``tuner``: the meta-trained tuner;
* ``untrained``: a tuner for the same architecture whose PertNN bank has PyTorch's default random init
  in every layer (the paper's untrained tuner): heterogeneous scales that nobody learned. If ``tuner``
  beats ``mezo`` but not ``untrained``, the gain comes from the init, not from learning.

Writes ``DIR/runs.json`` after every run (a rerun skips the runs already there, so an interrupted
evaluation continues; processes with different ``--seeds`` may share ``DIR``), then ``DIR/summary.md`` (the best lr per method chosen by final training loss,
never by the test metric) and ``DIR/loss.png``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from checkpoints import Tuner  # noqa: E402
from finetune.bench import append_run, markdown, mean_test_loss, plot, read_runs, summarise  # noqa: E402
from finetune.data.models import model_id, name_for_id  # noqa: E402
from finetune.trainer import FinetuneConfig, prepare, train  # noqa: E402


def untrained_tuner(tuner: Tuner, seed: int = 0) -> Tuner:
    """A tuner like ``tuner`` (architecture, configs) whose bank is freshly and fully randomly initialised."""
    fresh = Tuner(bank=type(tuner.bank)(tuner.bank.numels, tuner.bank.cfg, generator=torch.Generator().manual_seed(seed)),
                  feature_config=tuner.feature_config, base_model=tuner.base_model, blocks=tuner.blocks,
                  tied_groups=tuner.tied_groups, stats=tuner.stats, provenance={"untrained": True, "seed": seed})
    fresh.bank.randomize_output_(torch.Generator().manual_seed(seed + 1))
    return fresh


def test_loss_table(runs: list[dict], rows: list[dict]) -> str:
    """Markdown: the test-split loss after fine-tuning, per method at its best lr (mean ± std over seeds)."""
    lines = ["| method | lr | test loss before | test loss after (mean ± std) | per seed (seed: loss) |",
             "|---|---|---|---|---|"]
    for row in sorted((r for r in rows if r.get("best")), key=lambda r: r["method"]):
        mine = sorted((r for r in runs if r["method"] == row["method"] and r["lr"] == row["lr"]),
                      key=lambda r: r["seed"])  # runs are logged in the order they finished
        after = [r["test_loss"]["after"] for r in mine]
        per_seed = ", ".join(f"{r['seed']}: {a:.4f}" for r, a in zip(mine, after))
        before = runs[0]["test_loss"]["before"]
        lines.append(f"| {row['method']} | {row['lr']:g} | {before:.4f} | {statistics.fmean(after):.4f} ± "
                     f"{statistics.pstdev(after):.4f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tuner", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--model", default=None, help="default: the tuner's base model")
    p.add_argument("--out", required=True)
    p.add_argument("--lrs", default="5e-5,1e-4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="mezo,tuner,untrained")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tuner = Tuner.from_pretrained(args.tuner)
    untrained = out / "untrained.safetensors"
    if not untrained.exists():
        untrained_tuner(tuner).save_pretrained(untrained)
    tuner_files = {"tuner": args.tuner, "untrained": str(untrained)}
    model_name = args.model or name_for_id(tuner.base_model)
    base = FinetuneConfig(model=model_name, task=args.task, steps=args.steps, batch_size=args.batch_size,
                          n_test=args.n_test, eps=args.eps, threads=args.threads, n_dev=0)
    task, model, _, scorer = prepare(base)
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def test_loss() -> float:
        return mean_test_loss(scorer, model, task.test)

    loss_before = test_loss()
    log = out / "runs.json"
    for method in args.methods.split(","):
        for lr in [float(x) for x in args.lrs.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                if any((r["method"], r["lr"], r["seed"]) == (method, lr, seed) for r in read_runs(log)):
                    continue
                cfg = replace(base, lr=lr, seed=seed, method="mezo" if method == "mezo" else "tuner",
                              tuner=tuner_files.get(method))
                model.load_state_dict(pristine)
                result = train(cfg, model, scorer, task, progress=False)
                run = {"method": method, "lr": lr, "seed": seed, "steps": cfg.steps,
                       "forwards": result.forwards, "train_loss": result.train_loss,
                       "eval": {"before": result.eval_before, "after": result.eval_after},
                       "test_loss": {"before": loss_before, "after": test_loss()}, "seconds": result.seconds}
                append_run(log, run)
                print(f"{method:>9} lr {lr:g} seed {seed}: test loss {loss_before:.4f} -> {run['test_loss']['after']:.4f}, "
                      f"{task.metric} {result.eval_before:.3f} -> {result.eval_after:.3f}, {result.seconds:.0f} s",
                      flush=True)
    runs = read_runs(log)
    rows = summarise(runs)
    title = (f"{model_id(model_name)} on {task.name}\n{2 * args.steps} forward passes per run, "
             f"batch {args.batch_size}")
    (out / "summary.md").write_text(markdown(rows, task.metric, title) + "\n" + test_loss_table(runs, rows))
    plot(runs, rows, out / "loss.png", title)
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
