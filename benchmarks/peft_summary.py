"""Summarise reports/peft-smollm2: one Markdown table per task across the arms' ``bench.json`` files.

The arms come from ``<report>/arms.json``: per task, a list of ``[label, bench folder (relative to the report),
method]``; the first arm is the reference (MeZO on LoRA). Each arm is shown at the lr its bench selected (on dev
loss, never test), with:

* test accuracy and test loss after the run, per seed and as mean ± sample std over seeds;
* the paired difference from the reference over the seeds both ran (mean, and a 95% percentile bootstrap
  interval from ``finetune.bench.paired_bootstrap``: the same interval ``bench`` prints);
* forward passes until the test loss first reaches the reference's final test loss of the same seed (on the
  arm's evaluation points; a first-order pass counts a forward with its backward), with the seeds that reach it;
* wall-clock seconds per forward pass, as the bench measured it.

Arms may come from different benches (first-order runs take fewer passes, so they cannot share a bench with
ZO runs; the full-model runs live in another report), so the script checks that every arm ran the same task on
the same split before it pairs them.

    python benchmarks/peft_summary.py reports/peft-smollm2 > reports/peft-smollm2/summary.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.bench import final_value, forwards_to_target, paired_bootstrap  # noqa: E402


def arm_runs(folder: Path, method: str) -> tuple[dict, dict, dict]:
    """The bench report in ``folder``, the summary row of ``method`` at its selected lr, and its runs by seed."""
    report = json.loads((folder / "bench.json").read_text())
    rows = [r for r in report["summary"] if r["method"] == method and r.get("best")]
    if not rows:
        raise SystemExit(f"{folder}/bench.json has no selected lr for {method}")
    runs = {r["seed"]: r for r in report["runs"] if r["method"] == method and r["lr"] == rows[0]["lr"] and "eval" in r}
    return report, rows[0], runs


def pm(values: list[float], fmt: str) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {std:{fmt}}"


def paired(values: dict, ref: dict, fmt: str) -> str:
    seeds = sorted(set(values) & set(ref))
    diffs = [values[s] - ref[s] for s in seeds]
    if not diffs:
        return "-"
    ci = paired_bootstrap(diffs)
    return f"{statistics.fmean(diffs):+{fmt}}" + (f" [{ci[0]:+{fmt}}, {ci[1]:+{fmt}}]" if ci else " (one seed)")


def task_table(root: Path, task: str, arms: list[list[str]]) -> list[str]:
    loaded = [(label, *arm_runs(root / folder, method)) for label, folder, method in arms]
    _, head, _, ref = loaded[0]
    seen = {(report["task"], json.dumps(report["split"], sort_keys=True)) for _, report, _, _ in loaded}
    if len(seen) > 1:
        raise SystemExit(f"{task}: the arms ran different tasks or splits: {sorted(seen)}")
    ref_acc = {s: r["eval"]["after"] for s, r in ref.items()}
    ref_loss = {s: final_value(r, "test_loss") for s, r in ref.items()}
    cal = head.get("calibration", {}).get("test", {}).get("after", {})
    lines = [f"## {task}", "", f"`{head['task']}`, split {head['split']}. Calibration reference (label prior "
             f"fitted on train): accuracy {cal.get('accuracy', float('nan')):.3f}, test loss "
             f"{cal.get('loss', float('nan')):.3f}.", "",
             f"| arm (lr) | forwards | accuracy before | accuracy after, per seed | mean ± std | Δ vs {arms[0][0]} "
             "[95% CI] | test loss after | Δ test loss [95% CI] | forwards to the reference's final test loss | "
             "s / forward |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (label, report, row, runs) in enumerate(loaded):
        seeds = sorted(runs)
        acc = {s: runs[s]["eval"]["after"] for s in seeds}
        loss = {s: final_value(runs[s], "test_loss") for s in seeds}
        reached = [forwards_to_target(runs[s], ref_loss[s]) for s in seeds if s in ref_loss]
        hits = [f for f in reached if f is not None]
        to_target = ("-" if not reached else f"not reached (0/{len(reached)})" if not hits
                     else f"{statistics.fmean(hits):.0f} ({len(hits)}/{len(reached)})")
        first = i == 0
        lines.append(
            f"| {label} ({row['lr']:g}) | {row['forwards']} | {row['eval_before']:.3f} | "
            f"{', '.join(f'{acc[s]:.3f}' for s in seeds)} | {pm(list(acc.values()), '.3f')} | "
            f"{'–' if first else paired(acc, ref_acc, '.3f')} | {pm(list(loss.values()), '.3f')} | "
            f"{'–' if first else paired(loss, ref_loss, '.3f')} | {to_target} | "
            f"{row.get('seconds_per_forward', float('nan')):.2f} |")
    return lines + [""]


def main(root: str) -> None:
    base = Path(root)
    arms = json.loads((base / "arms.json").read_text())
    lines = ["# ZO on adapters, SmolLM2-135M: summary", "",
             "Written by `python benchmarks/peft_summary.py " + root + "` from the bench folders that `arms.json` "
             "names. Each arm at the lr its bench selected on dev loss; seeds paired (same batches); Δ is the arm "
             "minus the first arm, over the seeds both ran, with a 95% bootstrap interval over seeds.", ""]
    for task, task_arms in arms.items():
        lines += task_table(base, task, task_arms)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
