#!/usr/bin/env bash
# Design checks for tuner v2 on SmolLM2-135M-Instruct, on the META-TRAINING tasks only (hotels, hyperbaton):
# where is the ZO signal, can a static allocation or a subspace capture it, and does it pay in real ZO runs?
# Run from the repository root. 1 thread per process: two processes share our 2 cores.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
R=reports/tuner-v2-smollm2
H='bigbench:multiemo/hotels_sentence_en:ambivalent=mixed'
G=${GRADIENTS:-/tmp/zotune-v2}  # the quarter mean gradients, about 1 GB per task: kept out of the repository
stage=${1:-all}
if [[ $stage == probe || $stage == all ]]; then  # per-block signal and Fisher curvature, 128 examples (~4 min each)
  python benchmarks/allocation_probe.py --task "$H" --examples 128 --threads 1 --out $R/probe-hotels.json \
    --save-gradients $G/hotels.pt --write-tuner 'top20%' $R/hotels-top20.safetensors
  python benchmarks/allocation_probe.py --task bigbench:hyperbaton --examples 128 --threads 1 \
    --out $R/probe-hyperbaton.json --save-gradients $G/hyperbaton.pt
fi
# Real ZO runs on hotels, 1000 forward passes, seed 0: MeZO against the top-20% allocation chosen on hotels itself
# (an oracle for this task). The benches in the report ran with a copy of the same tuner file under /tmp.
COMMON=(--task "$H" --batch-size 8 --forwards 1000 --eval-points 5 --autocast bf16 --threads 1 --seeds 0)
if [[ $stage == zo || $stage == all ]]; then
  python cli.py bench "${COMMON[@]}" --methods mezo,tuner --tuner $R/hotels-top20.safetensors \
    --lr-grid 'mezo=3e-5;tuner=6e-5,1.8e-4' --out $R/hotels-top20
  python cli.py bench "${COMMON[@]}" --methods tuner --tuner $R/hotels-top20.safetensors \
    --lr-grid 'tuner=1e-5,2e-5' --out $R/hotels-top20-low
  python cli.py bench-merge $R/hotels-top20 $R/hotels-top20-low --out $R/hotels-merged
fi
if [[ $stage == subspace || $stage == all ]]; then  # seconds each, from the saved gradients
  for t in hotels hyperbaton; do
    python benchmarks/subspace_transfer.py --source $G/$t.pt --target $G/$t.pt --split --rank 1,4,16 \
      --out $R/subspace-$t-oracle.json
  done
  python benchmarks/subspace_transfer.py --source $G/hotels.pt --target $G/hyperbaton.pt --rank 1,4,16 \
    --out $R/subspace-hotels-to-hyperbaton.json
  python benchmarks/subspace_transfer.py --source $G/hyperbaton.pt --target $G/hotels.pt --rank 1,4,16 \
    --out $R/subspace-hyperbaton-to-hotels.json
  python benchmarks/activation_subspace.py --task "$H" --gradients $G/hotels.pt --rank 1,8,32 \
    --out $R/activation-subspace-hotels.json
fi
if [[ $stage == head || $stage == all ]]; then  # ZO on the option rows of the head only (cached hidden states)
  python benchmarks/head_rows_zo.py --task "$H" --cache $G/hotels-head.pt --out $R/head-rows-hotels.json
  python benchmarks/head_rows_zo.py --task "$H" --cache $G/hotels-head.pt --whiten 1e-4 \
    --lrs 1e-5,3e-5,1e-4,3e-4,1e-3 --out $R/head-rows-hotels-whitened.json
fi
# 2026-12-04 evening: a schedule check (MeZO with a linear decay from twice its lr; it ran away), then the head
# step (--head-lr, docs/methods.md). Its lr was chosen on hotels (meta-training) with head_hybrid.py, which
# predates finetune/head.py and computes the same step in its own loop.
if [[ $stage == schedule || $stage == all ]]; then
  python cli.py bench "${COMMON[@]}" --methods mezo --lr-grid mezo=6e-5 --schedule linear --out $R/hotels-linear6e-5-s0
fi
if [[ $stage == head-hotels || $stage == all ]]; then
  python benchmarks/head_hybrid.py --task "$H" --lr 3e-5 --head-lrs 1e-3,3e-4,3e-3 --seeds 0 --out $R/head-hybrid-hotels.json
  # after the held-out runs: the grid's bottom bracketed, and the head step alone (MeZO's lr 0) at 3e-4
  python benchmarks/head_hybrid.py --task "$H" --lr 3e-5 --head-lrs 1e-4 --seeds 0 --out $R/head-hybrid-hotels.json
  python benchmarks/head_hybrid.py --task "$H" --lr 0 --head-lrs 3e-4 --seeds 0 --out $R/head-hybrid-hotels.json
fi
# Held out, at MeZO's own selected lr on each task (valid_parentheses 3e-5: reports/baselines-smollm2; medicine
# 1e-5: its GPU grid), with the head step at the lr select_head_lr.py picks from the hotels runs (3e-4); one bench
# per seed (two run side by side). Medicine's MeZO runs are redone here on the CPU, since GPU and CPU benches are
# not compared (docs/bench.md). head-vp-s0 (head lr 1e-3) ran before the hotels selection had finished; it is
# reported as such, not as the selected setting.
VP='bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid'
MED='bigbench:multiemo/medicine_sentence_en:ambivalent=mixed'
HELD=(--batch-size 8 --forwards 1000 --eval-points 5 --autocast bf16 --threads 1)
if [[ $stage == head-held-out || $stage == all ]]; then
  SEL=$(python $R/select_head_lr.py $R/head-hybrid-hotels.json)
  python cli.py bench --task "$VP" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=3e-5 --head-lr 1e-3 \
    --out $R/head-vp-s0
  for seed in 0 1 2; do
    python cli.py bench --task "$VP" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=3e-5 --head-lr $SEL \
      --out $R/head-vp-sel-s$seed
    python cli.py bench --task "$MED" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=1e-5 \
      --out $R/mezo-med-cpu-s$seed
    python cli.py bench --task "$MED" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=1e-5 --head-lr $SEL \
      --out $R/head-med-s$seed
  done
fi
# The comparisons in README.md ("The head step"): paired by seed with paired.py (the benches differ in --head-lr,
# so bench-merge does not join them), against MeZO and the best baselines of reports/baselines-smollm2.
if [[ $stage == head-compare || $stage == all ]]; then
  B=reports/baselines-smollm2/vp
  HEAD_VP=($R/head-vp-sel-s0 $R/head-vp-sel-s1 $R/head-vp-sel-s2)
  {
    echo "## valid_parentheses: MeZO (3e-5) -> MeZO + head step"
    python $R/paired.py --a $B/screen-a $B/confirm-b --a-lr 3e-5 --b "${HEAD_VP[@]}"
    echo "## valid_parentheses: FZOO (3e-3) -> MeZO + head step"
    python $R/paired.py --a $B/bracket-b $B/confirm-h --a-method fzoo --a-lr 3e-3 --b "${HEAD_VP[@]}"
    echo "## valid_parentheses: LOZO (1e-5) -> MeZO + head step"
    python $R/paired.py --a $B/bracket-h $B/confirm-j1 $B/confirm-j2 --a-method lozo --a-lr 1e-5 --b "${HEAD_VP[@]}"
    echo "## valid_parentheses: MeZO (3e-5) -> MeZO + head step at 1e-3 (run before the selection; seed 0)"
    python $R/paired.py --a $B/screen-a --a-lr 3e-5 --b $R/head-vp-s0
    echo "## medicine (CPU): MeZO (1e-5) -> MeZO + head step"
    python $R/paired.py --a $R/mezo-med-cpu-s* --b $R/head-med-s*
  } > $R/head-compare.txt
fi
# 2026-12-04, night: tuner v2 shipped (checkpoints/pretrained/smollm2-135m-v2.safetensors: an untrained bank, i.e.
# MeZO's scales, plus the head step). Its head lr is chosen by meta-train-head on hotels (meta-training), through
# the engine's own head step (finetune/head.py), replacing head_hybrid.py's loop for this choice. Two processes share
# one work folder (each takes half the grid); the last call reads the four finished benches and writes the file.
SEL=(--model smollm2-135m --tasks "$H" --lr 3e-5 --batch-size 8 --forwards 1000 --eval-points 5 --autocast bf16
     --threads 1 --seeds 0 --work $R/head-select)
if [[ $stage == v2-select || $stage == all ]]; then
  python cli.py meta-train-head "${SEL[@]}" --head-lrs 3e-4,1e-4 --out /tmp/zotune-select-a.safetensors &
  python cli.py meta-train-head "${SEL[@]}" --head-lrs 1e-3,3e-3 --out /tmp/zotune-select-b.safetensors
  wait
  python cli.py meta-train-head "${SEL[@]}" --head-lrs 1e-4,3e-4,1e-3,3e-3 \
    --out checkpoints/pretrained/smollm2-135m-v2.safetensors
fi
# The derivative checkpoint (benchmarks/make_derivative.py, as in reports/tuner-smollm2) on held-out
# valid_parentheses: MeZO at the base model's selected lr (3e-5, not re-selected) with and without the head step at
# the tuner's lr. The head arm ran as `--head-lr 3e-4`, which tests/test_tuner_v2.py shows is bit for bit what
# `--methods tuner --tuner smollm2-135m-v2.safetensors` runs.
if [[ $stage == derivative || $stage == all ]]; then
  python benchmarks/make_derivative.py --out runs/derivative-smollm2 --steps 40 --threads 2
  for seed in 0 1 2; do
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds $seed --methods mezo \
      --lr-grid mezo=3e-5 --out $R/deriv-mezo-vp-s$seed &
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds $seed --methods mezo \
      --lr-grid mezo=3e-5 --head-lr 3e-4 --out $R/deriv-head-vp-s$seed
    wait
  done
fi
# The oracle (issue 17, item 3) of the tuner's own family: the head lr that each held-out task's own dev split
# picks, seed 0, from 1e-4 / 3e-4 / 1e-3 / 3e-3 (3e-4 and valid_parentheses' 1e-3 ran above).
if [[ $stage == oracle || $stage == all ]]; then
  python cli.py bench --task "$MED" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=1e-5 --head-lr 1e-3 \
    --out $R/oracle-med-h1e-3-s0 &
  python cli.py bench --task "$VP" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=3e-5 --head-lr 1e-4 \
    --out $R/oracle-vp-h1e-4-s0
  python cli.py bench --task "$VP" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=3e-5 --head-lr 3e-3 \
    --out $R/oracle-vp-h3e-3-s0
  wait
  python cli.py bench --task "$MED" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=1e-5 --head-lr 1e-4 \
    --out $R/oracle-med-h1e-4-s0 &
  python cli.py bench --task "$MED" "${HELD[@]}" --seeds 0 --methods mezo --lr-grid mezo=1e-5 --head-lr 3e-3 \
    --out $R/oracle-med-h3e-3-s0
  wait
fi
if [[ $stage == v2-compare || $stage == all ]]; then
  B=reports/baselines-smollm2/vp
  {
    echo "## derivative checkpoint, valid_parentheses: MeZO (3e-5) -> tuner v2 (MeZO + head step 3e-4)"
    python $R/paired.py --a $R/deriv-mezo-vp-s* --b $R/deriv-head-vp-s*
    echo "## oracle, valid_parentheses (seed 0)"
    python $R/oracle.py --mezo $B/screen-a --mezo-lr 3e-5 --tuner-head-lr 3e-4 \
      --head $R/head-vp-sel-s0 $R/head-vp-s0 $R/oracle-vp-h1e-4-s0 $R/oracle-vp-h3e-3-s0
    echo "## oracle, medicine (seed 0)"
    python $R/oracle.py --mezo $R/mezo-med-cpu-s0 --tuner-head-lr 3e-4 \
      --head $R/head-med-s0 $R/oracle-med-h1e-4-s0 $R/oracle-med-h1e-3-s0 $R/oracle-med-h3e-3-s0
    if [[ -d $R/v2-med-default-s0 ]]; then  # stage v2-default, run after this one
      echo "## medicine: MeZO (1e-5) -> the shipped v2 file at its own settings (lr 3e-5, its head step), seed 0"
      python $R/paired.py --a $R/mezo-med-cpu-s0 --b $R/v2-med-default-s0 --b-method tuner
    fi
  } > $R/v2-compare.txt
fi
# The cost of a tuned step with the head step against a MeZO step (issue 17, item 6), batch 16, one run
if [[ $stage == v2-cost || $stage == all ]]; then
  python benchmarks/speed_memory.py --task "$VP" --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors \
    --repeats 10 --memory-runs 1 --threads 1 > $R/v2-cost.txt
fi
# 2026-12-05, fourth session: the memory of a tuned step with its head step (speed_memory.py now runs it in fresh
# processes beside inference and MeZO). The BIG-bench data was unavailable that session, so the task is a small
# JSONL of one-token options written here (yes/no comparisons of two numbers); 2 timing repeats only (the timing
# of v2-cost above stands), 3 processes per memory mode.
if [[ $stage == v2-memory || $stage == all ]]; then
  python -c '
