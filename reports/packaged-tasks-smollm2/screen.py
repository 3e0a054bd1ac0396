"""Seed-0 screens of this report: every finished run of one seed on each task, one row per arm.

    python reports/packaged-tasks-smollm2/screen.py [--seed 0] [task ...] [> reports/packaged-tasks-smollm2/screen.md]

Reads each run's ``metrics.json`` under ``runs/`` (``runs/<task>/<arm>-s<seed>/``; word polarity's first runs sit at
``runs/<arm>-s<seed>/``). A row: test accuracy before and after, the raw gain and the gain beyond the calibration
reference (per-option log-prior offsets fitted on the training split), the final test and dev losses, and the
forward passes. The runs of one task and seed must start from the same test split (the same accuracy and loss
before training, and the same calibration reference, within paired.py's tolerance), which is checked: some runs
read the task's JSONL rows and others the ``packaged:<name>`` spec, so their task names differ (see paired.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from paired import RUNS, same_start, start  # noqa: E402  (the same-split check of paired.py)

TASKS = ("vader-polarity", "city-country", "city-continent", "county-state", "syllables", "city-hemisphere",
         "word-class", "article", "rhymes", "subjectivity", "noun-number")


def runs_of(task: str, seed: int) -> dict[str, dict]:
    dirs = sorted((RUNS / task).glob(f"*-s{seed}"))
    if task == "vader-polarity":
        dirs += sorted(d for d in RUNS.glob(f"*-s{seed}") if (d / "metrics.json").is_file())
    return {d.name.removesuffix(f"-s{seed}"): json.loads((d / "metrics.json").read_text())
            for d in dirs if (d / "metrics.json").is_file()}


def same_split_runs(task: str, seed: int) -> dict[str, dict]:
    """:func:`runs_of`, checked: every run of the task and seed starts from the same test split (else exit)."""
    runs = runs_of(task, seed)
    starts = [start(m) for m in runs.values()]
    if any(not same_start(starts[0], s) for s in starts[1:]):
        sys.exit(f"{task}, seed {seed}: the runs do not start from the same test split")
    return runs


def table(task: str, seed: int) -> str:
    runs = same_split_runs(task, seed)
    if not runs:
        return f"## {task}, seed {seed}\n\nNo finished runs.\n"
    m0 = next(iter(runs.values()))
    ref = m0["calibration"]["test"]["after"]
    lines = [f"## {task}, seed {seed}\n",
             f"Test: {m0['eval']['n']} examples, accuracy {m0['eval']['before']:.3f} and loss "
             f"{m0['eval']['loss_before']:.3f} before training; calibration reference {ref['accuracy']:.3f} "
             f"(loss {ref['loss']:.3f}).\n",
             "| arm | test accuracy | raw gain (points) | beyond the reference | test loss | dev loss | passes |",
             "|---|---|---|---|---|---|---|"]
    order = sorted(runs, key=lambda a: -runs[a]["eval"]["after"])
    for arm in order:
        m = runs[arm]
        e, g = m["eval"], m["gain"]
        dev = m["curve"][-1].get("dev_loss") if m["curve"] else None
        back = f" (+{m['backwards']} backward)" if m.get("backwards") else ""
        lines.append(f"| {arm} | {e['after']:.3f} | {100 * g['metric']:+.1f} | "
                     f"{100 * g['metric_beyond_calibration']:+.1f} | {e['loss_after']:.3f} | "
                     f"{'–' if dev is None else f'{dev:.4f}'} | {m['forwards']}{back} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args()
    print(f"# Every finished run of seed {args.seed}, by task\n")
    print("Written by `python reports/packaged-tasks-smollm2/screen.py` from `runs/`; arms sorted by test accuracy.\n")
    for task in args.tasks:
        print(table(task, args.seed))


if __name__ == "__main__":
    main()
