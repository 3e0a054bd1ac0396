"""Run this report's grids on one GPU: one `cli.py bench` per (task, method, lr, seed), several at a time.

Each job is a one-run bench in OUT/<task>/<method>-<lr>-s<seed>; `cli.py bench-merge` joins them afterwards
(run.sh merge-med). Jobs start in the order task, seed, method, lr, so a deadline that stops the queue early
leaves whole seeds of the first methods rather than scattered runs. With --deadline, no job starts once the
jobs already finished say it would not end in time (their third quartile, plus 10%), and jobs still running at
the deadline are killed and listed. Rerunning with the same OUT skips the finished jobs and reruns the killed
ones (through `bench --resume`; jobs keep no snapshots, so a killed run starts again from its first step).
OUT/queue.json records every job's exit status and seconds.

    python cli.py fetch   # the embedded model and data, once
    python reports/baselines-smollm2/gpu_queue.py --tasks med --seeds 0,1,2 --workers 14 \\
        --out reports/baselines-smollm2/gpu

Several processes share the GPU by time-slicing, so a job's seconds per forward pass here are not a speed
measurement (benchmarks/speed_memory.py is).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from finetune.trainer import work_dir  # noqa: E402  (where bench keeps an unfinished --out)

TASKS = {"med": "bigbench:multiemo/medicine_sentence_en:ambivalent=mixed",
         "fever": "bigbench:fact_checker/fever",
         "vp": "bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid"}
# lr grids: three half-decades around each method's selection on valid_parentheses (README.md, Grids)
GRIDS = {"mezo": "3e-6,1e-5,3e-5", "tuner": "3e-6,1e-5,3e-5", "sparse-mezo": "1e-5,3e-5,1e-4",
         "lozo": "3e-6,1e-5,3e-5", "bcd": "1e-4,3e-4,1e-3", "fzoo": "1e-3,3e-3,1e-2",
         "hizoo": "3e-5,1e-4,3e-4", "nspsa": "1e-5,3e-5,1e-4", "zo-adam": "1e-4,3e-4,1e-3,3e-3",
         "gv": "1e-5,3e-5,1e-4", "greedy": "3e-6,1e-5,3e-5", "ldsd": "3e-6,1e-5,3e-5", "fo": "1e-5,5e-5,2e-4"}
TUNER = "checkpoints/pretrained/smollm2-135m.safetensors"  # the shipped tuner (not meta-trained on these tasks)


def jobs(tasks: list[str], seeds: list[int], methods: list[str], out: Path,
         device: str) -> list[tuple[str, list[str]]]:
    todo = []
    for task in tasks:
        for seed in seeds:
            for m in methods:
                for lr in GRIDS[m].split(","):
                    args = ["--task", TASKS[task], "--batch-size", "8", "--eval-points", "5", "--autocast", "bf16",
                            "--threads", "1", "--device", device, "--snapshot-every", "0", "--seeds", str(seed),
                            "--methods", m, "--lr-grid", f"{m}={lr}", "--forwards", "200" if m == "fo" else "1000"]
                    if m == "tuner":
                        args += ["--tuner", TUNER]
                    name = f"{task}/{m}-{lr}-s{seed}"
                    if (out / name / "bench.json").is_file():
                        continue  # finished earlier
                    if work_dir(out / name).is_dir():
                        args.append("--resume")  # killed earlier: bench continues it
                    todo.append((name, args))
    return todo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="med", help=f"comma-separated among {', '.join(TASKS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(GRIDS), help="comma-separated; default every method")
    ap.add_argument("--workers", type=int, default=8, help="bench processes at a time (default 8)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds from now to stop (default: none)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    unknown = sorted(set(a.methods.split(",")) - set(GRIDS)) + sorted(set(a.tasks.split(",")) - set(TASKS))
    if unknown:
        print(f"gpu_queue: unknown {', '.join(unknown)}; methods are {', '.join(GRIDS)}, tasks {', '.join(TASKS)}",
              file=sys.stderr)
        return 2
    todo = jobs(a.tasks.split(","), [int(s) for s in a.seeds.split(",")], a.methods.split(","), a.out, a.device)
    (a.out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    end = start + a.deadline if a.deadline else float("inf")
    running, done, seconds = {}, [], []
    while todo or running:
        now = time.time()
        for name, (proc, began, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                done.append({"job": name, "rc": proc.returncode, "s": round(now - began, 1)})
                if proc.returncode == 0 and "/fo-" not in name:
                    seconds.append(now - began)
                del running[name]
        if now > end:
            for name, (proc, began, log) in running.items():
                os.killpg(proc.pid, signal.SIGKILL)
                log.close()
                done.append({"job": name, "rc": "killed at the deadline", "s": round(now - began, 1)})
            break
        need = 1.1 * (statistics.quantiles(seconds, n=4)[2] if len(seconds) >= 4 else max(seconds, default=0.0))
        fits = not seconds or now + need < end
        while todo and len(running) < a.workers and fits:
            name, args = todo.pop(0)
            log = open(a.out / "logs" / f"{name.replace('/', '_')}.log", "w")
            proc = subprocess.Popen([sys.executable, "cli.py", "bench", *args, "--out", str(a.out / name)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            running[name] = (proc, now, log)
        if todo and not fits and not running:
            break
        time.sleep(0.5)
    record = {"done": done, "not_started": [name for name, _ in todo], "seconds": round(time.time() - start, 1)}
    (a.out / "queue.json").write_text(json.dumps(record, indent=1))
    ok = sum(d["rc"] == 0 for d in done)
    print(f"{ok} finished, {len(done) - ok} failed or killed, {len(todo)} not started "
          f"({record['seconds']:.0f} s); see {a.out / 'queue.json'}")
    return 0 if ok == len(done) else 1


if __name__ == "__main__":
    sys.exit(main())
