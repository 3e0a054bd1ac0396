"""Search for tasks where ZO fine-tuning can show learning: per task, the zero-shot test metric, the
calibration reference (per-option offsets fitted on the training set), a first-order run (the ceiling) and,
optionally, a MeZO run at a given forward budget.

    python benchmarks/task_search.py --tasks bigbench:snarks,bigbench:navigate --out reports/task-search-smollm2

Each (task, method) run is one ``cli.py finetune`` call whose ``metrics.json`` is kept under
``OUT/runs/<task>/<method>``; a rerun skips the runs that finished, so the search resumes after a kill.
``OUT/summary.md`` and ``OUT/summary.json`` are rewritten after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_dir(out: Path, task: str, method: str) -> Path:
    return out / "runs" / task.replace(":", "_").replace("/", "_") / method


def run(args: argparse.Namespace, task: str, method: str) -> dict | None:
    """The metrics of one finished run, running it first if needed (None if it failed)."""
    folder = run_dir(args.out, task, method)
    metrics = folder / "metrics.json"
    if metrics.exists():
        return json.loads(metrics.read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--task", task, "--batch-size", str(args.batch_size), "--seed", str(args.seed),
              "--n-test", str(args.n_test), "--threads", str(args.threads), "--no-save-model", "--out", str(folder)]
    if method == "fo":
        extra = ["--method", "fo", "--lr", str(args.fo_lr), "--steps", str(args.fo_steps)]
    else:
        extra = ["--method", "mezo", "--lr", str(args.zo_lr), "--eps", "1e-3", "--steps", str(args.zo_forwards // 2)]
    cmd = [sys.executable, str(ROOT / "cli.py"), "finetune", *extra, *common]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ)
    return json.loads(metrics.read_text()) if done.returncode == 0 and metrics.exists() else None


def row(task: str, results: dict[str, dict | None]) -> dict:
    out: dict = {"task": task}
    for method, m in results.items():
        if m is None:
            out[method] = None
            continue
        ev = m["eval"]
        out["n_test"] = ev["n"]
        out["before"] = ev["before"]
        cal = (m.get("calibration") or {}).get("test", {}).get("after", {})
        if cal:
            out["calibrated"] = cal.get("accuracy")
        out[method] = {"after": ev["after"], "gain": ev["after"] - ev["before"], "forwards": m["forwards"],
                       "seconds": m.get("seconds")}
    return out


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def write_summary(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    lines = [f"Model {args.model}, batch {args.batch_size}, seed {args.seed}, {args.n_test} test examples at most; "
             f"fo: AdamW lr {args.fo_lr}, {args.fo_steps} steps; mezo: lr {args.zo_lr}, eps 1e-3, "
             f"{args.zo_forwards} forward passes.", "",
             "| task | n test | zero-shot | calibrated | fo | fo gain | fo beyond calibration | mezo | mezo gain | "
             "mezo beyond calibration |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fo, zo = r.get("fo") or {}, r.get("mezo") or {}
        cal = r.get("calibrated")
        fo_beyond = None if not fo or cal is None else fo["after"] - cal
        beyond = None if not zo or cal is None else zo["after"] - cal
        lines.append(f"| {r['task']} | {r.get('n_test', '–')} | {fmt(r.get('before'))} | {fmt(cal)} | "
                     f"{fmt(fo.get('after'))} | {fmt(fo.get('gain'))} | {fmt(fo_beyond)} | {fmt(zo.get('after'))} | "
                     f"{fmt(zo.get('gain'))} | {fmt(beyond)} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1, allow_nan=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", required=True, help="comma-separated --task specs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="fo,mezo", help="which of fo,mezo to run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fo-lr", type=float, default=1e-5)
    p.add_argument("--fo-steps", type=int, default=100)
    p.add_argument("--zo-lr", type=float, default=1e-5)
    p.add_argument("--zo-forwards", type=int, default=1000)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for task in [t for t in args.tasks.split(",") if t]:
        rows.append(row(task, {m: run(args, task, m) for m in methods}))
        write_summary(args.out, rows, args)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
