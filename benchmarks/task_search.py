"""Search for tasks where ZO fine-tuning can show learning: per task, the zero-shot test metric, the
calibration reference (per-option offsets fitted on the training set), first-order runs (the ceiling) and
ZO runs at a given forward budget.

    python benchmarks/task_search.py --tasks bigbench:snarks,bigbench:navigate --methods fo \\
        --out reports/task-search-smollm2
    python benchmarks/task_search.py --tasks bigbench:snarks --methods mezo,bcd --lrs 1e-5,3e-5 --forwards 1000 \\
        --out reports/task-search-smollm2

Each run is one ``cli.py finetune`` call whose ``metrics.json`` is kept under
``OUT/runs/<task>/<method>[-lr<lr>][-<tag>]``; a rerun skips the runs that finished, so the search resumes
after a kill. ``OUT/summary.md`` and ``OUT/summary.json`` are rebuilt from every run on disk after each run,
so one summary lists everything tried, whatever command ran it.

Selection never looks at the test split: per task and family (fo, ZO), the run with the lowest final **dev**
loss is the one reported. Test figures are read only for the selected runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finetune.bench import calibrated_metric  # noqa: E402
from finetune.data.tasks import split_task_list  # noqa: E402
from finetune.trainer import FinetuneConfig  # noqa: E402


def task_dir(out: Path, task: str) -> Path:
    return out / "runs" / task.replace(":", "_").replace("/", "_")


def run_name(method: str, lr: float | None, tag: str) -> str:
    name = method if lr is None else f"{method}-lr{lr:g}"
    return f"{name}-{tag}" if tag else name


def run(args: argparse.Namespace, task: str, method: str, lr: float | None) -> None:
    """Run one (task, method, lr) unless its metrics are on disk already."""
    folder = task_dir(args.out, task) / run_name(method, lr, args.tag)
    if (folder / "metrics.json").exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--task", task, "--batch-size", str(args.batch_size), "--seed", str(args.seed),
              "--n-test", str(args.n_test), "--n-dev", str(args.n_dev), "--threads", str(args.threads),
              "--no-save-model", "--out", str(folder), *shlex.split(args.extra)]
    if method == "fo":
        extra = ["--method", "fo", "--lr", str(lr if lr is not None else args.fo_lr), "--steps", str(args.fo_steps)]
    else:
        steps = args.forwards // FinetuneConfig(method=method).forwards_per_step
        extra = ["--method", method, "--lr", str(lr), "--steps", str(steps)]
    cmd = [sys.executable, str(ROOT / "cli.py"), "finetune", *extra, *common]
    print("$", shlex.join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=os.environ)  # a failed run (e.g. diverged) leaves no metrics: reported as such


def load_runs(folder: Path) -> list[dict]:
    runs = []
    for metrics in sorted(folder.glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        final = m["curve"][-1]
        runs.append({"name": metrics.parent.name, "method": m["method"], "lr": m["config"]["lr"],
                     "forwards": m["forwards"], "backwards": m.get("backwards", 0), "seconds": m.get("seconds"),
                     "dev_loss": final.get("dev_loss"), "dev": final.get("dev"),
                     "before": m["eval"]["before"], "after": m["eval"]["after"], "n_test": m["eval"]["n"],
                     "calibrated": calibrated_metric(m),
                     "peft": m["config"].get("peft")})
    return runs


def best_by_dev(runs: list[dict]) -> dict | None:
    scored = [r for r in runs if r["dev_loss"] is not None]
    return min(scored, key=lambda r: r["dev_loss"]) if scored else None


def summarise(out: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in (out / "runs").iterdir() if p.is_dir()):
        runs = load_runs(folder)
        if not runs:
            continue
        fo = best_by_dev([r for r in runs if r["method"] == "fo"])
        zo = best_by_dev([r for r in runs if r["method"] != "fo"])
        cal = next((r["calibrated"] for r in runs if r["calibrated"] is not None), None)
        rows.append({"task": folder.name, "n_test": runs[0]["n_test"], "before": runs[0]["before"],
                     "calibrated": cal, "fo": fo, "zo": zo, "runs": runs})
    return rows


def fmt(x, digits=3, sign=False):
    return "–" if x is None else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def after(run: dict | None) -> float | None:
    return None if run is None else run["after"]


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def verdict(r: dict, fo_min: float, zo_min: float) -> str:
    cal, fo, zo = r["calibrated"], r["fo"], r["zo"]
    if fo is None or cal is None:
        return "not screened"
    if fo["after"] - max(cal, r["before"]) < fo_min - 1e-9:  # the raw rule, and beyond the label prior
        return f"out: fo < {fo_min:.2f} raw or beyond calibration"
    if zo is None:
        return "fo passes; ZO not run"
    if zo["after"] - r["before"] < zo_min - 1e-9:
        return f"out: best ZO < {zo_min:.2f} raw gain"
    return "in" if zo["after"] - cal > 0 else "in (raw gain only)"


def write_summary(out: Path, rows: list[dict], fo_min: float, zo_min: float) -> None:
    lines = ["Per task: the zero-shot test accuracy, the calibration reference, and the fo and ZO runs with the "
             "lowest final dev loss among those tried (never chosen on test). Gains are raw and beyond calibration.",
             "", "| task | n test | zero-shot | calibrated | fo (lr) | fo gain | fo beyond cal. | best ZO (method, lr, "
             "forwards) | ZO gain | ZO beyond cal. | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fo, zo, cal = r["fo"], r["zo"], r["calibrated"]
        lines.append(
            f"| {r['task']} | {r['n_test']} | {fmt(r['before'])} | {fmt(cal)} | "
            f"{fmt(after(fo))}" + (f" ({fo['lr']:g})" if fo else "") + f" | {fmt(diff(after(fo), r['before']), sign=True)} | "
            f"{fmt(diff(after(fo), cal), sign=True)} | "
            f"{fmt(after(zo))}" + (f" ({zo['name']}, {zo['forwards']})" if zo else "") + f" | "
            f"{fmt(diff(after(zo), r['before']), sign=True)} | {fmt(diff(after(zo), cal), sign=True)} | "
            f"{verdict(r, fo_min, zo_min)} |")
    lines += ["", "Every run (selection column: the one reported above):", "",
              "| task | run | lr | forwards | seconds | dev loss | dev acc | test acc | selected |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        chosen = {id(r["fo"]), id(r["zo"])}
        for x in r["runs"]:
            lines.append(f"| {r['task']} | {x['name']} | {x['lr']:g} | {x['forwards']} | {fmt(x['seconds'], 0)} | "
                         f"{fmt(x['dev_loss'])} | {fmt(x['dev'])} | {fmt(x['after'])} | "
                         f"{'yes' if id(x) in chosen else ''} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1, allow_nan=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", required=True, help="comma-separated --task specs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="fo", help="comma-separated: fo and/or any ZO --method")
    p.add_argument("--lrs", default="", help="comma-separated lr grid for every method (fo defaults to --fo-lr)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-dev", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fo-lr", type=float, default=5e-5)
    p.add_argument("--fo-steps", type=int, default=100)
    p.add_argument("--forwards", type=int, default=1000, help="forward budget of each ZO run")
    p.add_argument("--extra", default="", help="more cli.py finetune options, e.g. '--peft lora'")
    p.add_argument("--tag", default="", help="suffix of the run folders (use it with --extra)")
    p.add_argument("--fo-min", type=float, default=0.10, help="fo's accuracy gain, raw and beyond calibration, to pass")
    p.add_argument("--zo-min", type=float, default=0.05, help="the best ZO run's raw accuracy gain to pass")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    lrs = [float(x) for x in args.lrs.split(",") if x]
    if not lrs and any(m != "fo" for m in methods):
        p.error("ZO methods need --lrs (a grid; the run with the lowest dev loss is reported)")
    for task in split_task_list(args.tasks):
        for method in methods:
            for lr in (lrs or [None]) if method == "fo" else lrs:
                run(args, task, method, lr)
                write_summary(args.out, summarise(args.out), args.fo_min, args.zo_min)
    write_summary(args.out, summarise(args.out), args.fo_min, args.zo_min)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
