"""Data-parallel speed-up on one machine: 2 ranks (1 thread each, gloo) against 1 process (2 threads, and 1
thread), the same global batch, short MeZO runs of the embedded SmolLM2-135M, interleaved.

    python benchmarks/dp_speedup.py --out reports/distributed/speedup.json [--steps 5] [--repeats 2]

The time per step is the run's own training-loop time (metrics.json "seconds": no model loading, no
evaluation) divided by its steps. All configurations run the same steps on the same batches; 2 ranks end
with weights bit-identical to 1 rank with 1 thread (checked here); 2 threads split the matrix products'
reductions differently, so the 2-thread run differs from both in the last bits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(ranks: int, args: argparse.Namespace, out: Path, threads: int) -> dict:
    common = ["cli.py", "finetune", "--model", "smollm2-135m", "--task", args.task, "--steps", str(args.steps),
              "--batch-size", str(args.batch_size), "--lr", "1e-6", "--n-test", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if ranks == 1:
        cmd = [sys.executable, *common, "--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", *common, "--threads", "1"]
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    digest = hashlib.sha256((out / "model" / "model.safetensors").read_bytes()).hexdigest()
    return {"ranks": ranks, "threads_per_rank": threads, "s_per_step": metrics["seconds"] / args.steps,
            "wall_s": wall, "train_loss": metrics["train_loss"], "weights_sha256": digest}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--task", default="bigbench:strategyqa")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for ranks, threads in ((1, 2), (2, 1), (1, 1)):
                row = run(ranks, args, Path(tmp) / f"r{r}-{ranks}-{threads}", threads)
                rows.append(row)
                print(f"{ranks} rank(s) x {threads} thread(s): {row['s_per_step']:.3f} s/step", flush=True)

    def times(ranks, threads):
        return [r["s_per_step"] for r in rows if (r["ranks"], r["threads_per_rank"]) == (ranks, threads)]

    def digests(ranks, threads):
        return {r["weights_sha256"] for r in rows if (r["ranks"], r["threads_per_rank"]) == (ranks, threads)}

    one, two, single = times(1, 2), times(2, 1), times(1, 1)
    # one thread per rank on both sides is the bit-exact comparison; 2 threads split reductions differently
    same = digests(2, 1) == digests(1, 1) and len(digests(1, 1)) == 1
    summary = {"task": args.task, "batch_size": args.batch_size, "steps": args.steps,
               "s_per_step_1rank_2threads": one, "s_per_step_2ranks_1thread": two,
               "s_per_step_1rank_1thread": single,
               "speedup_median": statistics.median(one) / statistics.median(two),
               "speedup_over_1rank_1thread_median": statistics.median(single) / statistics.median(two),
               "identical_weights_2ranks_vs_1rank_1thread": same,
               "identical_weights_1rank_2threads_vs_1thread": digests(1, 2) == digests(1, 1),
               "load_average_after": os.getloadavg(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"speed-up of 2 ranks over 1 rank x 2 threads: x{summary['speedup_median']:.2f}; over 1 rank x 1 thread: "
          f"x{summary['speedup_over_1rank_1thread_median']:.2f}; 2 ranks bit-identical to 1 rank x 1 thread: {same}")


if __name__ == "__main__":
    main()
