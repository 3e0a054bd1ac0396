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
    if "--decay" in args:
        args.remove("--decay")
        return decayed(Path(args[0]) if args else V2.with_name("smollm2-135m-v2-top-linear.safetensors"))
    out = Path(args[0]) if args else V2.with_name("smollm2-135m-v2-top.safetensors")
    table = {t: arms(t) for t in TASKS}
    best, wins = verdict(table)
    if not wins:
        sys.exit(f"top lr {best} does not beat tuner v2's final dev loss on every screened task: nothing to ship")
    tuner = Tuner.from_pretrained(V2).with_top(float(best))
    tuner.provenance = {**tuner.provenance, "top_selection": {
        "tasks": [f"packaged:{t}" for t in TASKS], "forwards": 1000, "seeds": [0],
        "dev_loss": {"0": mean_dev(table, "tuner v2"), **{lr: mean_dev(table, f"+ top {lr}") for lr in TOP_LRS}},
        "report": "reports/tuner-v2-smollm2 section 18"}}
    dev = mean_dev(table, f"+ top {best}")
    print(f"top lr {best} (mean final dev loss {dev:.4f}); wrote {tuner.save_pretrained(out)}")



def decayed(out: Path) -> None:
    """Section 20: tuner v2 plus the top lr whose linear decay section 20's rule chose, refused unless it did."""
    table = {t: arms(t) for t in TASKS}
    best, wins = decay_verdict(table)
    if not wins:
        sys.exit(f"section 20's rule chose {best}, not a linear arm that beats tuner v2 on every task: nothing to ship")
    lr = best.split()[2]
    tuner = Tuner.from_pretrained(V2).with_top(float(lr), "linear")
    tuner.provenance = {**tuner.provenance, "top_selection": {
        "tasks": [f"packaged:{t}" for t in TASKS], "forwards": 1000, "seeds": [0],
        "dev_loss": {"0": mean_dev(table, "tuner v2"), **{x: mean_dev(table, f"+ top {x}") for x in TOP_LRS},
                     **{f"{x} linear": mean_dev(table, f"+ top {x} linear") for x in DECAY_LRS}},
        "report": "reports/tuner-v2-smollm2 section 20"}}
    print(f"top lr {lr}, linear (mean final dev loss {mean_dev(table, best):.4f}); wrote {tuner.save_pretrained(out)}")


if __name__ == "__main__":
    main()