import json, random
r = random.Random(0)
for i in range(60):
    a, b = r.randint(0, 99), r.randint(0, 99)
    print(json.dumps({"input": f"Question: is {a} larger than {b}? Answer (yes or no):", "options": [" yes", " no"],
                      "label": 0 if a > b else 1}))' > $R/yes-no.jsonl
  python benchmarks/speed_memory.py --task $R/yes-no.jsonl --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors \
    --repeats 2 --memory-runs 3 --threads 1 > $R/v2-memory.txt
fi
# The shipped file as a user runs it (bench --methods tuner: its own recommended lr 3e-5 and its own head step) on
# held-out medicine, seed 0, against the CPU MeZO runs above (MeZO's lr there is its own selection, 1e-5)
if [[ $stage == v2-default || $stage == all ]]; then
  python cli.py bench --task "$MED" "${HELD[@]}" --seeds 0 --methods tuner \
    --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors --lr-grid tuner=3e-5 --out $R/v2-med-default-s0
fi
# A robustness check of the choice, made after everything above (so it is reported, never used to re-choose):
# hotels seed 1 at the two best head lrs of seed 0
if [[ $stage == v2-select-s1 || $stage == all ]]; then
  # (run with --work $R/head-select-s1, whose benches later moved into head-select/.../seed-1, the layout
  # meta-train-head now writes: one bench per (task, head lr, seed))
  python cli.py meta-train-head "${SEL[@]}" --seeds 1 --head-lrs 3e-4 --out /tmp/zotune-select-s1a.safetensors &
  python cli.py meta-train-head "${SEL[@]}" --seeds 1 --head-lrs 1e-3 --out /tmp/zotune-select-s1b.safetensors
  wait
fi
# 2026-12-05: tuner v2.1, the head lr re-chosen on more meta-training data. Fixed before any of these runs
# finished, and written here first: both meta-training tasks (hotels, hyperbaton), seeds 0 and 1, the grid
# 3e-4 / 1e-3 / 3e-3 (1e-4 lost to 3e-4 on hotels seed 0), meta-train-head's own rule (lowest final dev loss,
# mean over seeds, then tasks). Why now: section 5's oracle and the seed-1 check said the one-seed choice was too
# small, so this re-choice was prompted by held-out results; the rule and grid are the meta-training ones.
# The chosen tuner ships as smollm2-135m-v2.1.safetensors and is rerun on the three held-out settings, 3 seeds.
# Result: 3e-4 again (mean dev loss 0.8583 against 1e-3's 0.8587 and 3e-3's 1.7605), so there is no v2.1: the v2
# file is rewritten with this wider selection in its provenance (same tensors, same head lr, the same behaviour),
# and the held-out runs of section 5 stand for it as they are.
# meta-train-head keeps one bench per (task, head lr, seed): hotels seed 0 and seed 1 (stages v2-select,
# v2-select-s1) are read, not rerun; the two processes each take one seed, the last call reads all twelve.
SEL21=(--model smollm2-135m --lr 3e-5 --batch-size 8 --forwards 1000 --eval-points 5 --autocast bf16 --threads 1
       --work $R/head-select --tasks "$H,bigbench:hyperbaton" --head-lrs 3e-4,1e-3,3e-3)
if [[ $stage == v21-select || $stage == all ]]; then
  python cli.py meta-train-head "${SEL21[@]}" --seeds 0 --out /tmp/zotune-select-21a.safetensors &
  python cli.py meta-train-head "${SEL21[@]}" --seeds 1 --out /tmp/zotune-select-21b.safetensors
  wait
  python cli.py meta-train-head "${SEL21[@]}" --seeds 0,1 --out /tmp/zotune-v2-wide.safetensors
  mv /tmp/zotune-v2-wide.safetensors checkpoints/pretrained/smollm2-135m-v2.safetensors
fi
# The best ZO baselines of valid_parentheses (reports/baselines-smollm2: FZOO, lowest mean test loss; LOZO, highest
# mean accuracy) on the derivative checkpoint, at their lrs selected there on the base model (as MeZO's was above),
# 3 seeds: the "no worse than the best baseline" target on the third held-out setting.
if [[ $stage == deriv-baselines || $stage == all ]]; then
  for seed in 0 1 2; do
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds $seed --methods fzoo \
      --lr-grid fzoo=3e-3 --out $R/deriv-fzoo-vp-s$seed &
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds $seed --methods lozo \
      --lr-grid lozo=1e-5 --out $R/deriv-lozo-vp-s$seed
    wait
  done
fi
# What the head step is made of (held out, 3 seeds unless the clock ran out): the head step alone (MeZO's lr 0:
# every forward pass still taken, the body never moves), and the head step on top of FZOO instead of MeZO, on the
# base model and the derivative checkpoint, and the head step alone on medicine.
if [[ $stage == head-parts || $stage == all ]]; then
  for seed in 0 1 2; do
    python cli.py bench --task "$VP" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=0 --head-lr 3e-4 \
      --out $R/headonly-vp-s$seed &
    python cli.py bench --task "$VP" "${HELD[@]}" --seeds $seed --methods fzoo --lr-grid fzoo=3e-3 --head-lr 3e-4 \
      --out $R/fzoo-head-vp-s$seed
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds $seed --methods fzoo \
      --lr-grid fzoo=3e-3 --head-lr 3e-4 --out $R/deriv-fzoo-head-vp-s$seed
    wait
  done
  for seed in 0 1 2; do
    python cli.py bench --task "$MED" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=0 --head-lr 3e-4 \
      --out $R/headonly-med-s$seed
  done
fi
if [[ $stage == v21-compare || $stage == all ]]; then
  B=reports/baselines-smollm2/vp
  {
    echo "## derivative checkpoint, valid_parentheses: FZOO (3e-3) -> tuner v2"
    python $R/paired.py --a $R/deriv-fzoo-vp-s* --a-method fzoo --b $R/deriv-head-vp-s*
    echo "## derivative checkpoint, valid_parentheses: LOZO (1e-5) -> tuner v2"
    python $R/paired.py --a $R/deriv-lozo-vp-s* --a-method lozo --b $R/deriv-head-vp-s*
    echo "## valid_parentheses: the head step alone (MeZO lr 0) -> tuner v2 (MeZO 3e-5 + head step)"
    python $R/paired.py --a $R/headonly-vp-s* --a-lr 0 --b $R/head-vp-sel-s0 $R/head-vp-sel-s1 $R/head-vp-sel-s2
    echo "## valid_parentheses: MeZO (3e-5) -> the head step alone"
    python $R/paired.py --a $B/screen-a $B/confirm-b --a-lr 3e-5 --b $R/headonly-vp-s* --b-lr 0
    echo "## valid_parentheses: FZOO (3e-3) -> the head step alone"
    python $R/paired.py --a $B/bracket-b $B/confirm-h --a-method fzoo --a-lr 3e-3 --b $R/headonly-vp-s* --b-lr 0
    echo "## valid_parentheses: LOZO (1e-5) -> the head step alone"
    python $R/paired.py --a $B/bracket-h $B/confirm-j1 $B/confirm-j2 --a-method lozo --a-lr 1e-5 --b $R/headonly-vp-s* \
      --b-lr 0
    echo "## medicine: the head step alone (MeZO lr 0) -> tuner v2"
    python $R/paired.py --a $R/headonly-med-s* --a-lr 0 --b $R/head-med-s*
    echo "## medicine: MeZO (1e-5) -> the head step alone"
    python $R/paired.py --a $R/mezo-med-cpu-s* --b $R/headonly-med-s* --b-lr 0
    echo "## valid_parentheses: FZOO (3e-3) -> FZOO + head step"
    python $R/paired.py --a $B/bracket-b $B/confirm-h --a-method fzoo --a-lr 3e-3 --b $R/fzoo-head-vp-s* --b-method fzoo
    echo "## valid_parentheses: tuner v2 -> FZOO + head step"
    python $R/paired.py --a $R/head-vp-sel-s0 $R/head-vp-sel-s1 $R/head-vp-sel-s2 --b $R/fzoo-head-vp-s* --b-method fzoo
    echo "## derivative checkpoint: FZOO (3e-3) -> FZOO + head step"
    python $R/paired.py --a $R/deriv-fzoo-vp-s* --a-method fzoo --b $R/deriv-fzoo-head-vp-s* --b-method fzoo
    echo "## derivative checkpoint: tuner v2 -> FZOO + head step"
    python $R/paired.py --a $R/deriv-head-vp-s* --b $R/deriv-fzoo-head-vp-s* --b-method fzoo
  } > $R/v21-compare.txt
fi
# 2026-12-05. The oracle on the derivative checkpoint (seed 0: the head lr its own dev split picks from 1e-4 / 3e-4 /
# 1e-3 / 3e-3; 3e-4 is deriv-head-vp-s0), and on seeds 1 and 2 of valid_parentheses at the lr its seed 0 picked.
if [[ $stage == oracle-deriv || $stage == all ]]; then
  for h in 1e-4 1e-3 3e-3; do
    python cli.py bench --model runs/derivative-smollm2 --task "$VP" "${HELD[@]}" --seeds 0 --methods mezo \
      --lr-grid mezo=3e-5 --head-lr $h --out $R/oracle-deriv-h$h-s0
  done
fi
for seed in 1 2; do
  if [[ $stage == oracle-vp-s$seed || $stage == all ]]; then
    python cli.py bench --task "$VP" "${HELD[@]}" --seeds $seed --methods mezo --lr-grid mezo=3e-5 --head-lr 3e-3 \
      --out $R/oracle-vp-h3e-3-s$seed
  fi
done
# Medicine against the best baseline of valid_parentheses, FZOO, run on the CPU in reports/baselines-smollm2 (med-cpu;
# its lr selected there on dev loss), and FZOO with the head step at that lr: `bash run.sh med-fzoo-head 3e-3 0`.
if [[ $stage == med-fzoo-head ]]; then
  python cli.py bench --task "$MED" "${HELD[@]}" --seeds $3 --methods fzoo --lr-grid fzoo=$2 --head-lr 3e-4 \
    --out $R/fzoo-head-med-s$3
fi
# 2026-12-05. The head race (--head-race, docs/methods.md): the four head lrs the meta-training grids tried, raced
# on the same passes, the model taking the rows of the lane with the lowest running (prequential) training loss.
# First on the META-TRAINING tasks, seeds 0 and 1, against the shipped v2 setting (MeZO 3e-5 + head 3e-4, the
# head-select benches; mean final dev loss 0.8583). Rule, fixed before these ran: the race goes to the held-out
# tasks if its mean final dev loss (over seeds, then tasks) is at most 0.8583 and no run diverged; else it is
# reported as tried on the meta-training tasks only. The race is one more candidate of meta-train-head (--race), in
# the same work folder as the v2 grid, so its benches sit beside the singles: one bench per (task, seed),
# `bash run.sh race-select hotels 1`. Hotels seed 0 ran first as `bench --methods mezo --head-race` (race-select/
# hotels-s0; an untrained tuner fine-tunes as MeZO bit for bit, tested), and was not run again through
# meta-train-head; race-verdict reads it with the other three and applies the rule.
RACE=1e-4,3e-4,1e-3,3e-3
RSEL=(--model smollm2-135m --lr 3e-5 --batch-size 8 --forwards 1000 --eval-points 5 --autocast bf16 --threads 1
      --work $R/head-select --race $RACE)
if [[ $stage == race-select ]]; then
  t=$([[ $2 == hotels ]] && echo "$H" || echo bigbench:hyperbaton)
  rm -f /tmp/zotune-race-$2-$3.safetensors  # a scratch tuner: only the bench matters here
  python cli.py meta-train-head "${RSEL[@]}" --head-lrs 3e-4 --tasks "$t" --seeds $3 \
    --out /tmp/zotune-race-$2-$3.safetensors
fi
if [[ $stage == race-verdict || $stage == race2-verdict ]]; then  # race2: the race of the stages below
  P=${stage%-verdict}
  python - $P <<'PY' | tee $R/$P-verdict.txt
import json, math, sys
P = sys.argv[1]
R = "reports/tuner-v2-smollm2"
slugs = {"hotels": "bigbench-multiemo-hotels_sentence_en-ambivalent-mixed", "hyperbaton": "bigbench-hyperbaton"}
def run(path):
    (r,) = json.load(open(f"{path}/bench.json"))["runs"]
    return r, (math.inf if r.get("diverged") else r["curve"][-1]["dev_loss"])
means = {"race": [], "v2": []}
for task, slug in slugs.items():
    per = {"race": [], "v2": []}
    for seed in (0, 1):
        old = (f"{R}/race-select/hotels-s0" if (task, seed) == ("hotels", 0)
               else f"{R}/head-select/{slug}/head-race-0.0001-0.0003-0.001-0.003/seed-{seed}")
        race = f"{R}/race2-select/{task}-s{seed}" if P == "race2" else old
        r, d = run(race)
        _, v = run(f"{R}/head-select/{slug}/head-lr-0.0003/seed-{seed}")
        x = r["head_race"]
        held = dict(zip(x["lrs"], x["steps_active"]))
        if "scores" in x:  # the race scored on held-back examples
            held = (f"{held}; final scores {', '.join(f'{s:.3f}' for s in x['scores'])} on {x['held_back']} "
                    "held-back examples")
        print(f"{task} seed {seed}: final dev loss, race {d:.4f} (steps each lr held the rows {held}) | v2 {v:.4f}")
        per["race"].append(d); per["v2"].append(v)
    for k in per:
        means[k].append(sum(per[k]) / 2)
