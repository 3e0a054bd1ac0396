"""Print the README's result table from vp/merged/bench.json (and vp/fo-merged/bench.json): each method at its
selected lr, sorted by mean test loss, with per-seed accuracies and the paired differences from MeZO.

    python reports/baselines-smollm2/table.py
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def per_seed(bench: dict, method: str, lr: float) -> str:
    runs = sorted((r for r in bench["runs"] if r["method"] == method and r["lr"] == lr and "eval" in r),
                  key=lambda r: r["seed"])
    return ", ".join(f"{r['eval']['after']:.3f}" for r in runs)


def main() -> None:
    b = json.loads((HERE / "vp/merged/bench.json").read_text())
    cmp = {c["method"]: c for c in b["comparison"]}
    best = sorted((s for s in b["summary"] if s.get("best")), key=lambda s: s["test_loss"])
    print("| method (lr) | seeds | test accuracy | per seed | test loss | beyond the prior (accuracy) "
          "| Δaccuracy vs MeZO [95% CI] | Δtest loss vs MeZO [95% CI] | forwards to MeZO's final test loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in best:
        c = cmp[s["method"]]
        ci = (lambda lo_hi, f: f"[{lo_hi[0]:+{f}}, {lo_hi[1]:+{f}}]" if lo_hi else "(one seed)")
        reach = (f"{c['forwards_to_target']:.0f} ({c['reached']}/{len(c['seeds'])})" if c["reached"]
                 else f"not reached (0/{len(c['seeds'])})")
        mezo = s["method"] == "mezo"
        print(f"| {s['method']} ({s['lr']:g}) | {s['seeds']} | {s['eval_after']:.3f} ± {s['eval_after_std']:.3f} | "
              f"{per_seed(b, s['method'], s['lr'])} | {s['test_loss']:.3f} ± {s['test_loss_std']:.3f} | "
              f"{s['gain_beyond_calibration']:+.3f} | "
              + ("– | – | " if mezo else f"{c['metric_diff']:+.3f} {ci(c['metric_diff_ci'], '.3f')} | "
                 f"{c['loss_diff']:+.3f} {ci(c['loss_diff_ci'], '.3f')} | ") + f"{reach} |")
    fo_path = HERE / "vp/fo-merged/bench.json"
    if fo_path.exists():
        fo = json.loads(fo_path.read_text())
        for s in fo["summary"]:
            print(f"| fo, AdamW ({s['lr']:g}, {s['steps']} steps){' **selected**' if s.get('best') else ''} | "
                  f"{s['seeds']} | {s['eval_after']:.3f} ± {s['eval_after_std']:.3f} | {per_seed(fo, 'fo', s['lr'])} | "
                  f"{s['test_loss']:.3f} ± {s['test_loss_std']:.3f} | {s['gain_beyond_calibration']:+.3f} | – | – | – |")


if __name__ == "__main__":
    main()
