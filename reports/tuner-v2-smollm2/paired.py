"""Two arms of benches that bench-merge cannot join (they differ in more than method, lr and seed, e.g. the lr
schedule), compared run against run on the seeds they share: final dev loss, test loss and accuracy, the paired
differences B - A with 95% bootstrap intervals over the seeds, and the forward passes each B run needs to reach
its A partner's final test loss.

    python reports/tuner-v2-smollm2/paired.py --a A1 [A2 ...] --b B1 [B2 ...] \
        [--a-method mezo] [--a-lr LR] [--b-method mezo] [--b-lr LR]

Each folder is a finished bench (bench.json); each arm takes the runs of its method (at its lr, if given) and
must end up with one run per seed. Diverged runs are named and left out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from finetune.bench import final_value, forwards_to_target, paired_bootstrap  # noqa: E402


def arm(folders: list[Path], method: str, lr: float | None) -> dict[int, dict]:
    runs = {}
    for folder in folders:
        for run in json.loads((folder / "bench.json").read_text())["runs"]:
            if run["method"] != method or (lr is not None and run["lr"] != lr):
                continue
            if run.get("diverged"):
                print(f"{folder}: seed {run['seed']} diverged ({run['diverged']}); left out")
                continue
            if run["seed"] in runs:
                sys.exit(f"{folder}: a second {method} run for seed {run['seed']}; pass one lr per arm")
            runs[run["seed"]] = run
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", type=Path, required=True)
    p.add_argument("--b", nargs="+", type=Path, required=True)
    for side in ("a", "b"):
        p.add_argument(f"--{side}-method", default="mezo")
        p.add_argument(f"--{side}-lr", type=float, default=None)
    args = p.parse_args()
    a, b = arm(args.a, args.a_method, args.a_lr), arm(args.b, args.b_method, args.b_lr)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        sys.exit("the arms share no seed")
    print(f"seeds {seeds}")
    for key in ("dev_loss", "test_loss", "test"):
        va = [final_value(a[s], key) for s in seeds]
        vb = [final_value(b[s], key) for s in seeds]
        d = [y - x for x, y in zip(va, vb)]
        ci = paired_bootstrap(d)
        ci_s = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "(one seed)"
        print(f"{key:9s}  A {' '.join(f'{v:.4f}' for v in va)}  B {' '.join(f'{v:.4f}' for v in vb)}  "
              f"B-A mean {statistics.mean(d):+.4f} {ci_s}")
    cal = json.loads((args.b[0] / "bench.json").read_text()).get("calibration") or {}
    if "test" in cal:
        acc, loss = cal["test"]["after"]["accuracy"], cal["test"]["after"]["loss"]
        mean = {side: statistics.mean(final_value(runs[s], "test") for s in seeds) for side, runs in (("A", a), ("B", b))}
        print(f"calibration reference (label prior only): accuracy {acc:.3f}, test loss {loss:.4f}; accuracy beyond it: "
              f"A {mean['A'] - acc:+.3f}, B {mean['B'] - acc:+.3f}")
    to = [forwards_to_target(b[s], final_value(a[s], "test_loss")) for s in seeds]
    print("B's forwards to A's final test loss, per seed:", to)
    for s in seeds:
        print(f"seed {s} curves (forwards, test loss):  A", [(c['forwards'], round(c['test_loss'], 3)) for c in a[s]['curve']])
        print(f"{'':28s}B", [(c['forwards'], round(c['test_loss'], 3)) for c in b[s]['curve']])


if __name__ == "__main__":
    main()
