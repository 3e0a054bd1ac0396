#!/usr/bin/env bash
# The commands for reports/peft-smollm2 (issue 14's evidence). On SmolLM2-135M-Instruct, at equal forward
# passes, on two held-out tasks of the task set (reports/task-search-smollm2), 3 seeds, an lr grid per arm:
#   MeZO on LoRA | a tuner meta-trained for LoRA | first-order on LoRA | MeZO on the full model.
# Settings are those of reports/baselines-smollm2: batch 8, 1000 forward passes (fo: 200 steps of a forward and
# a backward pass), bf16 autocast, 5 evaluation points, 1 thread per process (two processes share our 2 cores).
# A seed fixes the batch order, so every arm of a seed sees the same batches. Each lr grid ran on seed 0 and was
# selected on dev loss (never test); seeds 1 and 2 ran at the selected lr. Run from the repository root after
# `make fetch`.
#
#   bash reports/peft-smollm2/run.sh all      # everything below, in order, one process (many CPU hours)
#   bash reports/peft-smollm2/run.sh tuner    # step 1 only
#   SCREEN=med METHOD=tuner TAG=tuner-a LRS=3e-4,1e-3 bash reports/peft-smollm2/run.sh   # one stage
#   bash reports/peft-smollm2/run.sh merge    # join the stages of each arm, then write summary.md
#
# `all` skips a stage whose folder exists and a merge whose output exists; to rerun from scratch, move the
# merged arm folders and lora-tuner.* aside first. On 2026-12-04 the stages ran as one process each, two at a time, in the order of STAGES below; README.md
# says what each grid selected.
set -euo pipefail
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
PY=${PY:-.venv/bin/python}
R=${R:-reports/peft-smollm2}
TUNER=$R/lora-tuner.safetensors

# 1. The tuner for LoRA (r 8, alpha 16, q_proj and v_proj): meta-trained on the task set's meta-training half
#    (hotels, hyperbaton) and winowhy (not in the set), all disjoint from the held-out tasks below, for the
#    LoRA runs' eps 1e-2 and lr 1e-3 (MeZO on LoRA's selection on valid_parentheses, the first held-out task
#    run). 150 meta steps, batch 8, 1 thread: 9 minutes here.
tuner() {
    [ -f "$TUNER" ] || OMP_NUM_THREADS=1 $PY cli.py meta-train --peft lora \
        --tasks 'bigbench:multiemo/hotels_sentence_en:ambivalent=mixed,bigbench:hyperbaton,bigbench:winowhy' \
        --steps 150 --eps 1e-2 --virtual-lr 1e-3 --batch-size 8 --threads 1 --out "$TUNER"
    $PY cli.py tuners inspect "$TUNER" > "$R/lora-tuner.txt"
}

# 2. One stage: one arm on one held-out task. SCREEN=vp is valid_parentheses (700/100/200 split: the task is
#    small), SCREEN=med is multiemo/medicine_sentence_en (1000/100/200).
#      METHOD=mezo (default): MeZO on LoRA (eps 1e-2, as in the MeZO paper's LoRA runs);
#      METHOD=tuner: the tuner of step 1, same eps;
#      METHOD=fo: first-order (AdamW) on LoRA, 200 steps of one forward and one backward pass;
#      FULL=1: MeZO on the full model instead (eps 1e-3, the baselines report's setting).
#    LRS is the lr grid, SEEDS_RUN the seeds; the bench goes to $R/<screen>-<lora|full>[-<method>]-<TAG>.
stage() {
    case $SCREEN in
        vp) STASK='bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid' ;;
        med) STASK='bigbench:multiemo/medicine_sentence_en:ambivalent=mixed' ;;
        *) echo "SCREEN must be vp or med" >&2; exit 2 ;;
    esac
    METHOD=${METHOD:-mezo}
    case $METHOD in
        fo) BUDGET=(--forwards 200) ;;
        tuner) BUDGET=(--forwards 1000 --eps 1e-2 --tuner "$TUNER") ;;
        *) BUDGET=(--forwards 1000 --eps 1e-2) ;;
    esac
    ARM=(--peft lora); NAME=lora
    if [ "${FULL:-0}" = 1 ]; then ARM=(); NAME=full; [ "$METHOD" = fo ] || BUDGET=(--forwards 1000); fi
    ONE=(--task "$STASK" --batch-size 8 "${BUDGET[@]}" --eval-points 5 --autocast bf16 --threads 1
         --seeds "${SEEDS_RUN:-0}" "${ARM[@]}" --methods "$METHOD")
    OUT=$R/$SCREEN-$NAME-${TAG:-a}; RESUME=()
    [ -d "$R/.$(basename "$OUT").partial" ] && RESUME=(--resume)   # a killed stage continues where it stopped
    OMP_NUM_THREADS=1 $PY cli.py bench "${ONE[@]}" --lr-grid "$METHOD=${LRS:-3e-4,1e-3}" --out "$OUT" "${RESUME[@]}"
}