race, v2 = (sum(means[k]) / 2 for k in ("race", "v2"))
print(f"mean over seeds, then tasks: race {race:.4f}, v2 {v2:.4f}")
print("verdict:", "the race goes to the held-out tasks" if race <= v2 else "the race stays on the meta-training tasks")
PY
fi
# Held out (only if the rule above passed): valid_parentheses on the base model and the derivative, and medicine,
# at MeZO's own lr on each, 3 seeds: `bash run.sh race-held-out vp 0` (vp, deriv or med; race2-held-out for the
# race of the stages below, once race2-verdict passes).
if [[ $stage == race-held-out || $stage == race2-held-out ]]; then
  P=${stage%-held-out}
  case $2 in
    vp) args=(--task "$VP" --lr-grid mezo=3e-5) ;;
    deriv) args=(--model runs/derivative-smollm2 --task "$VP" --lr-grid mezo=3e-5) ;;
    med) args=(--task "$MED" --lr-grid mezo=1e-5) ;;
  esac
  python cli.py bench "${args[@]}" "${HELD[@]}" --seeds $3 --methods mezo --head-race $RACE --out $R/$P-$2-s$3
fi
# 2026-12-05, later: the race scored on held-back examples (finetune/head.py HeadRace, as of the commit that adds
# these stages; the race above scored a running loss on the training stream and is reproduced by the commit before
# it). Every lane has a shadow that never trains on one training example in five (by a hash of the example); a
# lane's score is its shadow's mean loss on those examples. Same rule as above, fixed before these ran: on the
# META-TRAINING tasks, seeds 0 and 1, MeZO 3e-5 plus the race; it goes to the held-out tasks (stage race2-held-out)
# if its mean final dev loss (over seeds, then tasks) is at most v2's 0.8583 and no run diverged. Each run is a
# bench of its own (`bash run.sh race2-select hotels 0`), beside the old race's folders, not in head-select.
if [[ $stage == race2-select ]]; then
  t=$([[ $2 == hotels ]] && echo "$H" || echo bigbench:hyperbaton)
  python cli.py bench --task "$t" "${HELD[@]}" --seeds $3 --methods mezo --lr-grid mezo=3e-5 --head-race $RACE \
    --out $R/race2-select/$2-s$3
fi
# 2026-12-05, later: a fourth held-out setting, review sentiment (multiemo/reviews_sentence_en, `ambivalent` renamed
# `mixed`), run only if reports/task-search-smollm2's FZOO screen lets it into the held-out half (written before
# that screen finished). Arms fixed in advance, nothing chosen on reviews: MeZO at 3e-5 (valid_parentheses'
# selection, the task screen's lr), FZOO at 3e-3 (its selection on valid_parentheses and medicine), and the shipped
# tuner v2 at its own recommended step (`--methods tuner`, lr 3e-5 plus its head step); 3 seeds, one bench per
# (arm, seed): `bash run.sh reviews mezo 0` (mezo, fzoo or tuner), then `bash run.sh reviews-compare`.
# 2026-12-05, second session: a fifth held-out setting, product sentiment (multiemo/products_sentence_en, `ambivalent`
# renamed `mixed`), held out since the task split, never run with tuner v2 before this. The same three arms, fixed
# before any of these runs: MeZO at 3e-5, FZOO at 3e-3, the shipped tuner v2 at its own step; 3 seeds:
# `bash run.sh products mezo 0`, then `bash run.sh products-compare`. RESUME=1 continues a killed bench.
# 2026-12-05, third session: a fourth arm on both, fixed before its runs: LOZO at 1e-5 (its selection on
# valid_parentheses, carried as on the derivative checkpoint), 3 seeds: `bash run.sh reviews lozo 0`, then
# `bash run.sh reviews-lozo-compare` (and the same for products). Later the same session, a fifth arm on reviews only
# (CPU time), fixed before its runs: HiZOO at 1e-4 (its valid_parentheses selection), 3 seeds, then
# `bash run.sh reviews-hizoo-compare`.
# 2026-12-05, fourth session, fixed before any run, each method at its valid_parentheses selection
# (reports/baselines-smollm2), 3 seeds, the same settings: HiZOO (1e-4) on products; n-SPSA (1e-4), Sparse-MeZO
# (3e-5) and BCD (3e-4) on reviews; an arm counts only with all 3 seeds. Then `bash run.sh products-hizoo-compare`,
# `reviews-nspsa-compare`, `reviews-sparse-mezo-compare`, `reviews-bcd-compare`. NOT RUN: that session the package
# index stopped serving the bigbench sdist (docs/models-and-tasks.md), and no bench could load the tasks.
REV='bigbench:multiemo/reviews_sentence_en:ambivalent=mixed'
PRD='bigbench:multiemo/products_sentence_en:ambivalent=mixed'
if [[ $stage == reviews || $stage == products ]]; then
  case $2 in
    mezo) args=(--methods mezo --lr-grid mezo=3e-5) ;;
    fzoo) args=(--methods fzoo --lr-grid fzoo=3e-3) ;;
    lozo) args=(--methods lozo --lr-grid lozo=1e-5) ;;
    hizoo) args=(--methods hizoo --lr-grid hizoo=1e-4) ;;
    nspsa) args=(--methods nspsa --lr-grid nspsa=1e-4) ;;
    sparse-mezo) args=(--methods sparse-mezo --lr-grid sparse-mezo=3e-5) ;;
    bcd) args=(--methods bcd --lr-grid bcd=3e-4) ;;
    tuner) args=(--methods tuner --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors --lr-grid tuner=3e-5) ;;
  esac
  if [[ $stage == reviews ]]; then task=$REV tag=rev; else task=$PRD tag=prd; fi
  python cli.py bench --task "$task" "${HELD[@]}" --seeds $3 "${args[@]}" ${RESUME:+--resume} --out $R/$tag-$2-s$3
