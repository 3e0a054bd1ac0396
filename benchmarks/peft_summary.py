"""Summarise reports/peft-smollm2 (reports/peft-smollm2/run.sh): one Markdown table per task across the arms'
``bench.json`` files (the LoRA bench: MeZO, the LoRA tuner and first-order on LoRA; the full-model bench: MeZO),
each arm at the lr its bench selected (on dev loss, never test): test loss and accuracy after (mean ± sample std
over seeds), forward passes until the test loss first reaches MeZO-on-LoRA's final test loss (per seed, same
seed's target; mean over the seeds that reach it), and wall-clock seconds per forward pass.

    python benchmarks/peft_summary.py reports/peft-smollm2 > reports/peft-smollm2/summary.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.bench import forwards_to_target  # noqa: E402

ARMS = {("lora", "mezo"): "MeZO on LoRA", ("lora", "tuner"): "tuner for LoRA", ("lora", "fo"): "first-order on LoRA",
        ("full", "mezo"): "MeZO on the full model"}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def final(run: dict, key: str):
    return (run.get("curve") or [{}])[-1].get(key)


def task_table(folder: Path) -> list[str]:
    arms = []  # (label, row of the bench summary, runs by seed, metric)
    for (sub, method), label in ARMS.items():
        path = folder / sub / "bench.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        best = [r for r in report["summary"] if r["method"] == method and r.get("best")]
        if best:
            runs = {r["seed"]: r for r in report["runs"] if r["method"] == method and r["lr"] == best[0]["lr"]}
            arms.append((label, best[0], runs, report["metric"]))
    if not arms:
        return []
    ref = next((runs for label, _, runs, _ in arms if label == "MeZO on LoRA"), {})
    metric = arms[0][3]
    lines = [f"## {folder.name}", "",
             f"| arm | lr | seeds | forwards | test loss | {metric} before | {metric} after | forwards to MeZO-on-LoRA's "
             "final test loss | s / forward |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row, runs, _ in arms:
        reached = [forwards_to_target(run, final(ref[s], "test_loss")) for s, run in runs.items() if s in ref]
        hits = [f for f in reached if f is not None]
        to_target = ("-" if not reached else f"not reached (0/{len(reached)} seeds)" if not hits
                     else f"{statistics.fmean(hits):.0f} ({len(hits)}/{len(reached)} seeds)")
        lines.append(f"| {label} | {row['lr']:g} | {row['seeds']} | {row['forwards']} | "
                     f"{mean_std([final(r, 'test_loss') for r in runs.values()])} | {row['eval_before']:.3f} | "
                     f"{mean_std([r['eval']['after'] for r in runs.values()])} | {to_target} | "
                     f"{row.get('seconds_per_forward', float('nan')):.3f} |")
    return lines + [""]


def main(root: str) -> None:
    lines = ["# ZO on adapters, SmolLM2-135M: summary", "",
             "Each arm at the lr its bench selected on dev loss; mean ± sample std over seeds; test loss after the "
             "run. Paired intervals against MeZO on LoRA (same bench) are in `<task>/lora/bench.md`.", ""]
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        lines += task_table(folder)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