# Every stage that ran: SCREEN METHOD FULL TAG LRS SEEDS_RUN (TAG names the folder; fo and tuner tags carry
# the method, so $R/vp-lora-fo-a is fo's first stage on valid_parentheses).
STAGES=(
    "vp mezo 0 a 3e-4 0"            "vp mezo 0 b 1e-3 0"            "vp mezo 0 c 3e-3 0"
    "vp mezo 0 s1 1e-3 1"           "vp mezo 0 s2 1e-3 2"
    "vp fo 0 fo-a 1e-4,3e-4 0"      "vp fo 0 fo-b 1e-3 0"           "vp fo 0 fo-c 3e-3 0"
    "vp fo 0 fo-s1 1e-3 1"          "vp fo 0 fo-s2 1e-3 2"
    "med mezo 1 a 1e-5,3e-5 0"      "vp tuner 0 tuner-a 3e-4,1e-3 0"
    "med mezo 0 a 3e-4,1e-3 0"      "med tuner 0 tuner-a 3e-4,1e-3 0"
    "med fo 0 fo-a 3e-4,1e-3 0"
    "vp tuner 0 tuner-s1 3e-4 1"    "vp tuner 0 tuner-s2 3e-4 2"
    "med mezo 1 s1 1e-5 1"          "med mezo 1 s2 1e-5 2"
    "med mezo 0 s1 3e-4 1"          "med mezo 0 s2 3e-4 2"
    "med tuner 0 tuner-s1 3e-4 1"   "med tuner 0 tuner-s2 3e-4 2"
    "med fo 0 fo-s1 3e-4 1"         "med fo 0 fo-s2 3e-4 2"
    "med tuner 0 tuner-b 1e-4 0"    "vp tuner 0 tuner-b 1e-4 0"
    "med mezo 1 b 3e-6 0"           "med mezo 0 b 1e-4 0"           "med mezo 0 c 5e-4 0"
    "med mezo 0 s1-5e-4 5e-4 1"     "med mezo 0 s2-5e-4 5e-4 2"     "med tuner 0 tuner-c 5e-4 0"
)
# (The stages tagged tuner-b, b and c bracket the seed-0 grids that had selected an end: the tuner's 3e-4 on both
# tasks, the full model's 1e-5 and LoRA's 3e-4 on medicine; c, at 5e-4, also asks whether the LoRA tuner's
# seed-0 lead on medicine is an lr between MeZO's 3e-4 and 1e-3. 5e-4 had the lowest dev loss of MeZO on LoRA's
# grid on seed 0, so it got seeds 1 and 2 (s1-5e-4, s2-5e-4); tuner-c gave the tuner 5e-4 on seed 0 as well,
# so that both arms have the same grid there.)
# (the full-model MeZO runs on valid_parentheses are reports/baselines-smollm2's: its vp/merged bench)

# 3. Merge each arm's stages into one bench per arm (the folders arms.json names), then the summary table.
MERGES=(
    "vp-lora: vp-lora-a vp-lora-b vp-lora-c vp-lora-s1 vp-lora-s2"
    "vp-lora-fo: vp-lora-fo-a vp-lora-fo-b vp-lora-fo-c vp-lora-fo-s1 vp-lora-fo-s2"
    "vp-lora-tuner: vp-lora-tuner-a vp-lora-tuner-b vp-lora-tuner-s1 vp-lora-tuner-s2"
    "med-lora: med-lora-a med-lora-b med-lora-c med-lora-s1 med-lora-s2 med-lora-s1-5e-4 med-lora-s2-5e-4"
    "med-lora-tuner: med-lora-tuner-a med-lora-tuner-b med-lora-tuner-c med-lora-tuner-s1 med-lora-tuner-s2"
    "med-full: med-full-a med-full-b med-full-s1 med-full-s2"
    "med-lora-fo: med-lora-fo-a med-lora-fo-s1 med-lora-fo-s2"
)
merge() {
    for m in "${MERGES[@]}"; do
        out=${m%%:*}; parts=()
        for p in ${m#*:}; do parts+=("$R/$p"); done
        [ -d "$R/$out" ] || $PY cli.py bench-merge "${parts[@]}" --out "$R/$out"
    done
    $PY benchmarks/peft_summary.py "$R" > "$R/summary.md"
    cat "$R/summary.md"
}

case ${1:-} in
    tuner) tuner ;;
    merge) merge ;;
    all) tuner
         for s in "${STAGES[@]}"; do
             read -r SCREEN METHOD FULL TAG LRS SEEDS_RUN <<< "$s"
             [ -d "$R/$SCREEN-$([ "$FULL" = 1 ] && echo full || echo lora)-$TAG" ] || stage
         done
         merge ;;
    "") [ -n "${SCREEN:-}" ] || { echo "usage: run.sh all|tuner|merge, or SCREEN=vp|med [METHOD=..] [FULL=1] [TAG=..] [LRS=..] [SEEDS_RUN=..] run.sh" >&2; exit 2; }
        stage ;;
    *) echo "usage: run.sh all|tuner|merge, or SCREEN=vp|med ... run.sh" >&2; exit 2 ;;
esac
