"""Summarise reports/peft-smollm2 (reports/peft-smollm2/run.sh): one Markdown table per task from the arms'
bench.json files: accuracy, final training loss, forward passes to reach MeZO-on-LoRA's final training loss,
and seconds per run, at each arm's best lr (chosen on training loss by bench, never on test).

    python benchmarks/peft_summary.py reports/peft-smollm2 > reports/peft-smollm2/summary.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.bench import final_loss, smooth  # noqa: E402

ARMS = {("lora", "mezo"): "MeZO on LoRA", ("lora", "tuner"): "tuner for LoRA", ("full", "mezo"): "MeZO on the full model",
        ("fo-lora", "fo"): "first-order on LoRA"}


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


def forwards_to(runs: list[dict], target: float) -> str:
    """Forward passes until the seed-mean of the smoothed training loss first reaches ``target``."""
    window = max(1, len(runs[0]["train_loss"]) // 10)
    curves = [smooth(r["train_loss"], window) for r in runs]
    n = min(len(c) for c in curves)
    per_step = runs[0]["forwards"] / max(1, len(runs[0]["train_loss"]))
    for i in range(n):
        if statistics.fmean(c[i] for c in curves) <= target:
            return str(round((i + 1) * per_step))
    return "not reached"


def task_table(folder: Path) -> list[str]:
    arms = []
    for (sub, method), label in ARMS.items():
        path = folder / sub / "bench.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        best = [r for r in report["summary"] if r["method"] == method and r.get("best")]
        if not best:
            continue
        runs = [r for r in report["runs"] if r["method"] == method and r["lr"] == best[0]["lr"]]
        arms.append((label, best[0]["lr"], runs, report["metric"]))
    if not arms:
        return []
    target_runs = next((runs for label, _, runs, _ in arms if label == "MeZO on LoRA"), None)
    target = statistics.fmean(final_loss(r) for r in target_runs) if target_runs else None
    metric = arms[0][3]
    lines = [f"## {folder.name}", "",
             f"| arm | lr | seeds | forwards | {metric} before | {metric} after | final train loss | "
             "forwards to MeZO-on-LoRA's final train loss | seconds per run |", "|---|---|---|---|---|---|---|---|---|"]
    for label, lr, runs, _ in arms:
        lines.append(f"| {label} | {lr:g} | {len(runs)} | {runs[0]['forwards']} | {runs[0]['eval']['before']:.3f} | "
                     f"{mean_std([r['eval']['after'] for r in runs])} | {mean_std([final_loss(r) for r in runs])} | "
                     f"{forwards_to(runs, target) if target is not None else '-'} | "
                     f"{statistics.fmean(r['seconds'] for r in runs):.0f} |")
    return lines + [""]


def main(root: str) -> None:
    lines = ["# ZO on adapters, SmolLM2-135M: summary", "",
             "Final train loss: mean over the last 10% of steps, then mean ± std over seeds; each arm at its best lr "
             "(chosen on train loss). Test loss is not recorded by `bench`.", ""]
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        lines += task_table(folder)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
