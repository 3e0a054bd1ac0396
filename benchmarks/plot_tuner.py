"""Plots for a tuner report: the learned per-block scales against their initial values, and the meta-training log.

    python benchmarks/plot_tuner.py --tuner T.safetensors [--untrained U.safetensors] --out DIR

Writes ``DIR/scales.png`` (σ per block at rest, on a log axis: the trained tuner, its initial value 1 = MeZO,
and optionally an untrained random-init tuner) and, when ``T.metalog.json`` exists, ``DIR/meta.png`` (meta
loss, first-order gain over MeZO, and the σ range over meta steps), and prints a per-role table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from checkpoints import Tuner  # noqa: E402
from checkpoints.inspect import block_role  # noqa: E402
from finetune.bench import smooth  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tuner", required=True)
    p.add_argument("--untrained", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tuner = Tuner.from_pretrained(args.tuner)
    _, rest = tuner.scales_at_rest()
    roles = [block_role(b["name"]).split(".")[-2] if "." in b["name"] else b["name"] for b in tuner.blocks]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.axhline(1.0, color="grey", lw=1, label="initial value (MeZO): 1")
    if args.untrained:
        _, rest_u = Tuner.from_pretrained(args.untrained).scales_at_rest()
        ax.plot(range(len(rest_u)), rest_u.tolist(), ".", color="lightgrey", ms=4, label="untrained (random init)")
    for k, role in enumerate(sorted(set(roles))):
        idx = [i for i, r in enumerate(roles) if r == role]
        ax.plot(idx, rest[idx].tolist(), "o", ms=3.5, color=plt.cm.tab20(k % 20), label=role)
    ax.set_yscale("log")
    ax.set_xlabel("block (named_parameters order)")
    ax.set_ylabel("σ at rest (energy-normalised)")
    steps = tuner.provenance.get("steps", "?")
    ax.set_title(f"{tuner.base_model}: learned per-block scales after {steps} meta steps", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "scales.png", dpi=110)
    plt.close(fig)

    print(f"{'role':<28} {'n':>4} {'min':>7} {'median':>7} {'max':>7}")
    for role in sorted(set(roles)):
        vals = sorted(float(rest[i]) for i, r in enumerate(roles) if r == role)
        print(f"{role:<28} {len(vals):>4} {vals[0]:>7.3f} {vals[len(vals) // 2]:>7.3f} {vals[-1]:>7.3f}")

    log_file = Path(args.tuner).with_name(f"{Path(args.tuner).stem}.metalog.json")
    if log_file.exists():
        log = json.loads(log_file.read_text())
        steps = [r["step"] for r in log]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        w = max(1, len(log) // 15)
        axes[0].plot(steps, smooth([r["loss"] for r in log], w), label="loss at θ (mean of L±)")
        axes[0].plot(steps, smooth([r["meta_loss"] for r in log], w), label="meta loss L(θ′)")
        axes[0].set_title("losses (moving average)", fontsize=9)
        axes[0].legend(fontsize=7)
        axes[1].plot(steps, [r["first_order_gain"] for r in log])
        axes[1].axhline(1.0, color="grey", lw=1)
        axes[1].set_title("first-order gain over MeZO (running)", fontsize=9)
        axes[2].plot(steps, [r["sigma_min"] for r in log], label="min σ")
        axes[2].plot(steps, [r["sigma_max"] for r in log], label="max σ")
        axes[2].set_yscale("log")
        axes[2].set_title("range of σ over blocks", fontsize=9)
        axes[2].legend(fontsize=7)
        for a in axes:
            a.set_xlabel("meta step")
        fig.tight_layout()
        fig.savefig(out / "meta.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
