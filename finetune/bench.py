"""Compare ZO methods on one model and task at an equal forward-pass budget: JSON, Markdown, PNG."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from finetune.common.atomic import atomic_dir
from finetune.common.errors import ZotuneError
from finetune.data.models import model_id
from finetune.trainer import NO_Q_METHODS, FinetuneConfig, prepare, train


@dataclass
class BenchConfig:
    """A grid of runs: every method x learning rate x seed gets ``forwards`` forward passes."""

    base: FinetuneConfig
    methods: list[str] = field(default_factory=lambda: ["mezo", "nspsa", "zo-adam"])
    lrs: dict[str, list[float]] = field(default_factory=dict)  # per method; default: [base.lr]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    forwards: int = 400

    def runs(self) -> list[FinetuneConfig]:
        out = []
        for method in self.methods:
            for lr in self.lrs.get(method) or [self.base.lr]:
                for seed in self.seeds:
                    cfg = replace(self.base, method=method, lr=lr, seed=seed)
                    if method in NO_Q_METHODS:  # --q is for the methods that average directions
                        cfg.q = None
                    cfg.validate()
                    cfg.steps = self.forwards // cfg.forwards_per_step
                    if cfg.steps < 1:
                        raise ZotuneError(f"--forwards {self.forwards} is less than one step of {method} "
                                          f"({cfg.forwards_per_step} forward passes)")
                    out.append(cfg)
        return out


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def final_loss(run: dict) -> float:
    """Mean training loss over the last 10% of a run's steps (at least one step)."""
    losses = run["train_loss"]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (method, lr): means and standard deviations over seeds; ``best`` marks each method's
    learning rate with the lowest final training loss (the test metric plays no part in the choice)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    rows = []
    for (method, lr), rs in groups.items():
        losses = [final_loss(r) for r in rs]
        after = [r["eval"]["after"] for r in rs]
        rows.append({"method": method, "lr": lr, "seeds": len(rs), "steps": rs[0]["steps"],
                     "forwards": rs[0]["forwards"], "final_loss": statistics.fmean(losses),
                     "final_loss_std": statistics.pstdev(losses), "eval_before": rs[0]["eval"]["before"],
                     "eval_after": statistics.fmean(after), "eval_after_std": statistics.pstdev(after)})
    for method in {r["method"] for r in rows}:
        best = min((r for r in rows if r["method"] == method), key=lambda r: r["final_loss"])
        best["best"] = True
    return rows


def markdown(rows: list[dict], metric: str, title: str) -> str:
    lines = [f"# {title.replace(chr(10), ': ')}", "",
             f"| method | lr | seeds | steps | forwards | final train loss | {metric} before | {metric} after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["lr"])):
        mark = " **(best lr)**" if r.get("best") else ""
        lines.append(f"| {r['method']}{mark} | {r['lr']:g} | {r['seeds']} | {r['steps']} | {r['forwards']} | "
                     f"{r['final_loss']:.4f} ± {r['final_loss_std']:.4f} | {r['eval_before']:.3f} | "
                     f"{r['eval_after']:.3f} ± {r['eval_after_std']:.3f} |")
    lines += ["", "Final train loss: mean over the last 10% of steps, then mean ± std over seeds. "
              "The best lr per method is chosen by final train loss, never by the test metric."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in sorted((r for r in rows if r.get("best")), key=lambda r: r["method"]):
        rs = [r for r in runs if r["method"] == row["method"] and r["lr"] == row["lr"]]
        window = max(1, len(rs[0]["train_loss"]) // 20)
        curves = [smooth(r["train_loss"], window) for r in rs]
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        lo = [min(c[i] for c in curves) for i in range(n)]
        hi = [max(c[i] for c in curves) for i in range(n)]
        per_step = rs[0]["forwards"] / max(1, len(rs[0]["train_loss"]))
        x = [(i + 1) * per_step for i in range(n)]
        line, = ax.plot(x, mean, label=f"{row['method']} (lr {row['lr']:g}, {len(rs)} seeds)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("forward passes")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench(cfg: BenchConfig, out: Path, progress: bool = True) -> list[dict]:
    """Run the grid and write ``out/bench.json``, ``out/bench.md`` and ``out/bench.png`` atomically."""
    runs_cfg = cfg.runs()
    base = cfg.base
    with atomic_dir(out) as partial:
        task, model, _, scorer = prepare(base)
        pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
        runs = []
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not progress) as bar:
            job = bar.add_task("bench", total=len(runs_cfg))
            for run_cfg in runs_cfg:
                bar.update(job, description=f"{run_cfg.method} lr={run_cfg.lr:g} seed={run_cfg.seed}")
                model.load_state_dict(pristine)
                result = train(run_cfg, model, scorer, task, progress=False)
                runs.append({"method": run_cfg.method, "lr": run_cfg.lr, "seed": run_cfg.seed,
                             "steps": run_cfg.steps, "forwards": result.forwards, "train_loss": result.train_loss,
                             "eval": {"before": result.eval_before, "after": result.eval_after},
                             "seconds": result.seconds})
                bar.advance(job)
        rows = summarise(runs)
        title = f"{model_id(base.model)} on {task.name}\n{cfg.forwards} forward passes per run"
        report = {"model": model_id(base.model), "task": task.name, "metric": task.metric,
                  "forwards": cfg.forwards, "config": {**asdict(cfg), "base": asdict(base)},
                  "summary": rows, "runs": runs}
        (partial / "bench.json").write_text(json.dumps(report, indent=1))
        (partial / "bench.md").write_text(markdown(rows, task.metric, title))
        plot(runs, rows, partial / "bench.png", title)
    return rows
