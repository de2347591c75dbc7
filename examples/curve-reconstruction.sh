#!/usr/bin/env bash
# Issue 14's curve for the method's own objective: the decoder trained by reconstruction
# (weighted MSE to each training task's own LoRA, no residual) on 1/K of a fold's training
# tasks, then evaluated on the fold's held-out tasks like `kfold.sh`'s generators.
#   bash examples/kfold.sh own        # first: every task's own LoRA (the targets)
#   bash examples/curve-reconstruction.sh F K [K ...]   # fold F (0..6), one point per K
# K keeps every K-th training task (suite order after the filter, as `kfold.sh`'s SUBSET=K:
# of each training half, so the same tasks as the end-to-end curve's points); K=1 is all
# of them (113 in fold 0). The generator reads a task's examples, as the end-to-end
# generators do, so the objective is the only difference. Suite version 3 (the own LoRAs'
# tasks). The evaluation is teacher-forced (DECODE=1: also decoded, 30 test examples a
# task, as `kfold.sh`); its columns: base, the training tasks' own LoRAs averaged, the own
# LoRA, retrieval from the training tasks' own LoRAs and selection among them (`eval
# --select`), the fold's LoRA of all training tasks (`kfold.sh` with MORE=1 trains it), DnD
# and its shuffle control. Resumable; outputs go under data/. DND: the command to run
# (default `cargo run -q --`).
set -euo pipefail
DND=${DND:-cargo run -q --}
source "$(dirname "$0")/folds.sh" # FOLDS, FAIL, both, minus, dropped
export DND_SUITE_VERSION=3
F=${1:?usage: examples/curve-reconstruction.sh FOLD K [K ...]}
shift
[ $# -gt 0 ] || { echo "name at least one K (1: every training task)" >&2; exit 1; }
eval "$($DND tasks --hold-out-every $FOLDS --fold "$F")" # H: held out; P, G: the training halves
ALL=$(ls -d data/multitask-all-v3-f$F-more/multitask-all-v3-f$F-more/step-* | tail -1)
DECODE=() SUFFIX=-tf
[ "${DECODE:-0}" = 1 ] && DECODE=(--decode --decode-limit 30 --guard 16) SUFFIX=
for K in "$@"; do
  DROP=$(dropped "$(minus "$P" $FAIL)" "$K"),$(dropped "$(minus "$G" $FAIL)" "$K")
  EXCEPT=$(tr , '\n' <<<"$FAIL,$DROP" | grep . | paste -sd,)
  GEN=data/gen-recon-v3-f$F-sub$K EV=data/eval-recon-v3-f$F-sub$K$SUFFIX
  echo "fold $F, K=$K: $(minus "$(minus "$P,$G" $FAIL)" "$DROP" | tr , '\n' | grep -c .)" \
    "training tasks, $(date -u)"
  if ! python3 -c "import json,sys; d=json.load(open('$GEN/train.json')); sys.exit(d['step'] < d['config']['steps'])" 2>/dev/null; then
    $DND train --checkpoints data/train-loras-v3 --suite builtin --except "$EXCEPT" \
      --hold-out-every $FOLDS --fold "$F" --objective reconstruction --condition examples \
      --out "$GEN"
  fi
  echo "training done: $(date -u)"
  if [ ! -e "$EV/nll.json" ]; then
    $DND eval --generator "$GEN" --nll --limit 20 "${DECODE[@]}" --batches 1 --except "$EXCEPT" \
      --checkpoints data/train-loras-v3 --select 16 --select-by nll --multitask "$ALL" --dtype f32 --out "$EV"
  fi
  echo "evaluation done: $(date -u)"
done
