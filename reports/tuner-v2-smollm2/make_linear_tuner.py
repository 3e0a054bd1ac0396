"""Write the shipped smollm2-135m-v2-all-linear tuner (section 22): the v2-top-linear file (tuner v2 plus the top-block
step at 1e-3, its lr decaying linearly) that also recommends the linear schedule for the run, so that the ZO and head
steps' lrs decay with the top step's (format 8), with stage decay-screen's figures in its provenance.

    python reports/tuner-v2-smollm2/make_linear_tuner.py [OUT]  # default: checkpoints/pretrained/...-all-linear...

The choice is read from stage decay-screen's runs (``rise.py``), not typed in: refused unless the decaying runs' mean
final dev loss over the two meta-training tasks' three seeds is below the shipped configuration's (the rule fixed in
run.sh before the screen ran). No held-out task is read.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from checkpoints import Tuner  # noqa: E402
from rise import SCREEN_TASKS, SEEDS, screen_means  # noqa: E402

TOP_LINEAR = ROOT / "checkpoints" / "pretrained" / "smollm2-135m-v2-top-linear.safetensors"


def main() -> None:
    out = Path(sys.argv[1]) if sys.argv[1:] else TOP_LINEAR.with_name("smollm2-135m-v2-all-linear.safetensors")
    means = screen_means()
    if len(means) < 2:
        sys.exit("stage decay-screen has not finished: nothing to ship")
    if not means["decay"] < means["shipped"]:
        sys.exit(f"stage decay-screen's rule: the decaying runs' {means['decay']:.4f} is not below the shipped "
                 f"configuration's {means['shipped']:.4f}: nothing to ship")
    tuner = Tuner.from_pretrained(TOP_LINEAR).with_schedule("linear")
    tuner.provenance = {**tuner.provenance, "schedule_selection": {
        "tasks": [f"packaged:{t}" for t in SCREEN_TASKS], "forwards": 1000, "seeds": list(SEEDS),
        "dev_loss": {"constant": means["shipped"], "linear": means["decay"]},
        "report": "reports/tuner-v2-smollm2 section 22"}}
    print(f"schedule linear (mean final dev loss {means['decay']:.4f} against constant's {means['shipped']:.4f}); "
          f"wrote {tuner.save_pretrained(out)}")


if __name__ == "__main__":
    main()