fi
for pair in reviews:rev products:prd; do
  name=${pair%:*} tag=${pair#*:}
  if [[ $stage == $name-compare || $stage == all ]]; then
    {
      echo "## $name: MeZO (3e-5) -> FZOO (3e-3)"
      python $R/paired.py --a $R/$tag-mezo-s* --b $R/$tag-fzoo-s* --b-method fzoo
      echo "## $name: MeZO (3e-5) -> tuner v2"
      python $R/paired.py --a $R/$tag-mezo-s* --b $R/$tag-tuner-s* --b-method tuner
      echo "## $name: FZOO (3e-3) -> tuner v2"
      python $R/paired.py --a $R/$tag-fzoo-s* --a-method fzoo --b $R/$tag-tuner-s* --b-method tuner
    } > $R/$name-compare.txt
  fi
  for arm in lozo:LOZO:1e-5 hizoo:HiZOO:1e-4 nspsa:n-SPSA:1e-4 sparse-mezo:Sparse-MeZO:3e-5 bcd:BCD:3e-4; do
    IFS=: read -r m label lr <<< "$arm"
    if [[ $stage == $name-$m-compare || ( $stage == all && -d $R/$tag-$m-s0 ) ]]; then
      {
        echo "## $name: MeZO (3e-5) -> $label ($lr)"
        python $R/paired.py --a $R/$tag-mezo-s* --b $R/$tag-$m-s* --b-method $m
        echo "## $name: FZOO (3e-3) -> $label ($lr)"
        python $R/paired.py --a $R/$tag-fzoo-s* --a-method fzoo --b $R/$tag-$m-s* --b-method $m
        echo "## $name: $label ($lr) -> tuner v2"
        python $R/paired.py --a $R/$tag-$m-s* --a-method $m --b $R/$tag-tuner-s* --b-method tuner
      } > $R/$name-$m-compare.txt
    fi
  done
done
# 2026-12-05, second session: which ZO step should go with the head step? Section 6 found FZOO + head step ahead of
# tuner v2 on the derivative checkpoint and behind it on the base model, both held out. Asked here on the
# META-TRAINING tasks only, with the rule fixed before these runs: FZOO (3e-3) + head step (3e-4) on hotels and
# hyperbaton, seeds 0 and 1, against tuner v2's benches of the v21-select stage (MeZO 3e-5 + head step 3e-4), lowest
# final dev loss averaged over seeds, then tasks (a diverged run counts as infinite). FZOO's 3e-3 is the baselines
# report's selection, made on held-out tasks' dev loss, so this is a screen, not a selection: if FZOO + head wins
# it, the next step is an FZOO lr grid (1e-3, 3e-3, 1e-2) on these two tasks, and only its winner could ship.
# `bash run.sh zo-select hotels 0` (hotels or hyperbaton, seed 0 or 1), then `bash run.sh zo-verdict`.
if [[ $stage == zo-select ]]; then
  t=$([[ $2 == hotels ]] && echo "$H" || echo bigbench:hyperbaton)
  python cli.py bench --task "$t" "${HELD[@]}" --seeds $3 --methods fzoo --lr-grid fzoo=3e-3 --head-lr 3e-4 \
    ${RESUME:+--resume} --out $R/zo-select/fzoo-head-$2-s$3
fi
if [[ $stage == zo-verdict ]]; then
  python - <<'PY' | tee $R/zo-verdict.txt
import json, math
R = "reports/tuner-v2-smollm2"
slugs = {"hotels": "bigbench-multiemo-hotels_sentence_en-ambivalent-mixed", "hyperbaton": "bigbench-hyperbaton"}
def dev(path):
    (r,) = json.load(open(f"{path}/bench.json"))["runs"]
    return math.inf if r.get("diverged") else r["curve"][-1]["dev_loss"]
means = {"fzoo + head": [], "v2": []}
for task, slug in slugs.items():
    f = [dev(f"{R}/zo-select/fzoo-head-{task}-s{seed}") for seed in (0, 1)]
    v = [dev(f"{R}/head-select/{slug}/head-lr-0.0003/seed-{seed}") for seed in (0, 1)]
    for seed in (0, 1):
        print(f"{task} seed {seed}: final dev loss, FZOO + head {f[seed]:.4f} | v2 (MeZO + head) {v[seed]:.4f}")
    means["fzoo + head"].append(sum(f) / 2); means["v2"].append(sum(v) / 2)
a, b = (sum(means[k]) / 2 for k in ("fzoo + head", "v2"))
print(f"mean over seeds, then tasks: FZOO + head {a:.4f}, v2 {b:.4f}")
print("verdict:", "FZOO + head step goes on to an lr grid" if a < b else "the head step stays with MeZO's step")
PY
fi
# The comparisons of 2026-12-05 (README section 7), paired by seed with paired.py. med-fzoo-compare: medicine's CPU
# FZOO runs (reports/baselines-smollm2, med-cpu; lr 3e-3 selected there on dev loss) against MeZO and tuner v2.
# race-compare: the race's held-out runs against tuner v2, MeZO and FZOO on each setting.
if [[ $stage == med-fzoo-compare || $stage == all ]]; then
  M=reports/baselines-smollm2/med-cpu
  {
    echo "## medicine: MeZO (1e-5) -> FZOO (3e-3)"
    python $R/paired.py --a $R/mezo-med-cpu-s* --b $M/fzoo-3e-3-s* --b-method fzoo
    echo "## medicine: FZOO (3e-3) -> tuner v2 (MeZO 1e-5 + head step 3e-4)"
    python $R/paired.py --a $M/fzoo-3e-3-s* --a-method fzoo --b $R/head-med-s*
    if compgen -G "$R/fzoo-head-med-s*" > /dev/null; then  # stage med-fzoo-head
      echo "## medicine: FZOO (3e-3) -> FZOO + head step (3e-4)"
      python $R/paired.py --a $M/fzoo-3e-3-s* --a-method fzoo --b $R/fzoo-head-med-s* --b-method fzoo
      echo "## medicine: tuner v2 -> FZOO + head step"
      python $R/paired.py --a $R/head-med-s* --b $R/fzoo-head-med-s* --b-method fzoo
    fi
  } > $R/med-fzoo-compare.txt
fi
if [[ $stage == race-compare || $stage == race2-compare || $stage == all ]]; then
  B=reports/baselines-smollm2/vp
  M=reports/baselines-smollm2/med-cpu
  P=$([[ $stage == race2-compare ]] && echo race2 || echo race)  # race2: the race scored on held-back examples
  {
    echo "## valid_parentheses: tuner v2 (MeZO 3e-5 + head step 3e-4) -> the race"
    python $R/paired.py --a $R/head-vp-sel-s0 $R/head-vp-sel-s1 $R/head-vp-sel-s2 --b $R/$P-vp-s*
    echo "## valid_parentheses: MeZO (3e-5) -> the race"
    python $R/paired.py --a $B/screen-a $B/confirm-b --a-lr 3e-5 --b $R/$P-vp-s*
    echo "## valid_parentheses: FZOO (3e-3) -> the race"
    python $R/paired.py --a $B/bracket-b $B/confirm-h --a-method fzoo --a-lr 3e-3 --b $R/$P-vp-s*
    echo "## derivative checkpoint: tuner v2 -> the race"
    python $R/paired.py --a $R/deriv-head-vp-s* --b $R/$P-deriv-s*
    echo "## derivative checkpoint: MeZO (3e-5) -> the race"
    python $R/paired.py --a $R/deriv-mezo-vp-s* --b $R/$P-deriv-s*
    echo "## derivative checkpoint: FZOO (3e-3) -> the race"
    python $R/paired.py --a $R/deriv-fzoo-vp-s* --a-method fzoo --b $R/$P-deriv-s*
    echo "## medicine: tuner v2 -> the race"
    python $R/paired.py --a $R/head-med-s* --b $R/$P-med-s*
    echo "## medicine: MeZO (1e-5) -> the race"
    python $R/paired.py --a $R/mezo-med-cpu-s* --b $R/$P-med-s*
    echo "## medicine: FZOO (3e-3) -> the race"
    python $R/paired.py --a $M/fzoo-3e-3-s* --a-method fzoo --b $R/$P-med-s*
  } > $R/$P-compare.txt
fi
# The oracle on the derivative checkpoint (stage oracle-deriv above), against the tuner's 3e-4, seed 0.
if [[ $stage == oracle-deriv-compare || $stage == all ]]; then
  python $R/oracle.py --mezo $R/deriv-mezo-vp-s0 --tuner-head-lr 3e-4 \
    --head $R/deriv-head-vp-s0 $R/oracle-deriv-h1e-4-s0 $R/oracle-deriv-h1e-3-s0 $R/oracle-deriv-h3e-3-s0 \
    > $R/oracle-deriv.txt
fi
# Item 2's last check: the signal-to-noise ratio of the meta-gradient for per-block scales, today's one-draw closed
# form against the expected-change objective (meta/objective.py), on the meta-training tasks (side by side).
if [[ $stage == snr || $stage == all ]]; then
  mkdir -p $R/metagrad-snr
  python benchmarks/metagrad_snr.py --task "$H" --threads 1 --out $R/metagrad-snr/hotels.json &
  a=$!
  python benchmarks/metagrad_snr.py --task bigbench:hyperbaton --threads 1 --out $R/metagrad-snr/hyperbaton.json &
  b=$!
  wait $a
  wait $b
fi
# The same comparison without the full objective (it failed above), with many more batch pairs, to settle whether
# the first-order part beats today's. Rule, fixed before these runs: on each task, the first-order part is better
# (worse) than today's if the paired 95% interval of its SNR per second minus today's, allocation part, lies above
# (below) zero; otherwise not established.
if [[ $stage == snr-long || $stage == all ]]; then
  mkdir -p $R/metagrad-snr
  python benchmarks/metagrad_snr.py --task "$H" --pairs 80 --draws 2 --probes 0 --threads 1 \
    --out $R/metagrad-snr/hotels-long.json &
  a=$!
  python benchmarks/metagrad_snr.py --task bigbench:hyperbaton --pairs 120 --draws 2 --probes 0 --threads 1 \
    --out $R/metagrad-snr/hyperbaton-long.json &
  b=$!
  wait $a
  wait $b
fi
if [[ $stage == snr-table || $stage == all ]]; then
  python benchmarks/metagrad_snr.py table $R/metagrad-snr/hotels.json $R/metagrad-snr/hyperbaton.json \
    > $R/metagrad-snr/summary.md
  python benchmarks/metagrad_snr.py table $R/metagrad-snr/hotels-long.json $R/metagrad-snr/hyperbaton-long.json \
    > $R/metagrad-snr/summary-long.md
fi
# 2026-12-06 (third session), written 09:47 before it runs: the head lr chosen again, on the META-TRAINING side of
# the packaged task set (word-class, article, noun-number: the three that pass issue 13's bar there), since the
# BIG-bench tasks the shipped tuner was chosen on can no longer be fetched. meta-train-head's own rule, seed 0, the
# grid 3e-4 / 1e-3 / 3e-3 at MeZO's 3e-5, 1000 passes, fp32 (this CPU emulates bf16). One process per (task, head
# lr) so that two share the cores; the last call reads the nine benches and writes the tuner. If it picks a head
# lr other than 3e-4, seed 0 of its held-out runs is the oracle runs of the packaged-tasks report (the same runs:
# MeZO 3e-5 plus the head step at that lr), and seeds 1-2 are to come.
PSEL=(--model smollm2-135m --lr 3e-5 --batch-size 8 --forwards 1000 --eval-points 5 --threads 1 --seeds 0
      --work $R/head-select-packaged)
PTASKS=packaged:word-class,packaged:article  # noun-number dropped at 09:55, before its benches ran (time)
if [[ $stage == packaged-select || $stage == all ]]; then
  for t in ${PTASKS//,/ }; do
    python cli.py meta-train-head "${PSEL[@]}" --tasks $t --head-lrs 3e-4 --out /tmp/zotune-psel-$t-a.safetensors &
    python cli.py meta-train-head "${PSEL[@]}" --tasks $t --head-lrs 1e-3 --out /tmp/zotune-psel-$t-b.safetensors
    wait
  done
  # 11:20, before the 3e-3 benches ran: the grid is cut to 3e-4 and 1e-3 for time (packaged-tasks run.sh)
  python cli.py meta-train-head "${PSEL[@]}" --tasks $PTASKS --head-lrs 3e-4,1e-3 \
    --out $R/smollm2-135m-v2-packaged.safetensors
fi
# 2026-12-06 (fifth session), written 15:42 before it runs: how much could an exact step on the top block (the last
# layer's MLP and the final norm's gain, whose gradient at the scored position is a closed form of what a forward
# pass records there) add to the head step? benchmarks/top_block_probe.py on frozen features, the five META-TRAINING
# tasks of the packaged set, seed 0, 500 steps of batch 8 (tuner v2's at 1000 passes), a grid of head and extra lrs,
# picks by final dev loss. The rule, fixed now: the step is worth building into the engine if, on at least 3 of the
# 5 tasks, the better of head+down and head+mlp (by dev loss) has a lower dev loss than the head alone and a dev
# accuracy at least 3 points higher. One process beside the two runs of the packaged-tasks report.
if [[ $stage == top-block || $stage == all ]]; then
  for t in word-class article noun-number rhymes subjectivity; do
    python benchmarks/top_block_probe.py --task packaged:$t --threads 1 --out $R/top-block/$t.json
  done
fi
# 16:17, written before it runs: the probe passed its rule on word-class, article and noun-number (3 of 5; section
# 18), so the step was built (`finetune --top-lr`, finetune/top.py). A screen in real ZO runs, META-TRAINING tasks,
# seed 0: tuner v2 plus the top-block step at 1e-4 and 3e-4 (the probe's picks for the whole MLP, with Adam), on
# word-class and noun-number (the two with headroom: tuner v2 ends word-class at 0.555 in its head-lr bench, and
# article at 0.955); tuner v2 alone on noun-number (word-class's is the head-lr bench of stage packaged-select, the
# same run: its first step's losses are checked against the new runs'). The rule, fixed now: the top lr with the
# lower mean final dev loss over the two tasks goes to the held-out tasks (3 seeds, a later session) if it beats
# tuner v2's final dev loss on both; otherwise the step is not carried further at these lrs.
TS=(--batch-size 8 --threads 1 --eval-every 250 --no-save-model --method tuner --steps 500
    --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors --lr 3e-5)
if [[ $stage == top-screen || $stage == all ]]; then
  python cli.py finetune --task packaged:noun-number "${TS[@]}" --out $R/top-screen/noun-number/tuner-v2-s0
  for t in word-class noun-number; do
    for lr in 1e-4 3e-4; do
      python cli.py finetune --task packaged:$t "${TS[@]}" --top-lr $lr --out $R/top-screen/$t/tuner-v2-top-$lr-s0
    done
  done
fi
# The top-block step's gradient on SmolLM2 against backpropagation through the whole model (four word-class
# training examples; run once the step was built, before the screen's results).
if [[ $stage == top-check || $stage == all ]]; then
  python benchmarks/top_step_check.py > $R/top-block/check.txt
fi
if [[ $stage == top-screen || $stage == all ]]; then
  python $R/top_screen.py > $R/top-screen/screen.md
fi
# 17:42, written before it runs: the held-out runs the screen's rule sends top lr 3e-4 to (tuner v2 plus the step,
# against tuner v2 and FZOO, whose runs are the packaged-tasks report's) start with word polarity's seed 0 on the
# core the derivative's runs leave free; the other tasks and seeds are for a later session.
# 2026-12-06 (sixth session), 18:18, written before it runs: the other eight runs of stage top-held-out (word
# polarity's seeds 1-2, then city-country's and city-continent's seeds 0-2, in that order), two at a time, with the
# derivative's seed 2 of the packaged-tasks report (its run.sh) after word polarity's; nothing else changes.
if [[ $stage == top-held-out || $stage == all ]]; then
  for t in vader-polarity city-country city-continent; do
    for seed in 0 1 2; do
      python cli.py finetune --task packaged:$t "${TS[@]}" --top-lr 3e-4 --seed $seed \
        --out $R/top-held-out/$t/tuner-v2-top-3e-4-s$seed
    done
  done
fi
# 18:47, written before it runs: the third shipped file, tuner v2 plus the top lr the screen's rule chose (3e-4, read
# from the screen's runs; no held-out task read), and that file run on the derivative checkpoint of the packaged-tasks
# report (word polarity on runs/derivative-python-docs, made by benchmarks/make_derivative.py --text-task python-docs;
# its MeZO, tuner v2 and FZOO runs are that report's), three seeds, after the held-out runs above and before GV's
# seeds of the packaged-tasks report.
if [[ $stage == top-ship || $stage == all ]]; then
  python $R/make_top_tuner.py
fi
if [[ $stage == top-derivative || $stage == all ]]; then
  TT=(--batch-size 8 --threads 1 --eval-every 250 --no-save-model --method tuner --steps 500
      --tuner checkpoints/pretrained/smollm2-135m-v2-top.safetensors --lr 3e-5)
  for seed in 0 1 2; do
    python cli.py finetune --task packaged:vader-polarity --model runs/derivative-python-docs "${TT[@]}" --seed $seed \
      --out $R/top-held-out/vader-polarity-derivative/tuner-v2-top-s$seed
  done
fi
if [[ $stage == top-held-out || $stage == all ]]; then
  python $R/top_held_out.py > $R/top-held-out/compare.md
fi
# 18:49, written before it runs (a first start a minute earlier, before this was written, was killed and its output
# dropped): item 6's cost of the shipped v2-top file, a tuned step with its head step and its top-block step against a
# MeZO step (speed_memory.py now takes a tuner's top-block step), SmolLM2-135M, batch 16, on a META-TRAINING task of
# the packaged set, 10 interleaved repeats and 3 processes per memory mode, beside the two runs above.
if [[ $stage == top-cost || $stage == all ]]; then
  python benchmarks/speed_memory.py --task packaged:word-class \
    --tuner checkpoints/pretrained/smollm2-135m-v2-top.safetensors --threads 1 --repeats 10 --memory-runs 3 \
    > $R/top-held-out/top-cost.txt
fi
# 19:00, written before it runs: top-cost measured a memory ratio of 1.112 to inference (target 1.1), about 75 MB over
# MeZO's fine-tuning; Adam's update of the head and top-block steps now works in place (the same values, bit for bit),
# and the same measurement runs again (the first's file is kept).
if [[ $stage == top-cost || $stage == all ]]; then
  python benchmarks/speed_memory.py --task packaged:word-class \
    --tuner checkpoints/pretrained/smollm2-135m-v2-top.safetensors --threads 1 --repeats 10 --memory-runs 3 \
    > $R/top-held-out/top-cost-in-place.txt
fi
# 19:16, written before it runs: the fourth held-out packaged task, city-hemisphere (tuner v2, MeZO and FZOO have
# three seeds there in the packaged-tasks report), with --top-lr 3e-4 as in stage top-held-out, after stage
# top-derivative and before GV's seeds of the packaged-tasks report.
if [[ $stage == top-held-out || $stage == all ]]; then
  for seed in 0 1 2; do
    python cli.py finetune --task packaged:city-hemisphere "${TS[@]}" --top-lr 3e-4 --seed $seed \
      --out $R/top-held-out/city-hemisphere/tuner-v2-top-3e-4-s$seed
  done
  python $R/top_held_out.py > $R/top-held-out/compare.md
fi
# 2026-12-06 (seventh session), 21:20, written before it runs: on city-continent the top-block step at a constant
# 3e-4 ended below tuner v2 (seeds 0-1), its dev and test losses lowest at mid-run and rising after (section 19); the
# screen above saw the same shape in its other arm (1e-4 on word-class blew up). A decaying top lr is the plain
# remedy, and is chosen here on the META-TRAINING tasks alone: `--top-schedule linear` (the top step's lr falls to 0
# over the run; the ZO method's lr stays constant) at 3e-4 and 1e-3, on word-class and noun-number, seed 0, as the
# screen above (same TS). The rule, fixed now: of the four top arms (constant 1e-4 and 3e-4 from the screen above,
# linear 3e-4 and 1e-3), the one with the lowest mean final dev loss over the two tasks; if it is a linear arm that
# beats tuner v2's final dev loss on both tasks, it runs on the five held-out settings of stage top-held-out (three
# seeds each, a later stage written before it runs); if it is a constant arm, the decay is not carried further.
if [[ $stage == top-decay-screen || $stage == all ]]; then
  for lr in 3e-4 1e-3; do
    for t in word-class noun-number; do
      python cli.py finetune --task packaged:$t "${TS[@]}" --top-lr $lr --top-schedule linear \
        --out $R/top-screen/$t/tuner-v2-top-$lr-linear-s0
    done
  done
fi
if [[ $stage == top-decay-screen || $stage == all ]]; then
  python $R/top_screen.py > $R/top-screen/screen.md
fi
# 21:47, written before it runs: stage top-decay-screen's rule chose `+ top 1e-3 linear` (mean final dev loss 0.4558
# of the four top arms' 0.4558-2.3354; below tuner v2's on both tasks; top-screen/screen.md), so it runs on the five
# held-out settings of stage top-held-out: tuner v2 plus `--top-lr 1e-3 --top-schedule linear`, three seeds each (the
# same TS; on the derivative, word polarity on runs/derivative-python-docs, rebuilt here first by the packaged-tasks
# report's own command), against the committed runs of tuner v2, the constant step, FZOO and MeZO. Order:
# city-continent, city-country, word polarity, city-hemisphere, then the derivative; two runs at a time (the
# derivative checkpoint is built first, on one core, beside city-continent's seed 0 on the other). This
# session's CPU is not the earlier sessions' (its forward passes differ from theirs by about 1e-7, relative): the new
# runs share split, batches and noise seeds with the committed ones, not their bits.
if [[ $stage == top-decay-held-out || $stage == all ]]; then
  for t in city-continent city-country vader-polarity city-hemisphere; do
    for seed in 0 1 2; do
      python cli.py finetune --task packaged:$t "${TS[@]}" --top-lr 1e-3 --top-schedule linear --seed $seed \
        --out $R/top-held-out/$t/tuner-v2-top-1e-3-linear-s$seed
    done
  done
  [[ -d runs/derivative-python-docs ]] || python benchmarks/make_derivative.py --out runs/derivative-python-docs \
    --text-task python-docs --steps 40 --threads 1
  for seed in 0 1 2; do
    python cli.py finetune --task packaged:vader-polarity --model runs/derivative-python-docs "${TS[@]}" \
      --top-lr 1e-3 --top-schedule linear --seed $seed \
      --out $R/top-held-out/vader-polarity-derivative/tuner-v2-top-1e-3-linear-s$seed
  done
  python $R/top_held_out.py > $R/top-held-out/compare.md
fi
# 22:20, written after city-continent's three seeds of stage top-decay-held-out and before the other settings' end:
# the fourth shipped file, tuner v2 plus the top lr and linear schedule section 20's screen chose (1e-3 linear, read
# from the screen's runs; no held-out task read), format 6. The rule, fixed now, for which file the README
# recommends: this one replaces tuner v2 as the recommended tuner if, on each of the five held-out settings, its mean
# accuracy is no lower than tuner v2's and its mean test loss is lower (paired over the three seeds); otherwise
# tuner v2 stays the recommended file and this one ships beside v2-top.
if [[ $stage == top-ship || $stage == all ]]; then
  python $R/make_top_tuner.py --decay
fi
# 00:10 on 2026-12-07, written before it runs (it starts once `make demo`, timed, has ended): meta-train-top, the
# command that makes such a file, run on SmolLM2 for the first time (so far, on tiny models only),
# on the screen's two META-TRAINING tasks and settings (batch 8,
# 1000 passes, evaluations at 250 and 500 steps, lr 3e-5, seed 0), with the grid widened above the screen's choice:
# 0 (tuner v2), 3e-4, 1e-3 and 3e-3, all linear (1e-3 was the top of the screen's grid). Two processes share the
# benches' folder (each half of the grid on both tasks), then one command with the whole grid reads the eight finished
# benches and writes the file. Checks, fixed now: its runs of 0, 3e-4 and 1e-3 must end with the screen's final dev
# losses (within 1e-4 relative: the same computation); the rule is meta-train-top's own (lowest mean final dev
# loss). If it chooses 1e-3, its file must hold the shipped v2-top-linear file's tensors and lr; if it chooses 3e-3,
# the shipped file stays as it is (chosen on a grid that stopped at 1e-3), and 3e-3 is a candidate for the held-out
# settings in a later stage, written here before it runs; no held-out task is read in this stage.
TOPCLI=(--tuner checkpoints/pretrained/smollm2-135m-v2.safetensors --tasks packaged:word-class,packaged:noun-number
        --top-schedule linear --lr 3e-5 --batch-size 8 --eval-points 2 --forwards 1000 --threads 1
        --work $R/top-cli)
if [[ $stage == top-cli || $stage == all ]]; then
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 0,1e-3 --out /tmp/zotune-top-cli-a.safetensors &
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 3e-4,3e-3 --out /tmp/zotune-top-cli-b.safetensors
  wait
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 0,3e-4,1e-3,3e-3 --out $R/top-cli/v2-top-linear.safetensors
fi
# 00:25 on 2026-12-07, written before it runs (it starts once stage top-cli has ended): the recommended file's runs
# jump in their first steps (make demo: the first 10 steps' mean training loss 2.03 against MeZO's 0.79; the first five
# steps' mean 0.91-2.36 on the held-out runs' seed 0), which reads as the top-block step's first Adam steps at the full
# 1e-3. A warm-up is the usual answer: `--top-schedule linear-warmup` (the lr rises over the first tenth of the run,
# then falls linearly to 0; new today). Screened like stage top-cli, on the same two META-TRAINING tasks, seed 0, by
# meta-train-top over 0 (reused), 1e-3 and 3e-3. The rule, fixed now: its chosen arm goes to the held-out settings
# (stage top-warmup-held-out, below) only if its mean final dev loss is lower than that of the best linear arm of stage
# top-cli; else the warm-up is not carried further here. Reported either way, with the early training losses.
# (The --top-schedule given here overrides TOPCLI's: argparse takes the last.)
if [[ $stage == top-warmup-screen || $stage == all ]]; then
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 1e-3 --top-schedule linear-warmup \
    --out /tmp/zotune-top-warm-a.safetensors &
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 3e-3 --top-schedule linear-warmup \
    --out /tmp/zotune-top-warm-b.safetensors
  wait
  python cli.py meta-train-top "${TOPCLI[@]}" --top-lrs 0,1e-3,3e-3 --top-schedule linear-warmup \
    --out $R/top-cli/v2-top-linear-warmup.safetensors
fi
# 00:26 on 2026-12-07, written before stage top-warmup-screen has run; runs only if that stage's rule passes: the file
# it wrote (tuner v2 plus the warm-up step at its chosen lr) on the five held-out settings of stage top-decay-held-out,
# three seeds each, paired with the committed runs there (same split, batches and noise seeds). Seed-major order (all
# five settings' seed 0 first), two lanes taking every other job, so that a session that ends early leaves whole
# seeds. The rule, fixed now, for which file the README recommends: this one replaces v2-top-linear if, on each of
# the five settings, its mean accuracy over the three seeds is no lower and its mean test loss lower than
# v2-top-linear's; otherwise v2-top-linear stays. No decision on fewer than three seeds.
WARM=$R/top-cli/v2-top-linear-warmup.safetensors
warm_run() {  # setting seed; a finished run is skipped, so that the stage can be run again after a kill
  local task=$1 name=$1 model=()
  if [[ $1 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  local out=$R/top-held-out/$name/tuner-v2-top-linear-warmup-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" "${TS[@]}" --tuner $WARM \
    --seed $2 --out $out
}
if [[ $stage == top-warmup-held-out || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do warm_run ${jobs[i]}; done) &
  done
  wait
fi
# 01:25: stage top-warmup-screen's rule stopped the warm-up (0.5118 against 0.4558; top-cli/screen.md), so stage
# top-warmup-held-out did not run; stage top-seeds ran instead (section 21).
# 01:17 on 2026-12-07, written before stage top-warmup-screen has ended (its word-class runs were read, not its noun-
# number ones): if that stage's rule stops the warm-up, this stage widens stage top-cli's choice to seeds 1 and 2
# (section 20's screen and stage top-cli had seed 0 only), over 0, 3e-4 and 1e-3 linear (3e-3, behind both of those on
# seed 0 by 0.1 in mean dev loss, is left out), seed 1 first, two runs at a time (each lane one task; the later
# --tasks overrides TOPCLI's); meta-train-top reuses the seed-0 benches. The rule: the command's own (lowest mean
# final dev loss over seeds, then tasks). If it chooses 1e-3 on three seeds, the shipped file's choice stands on three
# seeds; if not, the shipped file stays as it is this session and the other choice is reported as a candidate for the
# held-out settings. If the warm-up goes to the held-out settings instead, this stage waits for a later session.
if [[ $stage == top-seeds || $stage == all ]]; then
  for seed in 1 2; do
    python cli.py meta-train-top "${TOPCLI[@]}" --seeds $seed --top-lrs 0,3e-4,1e-3 --tasks packaged:word-class \
      --out /tmp/zotune-top-s$seed-a.safetensors &
    python cli.py meta-train-top "${TOPCLI[@]}" --seeds $seed --top-lrs 0,3e-4,1e-3 --tasks packaged:noun-number \
      --out /tmp/zotune-top-s$seed-b.safetensors
    wait
  done
  python cli.py meta-train-top "${TOPCLI[@]}" --seeds 0,1,2 --top-lrs 0,3e-4,1e-3 \
    --out $R/top-cli/v2-top-linear-3seeds.safetensors
fi
# 02:58 on 2026-12-07, written before it runs. Which step drives the late rise of the training loss (section 21), and
# does letting the ZO and head lrs decay with the top step's remove it? On the META-TRAINING task word-class only,
# with stage top-cli's settings (a bench of method tuner, tuner v2 at lr 3e-5 plus the top step 1e-3 linear: the
# shipped file's configuration), paired with the runs of stage top-seeds (same split, batches and noise seeds). Arms:
#   decay    --schedule linear: the ZO lr and the head lr decay linearly to 0 as well (the top step's as shipped);
#   no-zo    --lr-grid tuner=0: the ZO step moves nothing (its forward passes still feed the head and top steps);
#   no-head  --head-lr 0: no head step.
# Seed 1 (its rise: lowest 50-step mean 0.66 -> last 1.11) for all three, then decay on seed 2. Read: an arm whose
# rise (last 50-step mean minus the lowest) is below 0.1 on seed 1 takes away what drives it. Two runs at a time.
RISE=(--task packaged:word-class --methods tuner --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors
      --lr-grid tuner=3e-5 --top-lr 1e-3 --top-schedule linear --batch-size 8 --forwards 1000 --eval-points 2
      --threads 1)
if [[ $stage == rise || $stage == all ]]; then
  python cli.py bench "${RISE[@]}" --seeds 1 --schedule linear --out $R/rise/decay-s1 &
  python cli.py bench "${RISE[@]}" --seeds 1 --lr-grid tuner=0 --out $R/rise/no-zo-s1
  wait
  python cli.py bench "${RISE[@]}" --seeds 1 --head-lr 0 --out $R/rise/no-head-s1 &
  python cli.py bench "${RISE[@]}" --seeds 2 --schedule linear --out $R/rise/decay-s2
  wait
fi
# 03:13 on 2026-12-07, written before it runs (it starts once stage rise has ended), after reading stage rise's first
# two runs (seed 1): with the ZO and head lrs decaying (decay) word-class seed 1 ends at dev loss 0.558 and test
# accuracy 0.820 with no rise, and with the ZO step off (no-zo) at 0.561 / 0.840, also with none, against the shipped
# configuration's 0.952 / 0.415 (rise +0.45): the ZO step at its constant lr drives the rise. Stage decay-screen runs
# the decay arm on the rest of the six meta-training runs of stage top-seeds (word-class seed 0, noun-number seeds
# 0-2), two at a time. The rule, fixed now: decay goes to the held-out settings (stage decay-held-out) if its mean
# final dev loss over the six runs (means over seeds, then tasks) is below the shipped configuration's, 0.5622
# (top-cli/screen.md); else it stops here. No held-out task is read in this stage.
if [[ $stage == decay-screen || $stage == all ]]; then
  python cli.py bench "${RISE[@]}" --seeds 0 --schedule linear --out $R/rise/decay-s0 &
  python cli.py bench "${RISE[@]}" --seeds 1 --schedule linear --task packaged:noun-number \
    --out $R/rise/decay-noun-number-s1
  wait
  python cli.py bench "${RISE[@]}" --seeds 0 --schedule linear --task packaged:noun-number \
    --out $R/rise/decay-noun-number-s0 &
  python cli.py bench "${RISE[@]}" --seeds 2 --schedule linear --task packaged:noun-number \
    --out $R/rise/decay-noun-number-s2
  wait
fi
# Stage decay-held-out, fixed now, runs only if stage decay-screen's rule passes: the shipped configuration with
# `--schedule linear` (the ZO and head lrs decay linearly to 0 as well) on the five held-out settings of stage
# top-decay-held-out, three seeds each, paired with the committed runs there (same split, batches and noise seeds).
# Seed-major order (all five settings' seed 0 first), two lanes taking every other job, so that a session that ends
# early leaves whole seeds. The rule, fixed now, for what the README recommends: this configuration replaces the
# shipped one if, on each of the five settings, its mean accuracy over the three seeds is no lower and its mean test
# loss lower than the shipped configuration's (tuner-v2-top-1e-3-linear); otherwise the shipped one stays. No decision
# on fewer than three seeds.
decay_run() {  # setting seed; a finished run is skipped, so that the stage can be run again after a kill
  local task=$1 name=$1 model=()
  if [[ $1 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  local out=$R/top-held-out/$name/tuner-v2-top-1e-3-linear-decay-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" "${TS[@]}" \
    --top-lr 1e-3 --top-schedule linear --schedule linear --seed $2 --out $out
}
if [[ $stage == decay-held-out || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do decay_run ${jobs[i]}; done) &
  done
  wait
fi
# 03:53 on 2026-12-07, written after it ran (at 03:52, once stage decay-screen's rule had passed; the file is a function
# of the committed benches, and test_tuner_v2 checks that this recipe writes it again): the fifth shipped file,
# smollm2-135m-v2-all-linear, the v2-top-linear file that also recommends the linear schedule for the run (format 8),
# with stage decay-screen's figures in its provenance. Which file the README recommends follows stage decay-held-out's
# rule, above.
if [[ $stage == linear-ship || $stage == all ]]; then
  python $R/make_linear_tuner.py
fi
# 04:00 on 2026-12-07, written before it runs (it starts once stage decay-held-out has ended): does the ZO step add
# anything beside the two exact steps once every lr decays? Stage rise's no-zo arm (ZO lr 0: the head and top steps
# only, read off the same forward passes) ended level with the decaying configuration on word-class seed 1 (dev loss
# 0.5608 against 0.5577). Stage no-zo-screen runs it, with every lr decaying as in stage decay-screen, on the other five
# META-TRAINING runs (word-class seeds 0 and 2, noun-number seeds 0-2), two at a time, seed 0 first. Read, fixed now:
# the mean final dev loss over the six runs against stage decay-screen's 0.3577; if it is not higher, the ZO step's
# contribution beside the exact steps is not measurable on these tasks, and that is reported plainly; either way no
# shipped file changes on this stage alone. (Its seed-1 run is stage rise's no-zo-s1, whose ZO and head lrs were
# constant: with ZO lr 0 the ZO schedule moves nothing, but the head lr's does; so seed 1 is rerun here as well.)
if [[ $stage == no-zo-screen || $stage == all ]]; then
  python cli.py bench "${RISE[@]}" --seeds 0 --schedule linear --lr-grid tuner=0 --out $R/rise/no-zo-decay-s0 &
  python cli.py bench "${RISE[@]}" --seeds 0 --schedule linear --lr-grid tuner=0 --task packaged:noun-number \
    --out $R/rise/no-zo-decay-noun-number-s0
  wait
  python cli.py bench "${RISE[@]}" --seeds 1 --schedule linear --lr-grid tuner=0 --out $R/rise/no-zo-decay-s1 &
  python cli.py bench "${RISE[@]}" --seeds 1 --schedule linear --lr-grid tuner=0 --task packaged:noun-number \
    --out $R/rise/no-zo-decay-noun-number-s1
  wait
  python cli.py bench "${RISE[@]}" --seeds 2 --schedule linear --lr-grid tuner=0 --out $R/rise/no-zo-decay-s2 &
  python cli.py bench "${RISE[@]}" --seeds 2 --schedule linear --lr-grid tuner=0 --task packaged:noun-number \
    --out $R/rise/no-zo-decay-noun-number-s2
  wait
fi
# 05:00: stage no-zo-screen did not run this session (stage decay-held-out took until the session's end); it waits,
# as written, for a later session.
# 05:46 on 2026-12-07: stage no-zo-screen starts now, as written above (nothing in it changed).
# 05:48 on 2026-12-07, written before it runs (it starts once stage no-zo-screen has ended): the baselines with a
# decaying lr. Section 22's all-linear configuration decays every lr; MeZO (3e-5) and FZOO (3e-3, 999 passes) ran at
# constant lrs. Stage baselines-decay runs each at its own lr with `--schedule linear` (1 - t/T) on the five held-out
# settings, paired by seed with the packaged-tasks report's constant runs (same split, batches and noise seeds):
# FZOO, the best baseline there, on seeds 0-2, then MeZO on seed 0 (a screen), seed-major, two lanes taking every
# other job, so that a session that ends early leaves whole seeds. The rule, fixed now: on each setting a baseline's
# schedule is the one with the lower mean final DEV loss over the seeds both schedules have (no test figure is read
# for the choice); the report compares all-linear with FZOO at its chosen schedule and says whether "no worse than the
# best baseline" still holds, setting by setting. No shipped file changes on this stage.
base_run() {  # method seed setting; a finished run is skipped, so that the stage can be run again after a kill
  local task=$3 name=$3 model=() lr=3e-5 steps=500
  if [[ $3 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  [[ $1 == fzoo ]] && lr=3e-3 steps=111
  local out=$R/top-held-out/$name/$1-$lr-linear-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" --batch-size 8 --threads 1 \
    --eval-every 250 --no-save-model --method $1 --lr $lr --steps $steps --schedule linear --seed $2 --out $out
}
if [[ $stage == baselines-decay || $stage == all ]]; then
  jobs=()
  for run in "fzoo 0" "fzoo 1" "fzoo 2"; do  # "mezo 0": moved to a later session (the 06:23 note below)
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$run $t"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do base_run ${jobs[i]}; done) &
  done
  wait
fi
# 06:23 on 2026-12-07, a change written before it takes effect: stage no-zo-screen has ended (rise/rise.md): the two
# exact steps alone, every lr decaying, end at a mean final dev loss of 0.3266 against 0.3577 with the ZO step (lower
# on four of the six runs), so by its reading the ZO step's contribution is not measurable on the meta-training tasks.
# Whether that holds on the held-out settings matters more to what the tuner is than MeZO's decaying screen, which
# (MeZO at its constant lr is 11 to 29 points behind all-linear there) can hardly change a comparison. So
# stage baselines-decay was stopped 1 minute into its first two runs (both discarded, nothing of them kept) and
# restarted without its MeZO jobs, and stage no-zo-held-out follows it.
# Stage no-zo-held-out, written before it runs: all-linear with the ZO step moving nothing (`--lr 0`; its two forward
# passes a step still feed the head and top-block steps, so the cost is the same) on the five held-out settings,
# paired by seed with stage decay-held-out's runs (same split, batches and noise seeds), seed-major, two lanes. The
# reading, fixed now: per setting, the paired differences from all-linear in test loss and accuracy (95% intervals);
# if the ZO step is ahead on no setting (no interval in its favour excluding zero), the report and the README say that
# the held-out gain is the exact steps'. No shipped file changes on this stage alone.
nozo_run() {  # setting seed; a finished run is skipped, so that the stage can be run again after a kill
  local task=$1 name=$1 model=()
  if [[ $1 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  local out=$R/top-held-out/$name/tuner-v2-top-1e-3-linear-decay-no-zo-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" "${TS[@]}" \
    --top-lr 1e-3 --top-schedule linear --schedule linear --lr 0 --seed $2 --out $out
}
if [[ $stage == no-zo-held-out || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do nozo_run ${jobs[i]}; done) &
  done
  wait
fi
# 06:44 on 2026-12-07, a change written before it takes effect: the first two runs of stage baselines-decay took 14-15
# minutes each (the machine was shared with tests), so its 15 runs would fill the rest of this session and stage
# no-zo-held-out would not start. Both questions are worth more with one seed each than one of them with three. So the
# two lanes of stage baselines-decay are stopped once their runs now in progress (FZOO seed 0 on vader-polarity and
# city-hemisphere) have ended (their runs finish and are kept), and stage held-out-queue takes over: both stages' jobs
# seed by seed, FZOO's then the ZO-less arm's for seed 0, then seed 1, then seed 2, two lanes taking every other job.
# Finished runs are skipped; the rules of the two stages are unchanged.
if [[ $stage == held-out-queue || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do
      jobs+=("base_run fzoo $seed $t")
    done
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("nozo_run $t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do ${jobs[i]}; done) &
  done
  wait
fi
# 07:25 on 2026-12-07: for the session's end, stage held-out-queue's lanes are stopped once its 16th job (the ZO-less
# arm's seed 1 on city-country) has started; that job and FZOO's seed 1 on the derivative finish and are kept. The
# rest of the queue (the ZO-less arm's seeds 1 and 2 on the other settings, FZOO's seed 2, MeZO's decaying screen)
# waits for a later session: rerun stage held-out-queue, which skips the finished runs.
# 07:52 on 2026-12-07, written before it takes effect: the session has time for one more pair of runs after the fresh-clone
# test run that is going now. The queue's 17th and 18th jobs (the ZO-less arm's seed 1 on city-continent and
# vader-polarity) run then, on their own (`nozo_run city-continent 1`, `nozo_run vader-polarity 1`, as stage
# held-out-queue would run them), and the queue stops again.
# 08:36 on 2026-12-07 (a new session), written before it takes effect: stage held-out-queue is run again as it stands
# (`bash reports/tuner-v2-smollm2/run.sh held-out-queue`); it skips the 18 finished runs and runs the other 12 (the
# ZO-less arm's seed 1 on city-hemisphere and the derivative, then FZOO's decaying seed 2 and the ZO-less arm's seed 2
# on all five settings), two lanes. The rules of stages baselines-decay and no-zo-held-out are unchanged.
# Stage exact-held-out, written before it runs (08:44 on 2026-12-07): `--method exact` (new in this session:
# no ZO step, each step one plain forward pass at theta, from which the head step and the top-block step take their
# exact gradients) with all-linear's two exact steps as they are (head lr 3e-4 as tuner v2 carries it, top lr 1e-3,
# both decaying linearly; no lr tuned for it), at the same 1000 forward passes: 1000 steps, twice the batches of
# all-linear's 500 two-point steps (the first 500 batches are the same ones, in the same order, for the same seed). On
# the five held-out settings, seeds 0-2, paired by seed with stage decay-held-out's all-linear runs and with stage
# no-zo-held-out's runs. The reading, fixed now: per setting, the paired differences from all-linear in test loss and
# accuracy (95% intervals). If all-linear is ahead in accuracy with an interval excluding zero on at least three of
# the five settings, the ZO step pays for its passes; otherwise the report, the README and docs/tuner.md say that at
# this budget the exact steps alone, at equal passes, do as well as the tuned ZO runs (or better, where the intervals
# say so). No shipped file changes on this stage alone.
exact_run() {  # setting seed; a finished run is skipped, so that the stage can be run again after a kill
  local task=$1 name=$1 model=()
  if [[ $1 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  local out=$R/top-held-out/$name/exact-3e-4-1e-3-linear-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" --batch-size 8 --threads 1 \
    --eval-every 500 --no-save-model --method exact --head-lr 3e-4 --top-lr 1e-3 --top-schedule linear \
    --schedule linear --steps 1000 --seed $2 --out $out
}
if [[ $stage == exact-held-out || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do exact_run ${jobs[i]}; done) &
  done
  wait
fi
# 08:44 on 2026-12-07, a change written before it takes effect: the question of stage exact-held-out is sharper than
# a third seed of the ZO-less arm (its first two seeds agree), so stage held-out-queue's lanes are stopped once the
# two runs now in progress (the ZO-less arm's seed 1 on city-hemisphere and the derivative) have ended (both kept),
# and stage final-queue takes over: FZOO's decaying seed 2 on the five settings, then stage exact-held-out seed by
# seed, then the ZO-less arm's seed 2; two lanes taking every other job; finished runs are skipped. The rules of the
# stages are unchanged.
if [[ $stage == final-queue || $stage == all ]]; then
  jobs=()
  for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("base_run fzoo 2 $t"); done
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do
      jobs+=("exact_run $t $seed")
    done
  done
  for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("nozo_run $t 2"); done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do ${jobs[i]}; done) &
  done
  wait
fi
# Stage fzoo-lr-held-out, written before it runs (11:16 on 2026-12-07, a new session): FZOO, the best baseline, at
# an lr of its own. Every FZOO run on the held-out settings used 3e-3, carried from the baselines report; on
# city-country's seed 0 its dev loss preferred 1e-3 (packaged-tasks report), so "ahead of the best baseline" has not
# been checked against FZOO at its own lr. The rule, fixed now (fzoo_lr_held_out.py's docstring): seed 0 screens a
# grid of factors of about 3 (1e-4 ... 3e-2) at a constant lr, starting at 1e-3 beside the carried 3e-3 and extended
# one neighbour at a time until the lr with the lowest final DEV loss has a worse neighbour on each side; where that
# choice is not 3e-3, seeds 1 and 2 run at it; FZOO's configuration on a setting is then the lowest mean final dev loss
# over seeds 0-2 among 3e-3 constant, 3e-3 linear (section 23) and the chosen lr; no test figure enters any choice.
# The reading: each tuner arm (v2-top-linear, the recommended file; all-linear; exact) against that configuration,
# paired by seed, with "no worse" (mean accuracy no lower, mean test loss no higher) setting by setting; where a claim
# of the report or the README ("ahead of FZOO on all five") no longer holds, they say so. Two lanes: the five seed-0
# screens (each a chain of one to three runs), then the seed-1 and seed-2 runs, seed-major. A run that stops on
# divergence leaves a DIVERGED file with its error (it counts as worse than any finished lr); finished runs are
# skipped, so the stage can be run again after a kill. No shipped file changes on this stage.
fzoo_lr_run() {  # setting lr seed
  local task=$1 model=() out=$R/top-held-out/$1/fzoo-$2-s$3 err
  if [[ $1 == vader-polarity-derivative ]]; then task=vader-polarity model=(--model runs/derivative-python-docs); fi
  [[ -f $out/metrics.json || -f $out/DIVERGED || -f reports/packaged-tasks-smollm2/runs/$1/fzoo-$2-s$3/metrics.json ]] \
    && return 0
  err=$(mktemp)
  if ! python cli.py finetune --task packaged:$task "${model[@]}" --batch-size 8 --threads 1 --eval-every 250 \
      --no-save-model --method fzoo --lr $2 --steps 111 --seed $3 --out $out 2> $err; then
    cat $err >&2
    if grep -q 'diverged' $err; then mkdir -p $out && tail -1 $err > $out/DIVERGED; fi
  fi
  rm -f $err
}
fzoo_lr_screen() {  # setting: seed 0, bracketed on dev loss
  local lr
  while lr=$(python $R/fzoo_lr_held_out.py next $1) && [[ -n $lr ]]; do
    fzoo_lr_run $1 $lr 0
    [[ -f $R/top-held-out/$1/fzoo-$lr-s0/metrics.json || -f $R/top-held-out/$1/fzoo-$lr-s0/DIVERGED ]] || return 1
  done
}
FZOO_SETTINGS=(city-continent city-country vader-polarity city-hemisphere vader-polarity-derivative)
if [[ $stage == fzoo-lr-held-out || $stage == all ]]; then
  for lane in 0 1; do
    (for ((i = lane; i < 5; i += 2)); do fzoo_lr_screen ${FZOO_SETTINGS[i]}; done) &
  done
  wait
  jobs=()
  for seed in 1 2; do
    for t in "${FZOO_SETTINGS[@]}"; do
      lr=$(python $R/fzoo_lr_held_out.py choice $t)
      [[ -n $lr && $lr != 3e-3 ]] && jobs+=("$t $lr $seed")
    done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do fzoo_lr_run ${jobs[i]}; done) &
  done
  wait
  python $R/fzoo_lr_held_out.py > $R/top-held-out/fzoo-lr-compare.md
fi
# Stage exact-lr-screen, written before it runs (11:20 on 2026-12-07; it starts once stage fzoo-lr-held-out has
# ended): the exact steps at lrs of their own. Section 24 ran `--method exact` at all-linear's lrs, which were chosen
# for 500 two-point steps beside a ZO step; exact takes 1000 steps on twice the batches, and on city-continent it fit
# the training set harder. Screened on the two packaged meta-training tasks of section 22 (word-class, noun-number),
# seed 0, 1000 passes, head lr 3e-4 as tuner v2 carries it, every lr decaying linearly, the top lr over 3e-4, 1e-3
# and 3e-3. The reading, fixed now: the top lr with the lowest mean final DEV loss over the two tasks is exact's
# choice (the test split is not read for it); if it is 1e-3, the held-out runs of section 24 are exact at its own
# choice and nothing more runs; otherwise exact at the chosen lr goes to the held-out settings in a later stage
# (written before it runs). Reported beside all-linear's seed-0 dev losses on the same tasks (rise/decay-*s0). No
# shipped file changes on this stage.
EXACT_META=(--methods exact --head-lr 3e-4 --top-schedule linear --schedule linear --batch-size 8 --forwards 1000
            --eval-points 2 --threads 1 --seeds 0)
if [[ $stage == exact-lr-screen || $stage == all ]]; then
  jobs=()
  for lr in 1e-3 3e-4 3e-3; do
    jobs+=("--task packaged:word-class --top-lr $lr --out $R/rise/exact-top-$lr-s0")
    jobs+=("--task packaged:noun-number --top-lr $lr --out $R/rise/exact-top-$lr-noun-number-s0")
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do
      out=${jobs[i]##* }
      [[ -f $out/bench.json ]] || python cli.py bench "${EXACT_META[@]}" ${jobs[i]}
    done) &
  done
  wait
  python - <<'PY' | tee $R/rise/exact-lr.md
import json, math
R = "reports/tuner-v2-smollm2/rise"
def dev(path):
    (r,) = json.load(open(f"{path}/bench.json"))["runs"]
    return math.inf if r.get("diverged") else r["curve"][-1]["dev_loss"]
print("# The exact steps' top lr on the meta-training tasks (stage exact-lr-screen of run.sh), seed 0\n")
print("| arm | word-class: final dev loss | noun-number: final dev loss | mean |\n|---|---|---|---|")
means = {}
for lr in ("3e-4", "1e-3", "3e-3"):
    d = [dev(f"{R}/exact-top-{lr}-s0"), dev(f"{R}/exact-top-{lr}-noun-number-s0")]
    means[lr] = sum(d) / 2
    print(f"| exact, top lr {lr} linear | {d[0]:.4f} | {d[1]:.4f} | {means[lr]:.4f} |")
d = [dev(f"{R}/decay-s0"), dev(f"{R}/decay-noun-number-s0")]
print(f"| all-linear (section 22), for reference | {d[0]:.4f} | {d[1]:.4f} | {sum(d) / 2:.4f} |")
best = min(means, key=means.get)
print(f"\nexact's choice by mean final dev loss: top lr {best}"
      + (" (all-linear's; nothing more runs)" if best == "1e-3" else " (not all-linear's 1e-3)"))
PY
fi
# 11:41 on 2026-12-07, a change written before it takes effect: FZOO's runs take about 12 minutes each here, and
# stage fzoo-lr-held-out's fixed lanes leave one lane idle while the other screens three settings, then wait for both
# before any seed-1 or seed-2 run. Stage fzoo-lr-queue replaces its scheduling (not its rule, runs or reading): two
# lanes take jobs from one queue, every seed-0 screen step first (setting by setting), then the seed-1 and seed-2 runs
# of every setting whose screen has ended with a choice other than 3e-3; a job is claimed by an atomic mkdir, so no two
# lanes run the same one. Stage fzoo-lr-held-out's lanes are stopped now; the two runs in progress (city-hemisphere 3e-4
# and word polarity 1e-3, seed 0: 11:41) finish and are kept, and the queue starts once both have ended. Stage
# exact-lr-screen waits until the queue has ended (it was to start after stage fzoo-lr-held-out).
fzoo_lr_claim() {  # prints "setting lr seed" of the next job and claims it; returns 1 when none can start now
  local t lr s C=$R/top-held-out/.claims
  for t in "${FZOO_SETTINGS[@]}"; do
    lr=$(python $R/fzoo_lr_held_out.py next $t)
    [[ -n $lr ]] && mkdir $C/$t@$lr@0 2>/dev/null && { echo "$t $lr 0"; return 0; }
  done
  for s in 1 2; do
    for t in "${FZOO_SETTINGS[@]}"; do
      lr=$(python $R/fzoo_lr_held_out.py choice $t)
      [[ -n $lr && $lr != 3e-3 ]] && mkdir $C/$t@$lr@$s 2>/dev/null && { echo "$t $lr $s"; return 0; }
    done
  done
  return 1
}
fzoo_lr_pending() {  # whether a claimed job is still running (it may open new jobs: a screen step, a choice)
  local c t lr s
  for c in $R/top-held-out/.claims/*@*; do
    [[ -d $c && ! -f $c/FAILED ]] || continue
    IFS=@ read -r t lr s <<< "${c##*/}"
    [[ -f $R/top-held-out/$t/fzoo-$lr-s$s/metrics.json || -f $R/top-held-out/$t/fzoo-$lr-s$s/DIVERGED ]] || return 0
  done
  return 1
}
fzoo_lr_lane() {  # take jobs until none is left; wait while another lane's job may open more
  local job out
  while true; do
    if job=$(fzoo_lr_claim); then
      fzoo_lr_run $job || true
      set -- $job
      out=$R/top-held-out/$1/fzoo-$2-s$3
      [[ -f $out/metrics.json || -f $out/DIVERGED ]] || touch "$R/top-held-out/.claims/$1@$2@$3/FAILED"
    elif fzoo_lr_pending; then
      sleep 30
    else
      return 0
    fi
  done
}
if [[ $stage == fzoo-lr-queue || $stage == all ]]; then
  rm -rf $R/top-held-out/.claims && mkdir -p $R/top-held-out/.claims  # a killed queue's claims are stale
  for lane in 0 1; do
    fzoo_lr_lane &
    sleep 5
  done
  wait
  rm -rf $R/top-held-out/.claims
  python $R/fzoo_lr_held_out.py > $R/top-held-out/fzoo-lr-compare.md
fi
# Stage exact-head-screen, written before it runs (13:31 on 2026-12-07): the other half of exact's own lrs. Stage
# exact-lr-screen chose the top lr (1e-3) at head lr 3e-4; this runs head lr 1e-3 at top lr 1e-3 on the same two
# meta-training tasks, seed 0, everything else as there. The reading, fixed now: if its mean final dev loss over the
# two tasks is higher than head lr 3e-4's (0.3018), 3e-4 has a worse lr above it (below it, 1e-4 is not run this
# session); if lower, exact's head lr is open and goes to a later stage. No shipped file changes on this stage.
if [[ $stage == exact-head-screen || $stage == all ]]; then
  for t in word-class noun-number; do
    out=$R/rise/exact-head-1e-3-top-1e-3-$t-s0
    [[ -f $out/bench.json ]] || python cli.py bench "${EXACT_META[@]/3e-4/1e-3}" --task packaged:$t --top-lr 1e-3 \
      --out $out &
  done
  wait
  python - <<'PY' | tee $R/rise/exact-head-lr.md
import json
R = "reports/tuner-v2-smollm2/rise"
def dev(path):
    (r,) = json.load(open(f"{path}/bench.json"))["runs"]
    return r["curve"][-1]["dev_loss"]
old = [dev(f"{R}/exact-top-1e-3-s0"), dev(f"{R}/exact-top-1e-3-noun-number-s0")]
new = [dev(f"{R}/exact-head-1e-3-top-1e-3-{t}-s0") for t in ("word-class", "noun-number")]
print("# The exact steps' head lr on the meta-training tasks (stage exact-head-screen of run.sh), seed 0, top lr 1e-3\n")
print("| head lr | word-class: final dev loss | noun-number: final dev loss | mean |\n|---|---|---|---|")
for lr, d in (("3e-4", old), ("1e-3", new)):
    print(f"| {lr} | {d[0]:.4f} | {d[1]:.4f} | {sum(d) / 2:.4f} |")
print("\n" + ("head lr 3e-4 has a worse lr above it (1e-4 below it: not run)" if sum(new) > sum(old)
              else "head lr 1e-3 is lower: exact's head lr is open"))
PY
fi
# Stage exact-head-more, written before it runs (13:56 on 2026-12-07): exact's head lr, which stage exact-head-screen
# left open (1e-3 0.003 below 3e-4 on seed 0). One lane (the other core is for development this session). Runs, in
# this order, top lr 1e-3 linear, everything else as in stage exact-lr-screen: head lr 3e-3 on seed 0; head lrs 3e-4
# and 1e-3 on seeds 1 and 2; then head lr 3e-3 on seeds 1 and 2 only if its seed-0 mean final dev loss over the two
# tasks is the lowest of the three. The reading, fixed now: among the head lrs with three seeds, the lowest mean final
# dev loss over the two tasks and three seeds is exact's head lr; if it is 3e-4, section 24's runs stand at exact's
# own lrs; otherwise the held-out settings at exact's head lr are for a later stage. No shipped file changes here.
exact_head_run() {  # head lr, task, seed
  local out=$R/rise/exact-head-$1-top-1e-3-$2-s$3
  [[ $1 == 3e-4 && $3 == 0 ]] && return 0  # seed 0 at 3e-4: stage exact-lr-screen's runs
  [[ $1 == 1e-3 && $3 == 0 ]] && return 0  # seed 0 at 1e-3: stage exact-head-screen's runs
  [[ -f $out/bench.json ]] || python cli.py bench --methods exact --head-lr $1 --top-lr 1e-3 --top-schedule linear \
    --schedule linear --batch-size 8 --forwards 1000 --eval-points 2 --threads 1 --seeds $3 \
    --task packaged:$2 --out $out
}
exact_head_dev() {  # mean final dev loss of a head lr over the two tasks and the given seeds
  python - "$@" <<'PY'
import json, sys
R = "reports/tuner-v2-smollm2/rise"
lr, seeds = sys.argv[1], sys.argv[2:]
def path(t, s):
    if s == "0" and lr == "3e-4":
        return f"{R}/exact-top-1e-3-s0" if t == "word-class" else f"{R}/exact-top-1e-3-noun-number-s0"
    return f"{R}/exact-head-{lr}-top-1e-3-{t}-s{s}"
d = [json.load(open(f"{path(t, s)}/bench.json"))["runs"][0]["curve"][-1]["dev_loss"]
     for t in ("word-class", "noun-number") for s in seeds]
print(f"{sum(d) / len(d):.4f}")
PY
}
if [[ $stage == exact-head-more || $stage == all ]]; then
  for t in word-class noun-number; do exact_head_run 3e-3 $t 0; done
  for s in 1 2; do for h in 3e-4 1e-3; do for t in word-class noun-number; do exact_head_run $h $t $s; done; done; done
  m3=$(exact_head_dev 3e-3 0); m1=$(exact_head_dev 1e-3 0); m4=$(exact_head_dev 3e-4 0)
  three=(3e-4 1e-3)
  if python -c "import sys; sys.exit(not ($m3 < $m1 and $m3 < $m4))"; then
    for s in 1 2; do for t in word-class noun-number; do exact_head_run 3e-3 $t $s; done; done
    three+=(3e-3)
  fi
  { echo "# Exact's head lr on the meta-training tasks (stage exact-head-more of run.sh), top lr 1e-3 linear"
    echo; echo "seed 0, mean final dev loss over word-class and noun-number: 3e-4 $m4, 1e-3 $m1, 3e-3 $m3"; echo
    echo "| head lr | mean final dev loss, two tasks, seeds 0-2 |"; echo "|---|---|"
    best=; low=
    for h in "${three[@]}"; do
      m=$(exact_head_dev $h 0 1 2); echo "| $h | $m |"
      if [[ -z $low ]] || python -c "import sys; sys.exit(not $m < $low)"; then best=$h; low=$m; fi
    done
    echo; echo "exact's head lr: $best$([[ $best == 3e-4 ]] && echo ' (section 24 ran it)' \
      || echo ' (not 3e-4: the held-out settings at it are for a later stage)')"; } | tee $R/rise/exact-head-more.md
fi
# Stage exact-head-held-out, written before it runs (15:37 on 2026-12-07; it starts when this session's fresh-clone CI
# has ended): stage exact-head-more chose exact's head lr on the meta-training tasks, 1e-3 (section 26), not the 3e-4
# that stage exact-held-out ran. This runs exact at its own lrs (head lr 1e-3, top lr 1e-3, both decaying linearly)
# on the five held-out settings, seeds 0-2, everything else as in stage exact-held-out; two lanes, seed by seed;
# finished runs are skipped, so a later session can finish it after a kill. The reading, fixed now: section 24's
# reading with this arm in place of exact at 3e-4 (per setting, the paired differences from all-linear in test
# accuracy and test loss, 95% intervals over the seeds; the ZO step pays for its passes if all-linear is ahead in
# accuracy with an interval excluding zero on at least three of the five settings), and the paired differences from
# exact at 3e-4, reported as they are. No shipped file changes on this stage.
exact_head_held_out_run() {  # setting seed
  local task=$1 name=$1 model=()
  if [[ $1 == derivative ]]; then
    task=vader-polarity name=vader-polarity-derivative model=(--model runs/derivative-python-docs)
  fi
  local out=$R/top-held-out/$name/exact-1e-3-1e-3-linear-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$task "${model[@]}" --batch-size 8 --threads 1 \
    --eval-every 500 --no-save-model --method exact --head-lr 1e-3 --top-lr 1e-3 --top-schedule linear \
    --schedule linear --steps 1000 --seed $2 --out $out
}
if [[ $stage == exact-head-held-out || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do jobs+=("$t $seed"); done
  done
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do exact_head_held_out_run ${jobs[i]}; done) &
  done
  wait
fi
# 16:33 on 2026-12-07, a change written before it takes effect: the session ends at 16:53, before stage
# exact-head-held-out can finish; its lanes are stopped after the two seed-2 runs in progress (city-country,
# city-continent), which finish and are kept. The other three seed-2 runs are for a later session: run the stage again
# (finished runs are skipped). Its rule and reading are unchanged.
# 16:52 on 2026-12-07 (a new session): stage exact-head-held-out is run again as it stands; it skips the twelve
# finished runs and runs the other three seed-2 runs (vader-polarity, city-hemisphere, derivative), two lanes.
# two_lanes JOB...: each JOB a command line (word-split), run in two lanes taking every other job, seed-major when the
# jobs are given so; for the stages from here on.
two_lanes() {
  local jobs=("$@") lane i
  for lane in 0 1; do
    (for ((i = lane; i < ${#jobs[@]}; i += 2)); do ${jobs[i]}; done) &
  done
  wait
}
# Stage mezo-decay, written before it runs (16:53 on 2026-12-07; it starts when stage exact-head-held-out's runs have
# ended): the MeZO jobs of stage baselines-decay, which moved to a later session at 06:23 and never ran: MeZO 3e-5
# with `--schedule linear` on the five held-out settings, seeds 0 and 1 (16:57, before it started: not 0-2, so that
# the session has time for a stage of the packaged-tasks report; `MEZO_DECAY_SEEDS="0 1 2"` adds seed 2, finished runs
# are skipped), seed-major, two lanes, paired by seed with the constant MeZO runs (same split, batches and noise
# seeds). The rule is stage baselines-decay's, unchanged: on each setting MeZO's schedule is the one with the lower
# mean final DEV loss over the seeds both schedules have. Then issue 17's MeZO targets are read again against MeZO at
# that schedule, for both tuner files (v2-top-linear, the recommended one, and all-linear), over the seeds every arm
# has: forward passes to reach MeZO's final test loss at most 667 (2/3 of MeZO's 1000) on at least 80% of (setting,
# seed) pairs, and a mean test accuracy and a gain beyond the calibration reference no lower than MeZO's, setting by
# setting. The report says where MeZO's chosen schedule changes a target's outcome. No shipped file changes on this
# stage.
if [[ $stage == mezo-decay || $stage == all ]]; then
  jobs=()
  for seed in ${MEZO_DECAY_SEEDS:-0 1}; do
    for t in city-country city-continent vader-polarity city-hemisphere derivative; do
      jobs+=("base_run mezo $seed $t")
    done
  done
  two_lanes "${jobs[@]}"
fi
# Stage body-tasks, written before it runs (22:45 on 2026-12-07, a new session): sections 24 and 27 found that the ZO
# step does not pay beside the two exact steps on the five held-out settings, where the output head and the last MLP
# are enough. The open question: on a task where the body of the model must change, does it? The two candidates are
# fixed now from the packaged-tasks screen (seed 0, 2026-12-06; no tuner file has run on either): the held-out tasks
# on which no ZO method learned while fo did in 100 steps: syllables (MeZO +0.0, FZOO -1.0, fo +19.0 raw accuracy
# points) and county-state (MeZO +2.0 with its test loss rising, fo +10.5). Neither was used to design, meta-train or
# choose an lr. Arms, 1000 passes, batch 8, seeds 0-2 paired with the packaged-tasks runs (same split, batches, noise
# seeds): all-linear (decay_run), exact at its own lrs (exact_head_held_out_run), and into the packaged-tasks report's
# folders MeZO 3e-5 constant, fo AdamW 1e-5 for 100 steps (the reference) and FZOO 3e-3 (999 passes). Order: all-linear
# and exact, seed by seed (both tasks), then fo, MeZO and FZOO; two lanes; a job that would start after 00:50 is
# dropped (the session ends at 01:41). The reading, fixed now, per task over the seeds every arm has:
#  1. the body must change (the two exact steps do not reach fo) if fo is ahead of exact in test accuracy with a 95%
#     interval excluding zero;
#  2. the ZO step pays on a task if all-linear is ahead of exact in test accuracy with an interval excluding zero
#     (section 24's rule, one task at a time);
#  3. the issue's targets against MeZO and the better of MeZO and FZOO are reported as they come out; these two tasks
#     did not pass issue 13's bar, so they are extra settings, not the five the README's table reads.
# No shipped file changes on this stage.
body_base_run() {  # method task seed; the packaged-tasks report's settings for MeZO, fo and FZOO
  local lr=3e-5 steps=500
  [[ $1 == fo ]] && lr=1e-5 steps=100
  [[ $1 == fzoo ]] && lr=3e-3 steps=111
  local out=reports/packaged-tasks-smollm2/runs/$2/$1-$lr-s$3
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$2 --batch-size 8 --threads 1 --eval-every 250 \
    --no-save-model --method $1 --lr $lr --steps $steps --seed $3 --out $out
}
body_job() {  # a job of stage body-tasks, dropped if it would start after the cut
  (( $(date +%s) < $(date -d '2026-12-08 00:50' +%s) )) || { echo "dropped for time: $*"; return 0; }
  "$@"
}
if [[ $stage == body-tasks || $stage == all ]]; then
  jobs=()
  for seed in 0 1 2; do
    for t in syllables county-state; do
      jobs+=("body_job decay_run $t $seed" "body_job exact_head_held_out_run $t $seed")
    done
  done
  for m in fo mezo fzoo; do
    for seed in 0 1 2; do for t in syllables county-state; do jobs+=("body_job body_base_run $m $t $seed"); done; done
  done
  two_lanes "${jobs[@]}"
fi
# 23:36 on 2026-12-07, written before it takes effect: when stage body-tasks has ended, stage mezo-decay runs again as
# written with MEZO_DECAY_SEEDS="0 1 2" (it skips the ten finished runs: MeZO linear's seed 2 on the five held-out
# settings, two lanes), if it can start before 00:25; otherwise it waits for a later session. Its rule and reading
# are unchanged (section 28, now over the three seeds both of MeZO's schedules have).
# Stage body-no-zo, written before it runs (00:37 on 2026-12-08): section 29 found all-linear's test loss lower than
# exact's on every seed of county-state (-0.097 [-0.132, -0.039]) with accuracy level, and could not say whether the
# ZO step or exact's faster head step (1000 updates at 1e-3 against 500 at 3e-4) makes that difference. All-linear
# with ZO lr 0 (nozo_run: the same head and top-block steps off the same forward passes, the ZO step moving nothing)
# on county-state, seeds 0-2, two lanes. The reading, fixed now: the paired difference of ZO lr 0 minus all-linear in
# test loss (95% interval over the seeds); if it is above zero with the interval excluding zero, the ZO step lowers
# the test loss on county-state, and the report says so; otherwise the gap is exact's head step, not the ZO step.
# Accuracy reported as it is. No shipped file changes.
if [[ $stage == body-no-zo || $stage == all ]]; then
  two_lanes "nozo_run county-state 0" "nozo_run county-state 1" "nozo_run county-state 2"
fi
# After the fact (00:38 on 2026-12-08): stage body-tasks ended at 00:36, after the 00:25 of the 23:36 note, so stage
# mezo-decay's seed 2 did not start; it waits for a later session (`MEZO_DECAY_SEEDS="0 1 2"`, as written).
# Stage body-recommended, written before it runs (00:40 on 2026-12-08): section 29 ran all-linear and exact on
# syllables and county-state, not the recommended file (v2-top-linear: tuner v2 plus `--top-lr 1e-3 --top-schedule
# linear`, the ZO and head lrs constant). Its runs there, seeds 0-2, seed-major (both tasks' seed 0 first), each job
# started when fewer than two fine-tunes are running (stage body-no-zo's third run holds one core), none started after
# 01:05 (the session ends at 01:41). Reported as they come out, beside section 29's arms (paired by seed, over the
# seeds it finished); no rule reads them and no shipped file changes.
rec_run() {  # task seed
  local out=$R/top-held-out/$1/tuner-v2-top-1e-3-linear-s$2
  [[ -f $out/metrics.json ]] || python cli.py finetune --task packaged:$1 "${TS[@]}" --top-lr 1e-3 \
    --top-schedule linear --seed $2 --out $out
}
if [[ $stage == body-recommended || $stage == all ]]; then
  for seed in 0 1 2; do
    for t in syllables county-state; do
      while (( $(pgrep -fc "cli.py finetune") >= 2 )); do sleep 15; done
      (( $(date +%s) < $(date -d '2026-12-08 01:05' +%s) )) || { echo "dropped for time: $t $seed"; continue; }
      rec_run $t $seed &
      sleep 30
    done
  done
  wait
fi
# 01:02 on 2026-12-08, a decision written before the rest of stage body-recommended is read: the recommended file
# (v2-top-linear) DIVERGED on syllables seed 0 (training loss 1.27 at 60% of the run, 8.96 over its last tenth; final
# test loss 14.66 from 1.66, accuracy 0.255 from 0.260), the late rise section 22 traced to the constant ZO lr. Issue
# 17 asks that the tuner not diverge on any seed at its own step size; all-linear (every lr decaying) has not
# diverged on any seed of the seven held-out settings (sections 22, 29). So from now the README and docs recommend
# all-linear (smollm2-135m-v2-all-linear), whatever the other seeds of this stage show; v2-top-linear stays shipped,
# with this divergence stated. `make demo` keeps running v2-top-linear until it is rerun with all-linear (a later
# session: its report holds v2-top-linear's runs).
# 01:09 on 2026-12-08, written before it takes effect: stage body-recommended's county-state seed 1 (started 01:0x,
# before the cut) is stopped and discarded, so that `time make demo` with all-linear (reports/demo-smollm2, planned at
# 01:03) has the two cores; the stage has syllables seeds 0-1 and county-state seed 0. Finished runs are skipped if it
# is run again.
# After the fact (01:20 on 2026-12-08): `make demo` was switched to all-linear and rerun this session after all
# (planned at 01:03 in reports/demo-smollm2; 9 min 32 s, 0.440 -> 0.775), not in a later session as the 01:02 note
# said. Syllables' seed 1 of stage body-recommended diverged as well (section 29).
