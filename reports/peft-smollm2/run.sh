#!/usr/bin/env bash
# The commands for reports/peft-smollm2 (issue 14's evidence): on SmolLM2-135M, at equal forward passes,
#   MeZO on LoRA | MeZO on the full model | first-order on LoRA (--method fo) | a tuner meta-trained
#   for LoRA against MeZO on LoRA; 3 seeds, an lr grid per arm (bench selects on dev loss), two tasks.
# Run from the repository root after `make fetch`. NOT RUN YET at full size: only `SMOKE=1` has been run
# (see README.md); that proves the commands work and is not evidence.
#
#   bash reports/peft-smollm2/run.sh            # the real runs: many CPU hours on 2 cores
#   SMOKE=1 bash reports/peft-smollm2/run.sh    # a few forward passes, one seed, one task (minutes)
#
# TASKS: replace with two held-out tasks where ZO learns, from the baselines report (issue 13), once it exists.
set -euo pipefail
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
PY=${PY:-.venv/bin/python}
R=${R:-reports/peft-smollm2}
TASKS=${TASKS:-"bigbench:strategyqa bigbench:navigate"}
META_TASKS=${META_TASKS:-bigbench:hyperbaton,bigbench:implicatures,bigbench:winowhy}  # disjoint from TASKS
SEEDS=${SEEDS:-0,1,2}
FORWARDS=${FORWARDS:-2000}   # per run, every arm
META_STEPS=${META_STEPS:-150}
COMMON="--batch-size 16 --n-test 200 --threads ${THREADS:-2}"
LORA_GRID="1e-4,3e-4,1e-3,3e-3"   # ZO on LoRA takes larger steps than on the full model
FULL_GRID="1e-5,3e-5,1e-4"
FO_LRS="1e-4,3e-4,1e-3"            # AdamW on LoRA
if [ "${SMOKE:-0}" = 1 ]; then
    R=${R}/smoke; TASKS=bigbench:strategyqa; SEEDS=0; FORWARDS=8; META_STEPS=2
    COMMON="--batch-size 4 --n-test 16 --n-dev 16 --max-length 128 --threads ${THREADS:-2}"
    LORA_GRID="1e-3"; FULL_GRID="3e-5"; FO_LRS="1e-3"
fi
mkdir -p "$R"

# SCREEN=vp: MeZO on LoRA (r 8, q_proj/v_proj, eps 1e-2 as in the MeZO paper's LoRA runs) on the held-out
# valid_parentheses at exactly the settings of reports/baselines-smollm2 (batch 8, 1000 forward passes, bf16
# autocast, 700/100/200 split, 1 thread): its full-model MeZO runs are the other arm, with the same data order.
# METHOD=fo: first-order (AdamW) on LoRA, 200 steps of one forward and one backward pass, as the baselines' fo.
# Run on 2026-12-04 as one process per lr or seed (two at a time), then merged:
#   for t in a:3e-4 b:1e-3 c:3e-3; do SCREEN=vp TAG=${t%%:*} LRS=${t#*:} bash reports/peft-smollm2/run.sh & done; wait
#   for s in 1 2; do SCREEN=vp TAG=s$s LRS=1e-3 VP_SEEDS=$s bash reports/peft-smollm2/run.sh & done; wait
#   R=reports/peft-smollm2; python cli.py bench-merge $R/vp-lora-{a,b,c,s1,s2} --out $R/vp-lora
#   (fo: the same with METHOD=fo, TAG=fo-..., and --out $R/vp-lora-fo; README.md lists the lrs)
if [ "${SCREEN:-}" = vp ]; then
    METHOD=${METHOD:-mezo}
    if [ "$METHOD" = fo ]; then BUDGET=(--forwards 200); else BUDGET=(--forwards 1000 --eps 1e-2); fi
    VP=(--task 'bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid' --batch-size 8 "${BUDGET[@]}"
        --eval-points 5 --autocast bf16 --threads 1 --seeds "${VP_SEEDS:-0}" --peft lora --methods "$METHOD")
    OMP_NUM_THREADS=1 $PY cli.py bench "${VP[@]}" --lr-grid "$METHOD=${LRS:-3e-4,1e-3}" --out "$R/vp-lora-${TAG:-a}"
    exit 0
fi

# 1. A tuner for LoRA (r 8, alpha 16, q_proj,v_proj), meta-trained on tasks disjoint from TASKS, for lr 1e-3.
TUNER=$R/lora-tuner.safetensors
[ -f "$TUNER" ] || $PY cli.py meta-train --peft lora --tasks "$META_TASKS" --steps "$META_STEPS" --virtual-lr 1e-3 \
    --threads "${THREADS:-2}" $( [ "${SMOKE:-0}" = 1 ] && echo "--batch-size 4 --max-length 128 --n-train 32" ) \
    --out "$TUNER"
$PY cli.py tuners inspect "$TUNER" > "$R/lora-tuner.txt"

if $PY cli.py finetune -h | grep -q "fo}\|,fo[,}]"; then FO="fo"; FO_GRID="fo=$FO_LRS"; else
    FO=""; FO_GRID=""; echo "no first-order arm: this zotune has no --method fo" >&2; fi
for TASK in $TASKS; do
    T=$R/${TASK#bigbench:}
    # 2. On LoRA, in one bench (same seeds, data order and forward passes; paired intervals against mezo):
    #    MeZO, the tuner for LoRA, and first-order (a forward pass with its backward counts as one pass).
    [ -d "$T/lora" ] || $PY cli.py bench --peft lora --task "$TASK" --methods mezo,tuner${FO:+,$FO} --tuner "$TUNER" \
        --lr-grid mezo=$LORA_GRID tuner=$LORA_GRID $FO_GRID --seeds "$SEEDS" --forwards "$FORWARDS" $COMMON --out "$T/lora"
    # 3. MeZO on the full model.
    [ -d "$T/full" ] || $PY cli.py bench --task "$TASK" --methods mezo --lr-grid mezo=$FULL_GRID \
        --seeds "$SEEDS" --forwards "$FORWARDS" $COMMON --out "$T/full"
done

# 4. One table: test loss, accuracy, forward passes to MeZO-on-LoRA's final test loss, seconds per forward pass.
$PY benchmarks/peft_summary.py "$R" > "$R/summary.md"
cat "$R/summary.md"
