"""Write the shipped tuner v2 plus the top-block step (section 18): tuner v2 as shipped, carrying the top lr that the
screen's rule chose on the meta-training tasks, with the screen's figures in its provenance; with ``--decay``, the
top lr and linear schedule that section 20's screen chose (format 6).

    python reports/tuner-v2-smollm2/make_top_tuner.py [OUT]   # default: checkpoints/pretrained/smollm2-135m-v2-top...
    python reports/tuner-v2-smollm2/make_top_tuner.py --decay [OUT]  # default: ...smollm2-135m-v2-top-linear...

The lr is read from the screen's runs (``top_screen.py``, ``top-screen/``), not typed in: the top lr with the lower
mean final dev loss over the screen's tasks, refused unless it beats tuner v2's final dev loss on every one of them
(the rule fixed in run.sh before the screen ran). No held-out task is read.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from checkpoints import Tuner  # noqa: E402
from top_screen import DECAY_LRS, TASKS, TOP_LRS, arms, decay_verdict, mean_dev, verdict  # noqa: E402

V2 = ROOT / "checkpoints" / "pretrained" / "smollm2-135m-v2.safetensors"


def main() -> None:
    args = sys.argv[1:]
    decay = "--decay" in args
    if decay:
        args.remove("--decay")
    name = "smollm2-135m-v2-top-linear.safetensors" if decay else "smollm2-135m-v2-top.safetensors"
    out = Path(args[0]) if args else V2.with_name(name)
    table = {t: arms(t) for t in TASKS}
    best, wins = (decay_verdict if decay else verdict)(table)
    if not wins:
        sys.exit(f"section 20's rule chose {best}, not a linear arm that beats tuner v2 on every task: nothing to ship"
                 if decay else
                 f"top lr {best} does not beat tuner v2's final dev loss on every screened task: nothing to ship")
    arm = best if decay else f"+ top {best}"  # decay_verdict names the arm, verdict the lr
    lr = arm.split()[2]
    grid = {x: f"+ top {x}" for x in TOP_LRS} | ({f"{x} linear": f"+ top {x} linear" for x in DECAY_LRS} if decay
                                                     else {})
    tuner = Tuner.from_pretrained(V2).with_top(float(lr), "linear" if decay else None)
    tuner.provenance = {**tuner.provenance, "top_selection": {
        "tasks": [f"packaged:{t}" for t in TASKS], "forwards": 1000, "seeds": [0],
        "dev_loss": {"0": mean_dev(table, "tuner v2"), **{k: mean_dev(table, a) for k, a in grid.items()}},
        "report": f"reports/tuner-v2-smollm2 section {20 if decay else 18}"}}
    print(f"top lr {lr}{', linear' if decay else ''} (mean final dev loss {mean_dev(table, arm):.4f}); "
          f"wrote {tuner.save_pretrained(out)}")


if __name__ == "__main__":
    main()
