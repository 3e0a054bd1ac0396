#!/usr/bin/env bash
# Reproduces reports/directions-smollm2 on a 2-core CPU machine (run from the repository root after `make fetch`).
# Wall time here: about 35 min of meta-training (one thread, beside another job) and about 1 h of fine-tuning
# runs (two single-threaded processes side by side).
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=.venv/bin/python
R=reports/directions-smollm2

# 1. Meta-train PertNN and the direction policy jointly: the same tasks, steps and settings as the shipped
#    PertNN-only tuner (reports/tuner-smollm2), plus --direction-policy. The result is committed as $R/tuner-policy.safetensors.
$PY cli.py meta-train --tasks bigbench:hyperbaton,bigbench:implicatures,bigbench:winowhy --steps 150 \
    --direction-policy --out runs/meta-policy/smollm2-135m-policy.safetensors --threads 1
cp runs/meta-policy/smollm2-135m-policy.safetensors $R/tuner-policy.safetensors
cp runs/meta-policy/smollm2-135m-policy.metalog.json $R/tuner-policy.metalog.json
$PY cli.py tuners inspect $R/tuner-policy.safetensors > $R/inspect.txt

# 2. The direction ablation grid and the GV-M2 check on held-out strategyqa:
#    9 arms x seeds 0-2, 160 forward passes per run, lr 3e-5, batch 8, 200 test examples.
EVAL="$PY benchmarks/direction_eval.py --tuner $R/tuner-policy.safetensors --task bigbench:strategyqa \
    --out $R/strategyqa --threads 1"
$EVAL --arms mezo,greedy,ldsd-released,ldsd,gv2 &
$EVAL --arms pertnn,pertnn+mean,pertnn+policy,mezo-2x &
wait
$EVAL   # nothing left to run: writes summary.md over all arms
rm -f $R/strategyqa/runs.lock

# 3. Is the online mean aligned with the gradient? Along a MeZO run, against backpropagated gradients (~10 min).
$PY benchmarks/mean_alignment.py --model smollm2-135m --task bigbench:strategyqa --steps 80 --lr 3e-5 --batch-size 8 \
    --decays 0.9,0.99 --check-every 20 --grad-examples 64 --threads 1 --out $R/mean_alignment.json

# 4. Wall-clock cost of a tuned step with the policy, relative to a MeZO step, on a quiet machine.
$PY benchmarks/speed_memory.py --tuner $R/tuner-policy.safetensors --repeats 10 --threads 2

# 5. A second held-out task, navigate: PertNN alone against PertNN + the learned policy (MeZO's runs with the
#    same configuration are in reports/tuner-smollm2/navigate).
NAV="$PY benchmarks/direction_eval.py --tuner $R/tuner-policy.safetensors --task bigbench:navigate --out $R/navigate --threads 1"
$NAV --arms pertnn &
$NAV --arms pertnn+policy &
wait
$NAV --arms pertnn,pertnn+policy   # writes the summary
rm -f $R/navigate/runs.lock
