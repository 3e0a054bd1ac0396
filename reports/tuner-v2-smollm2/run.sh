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
