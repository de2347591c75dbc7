#!/usr/bin/env bash
# README "K-fold evaluation" as one command per fold, resumable (a finished step is skipped;
# `collect` and `train` resume where they stopped):
#   bash examples/kfold.sh F        # fold F of 7 (0..6): two multi-task LoRAs, generator, evaluation
#   bash examples/kfold.sh report   # the folds finished so far pooled into data/eval-folds
#   bash examples/kfold.sh own [F ...]  # the own LoRAs of folds' held-out tasks (default all)
# RULES=1: the generator is trained with suite version 4's rule tasks beside G (their own
# held-out tasks left out of training and evaluation), on the same multi-task LoRAs, and
# evaluated on the same held-out tasks; outputs named v4, `report` into data/eval-folds-v4.
# STEPS=N: the generator trained N steps instead of 200 (same LoRAs); outputs and `report`
# suffixed -sN. POOLED=1: the generator reads each example's MiniLM sentence vector, not its
# token states (`--prompt-tokens 1`); suffixed -pooled. ON_ALL=1: the residual sits on the
# LoRA of all training tasks and is trained on P and G (not G alone); suffixed -onall.
# MIX=K: the decoder is a mixture head of K directions (`train --mix K`); suffixed -mixK.
# SUBSET=K: a point of the curve over the number of training tasks: every K-th task of P and
# of G (in suite order, after the filter) is kept, the rest dropped from both LoRAs (their
# steps divided by K, so that the steps per task stay) and from the generator's training;
# the same held-out tasks; suffixed -subK.
# MORE=1: suite version 5's 49 further tasks (formats, calendar, math, itemlists,
# associations), less the 14 that fail the suite filter, join the training tasks,
# alternately P and G as version 5's fold split puts them (the version-3 tasks keep their
# halves), both LoRAs' steps in proportion; the rule
# tasks and the new families' held-out tasks are neither trained on nor evaluated, so the
# bars are on the same held-out tasks; suffixed -more.
# FALLBACK_ALL=1: the evaluation's no-harm check weighs the LoRA of all training tasks against
# each DnD adapter (`eval --fallback`, `plugin.fallback_adapter`) instead of the LoRA the
# residual sits on; the same generator, the evaluation suffixed -fball.
# The evaluation's retrieval and selection columns (`eval --nearest 5 --select 16`) read the own
# LoRAs that `own` collected; selection ranks by NLL (`--select-by nll`, as in every published
# run of this script; SELECT_BY=greedy: by greedy answers, the evaluation suffixed -greedy).
# RETRIEVAL_ON_ALL=1: retrieval as a move of the LoRA of all training tasks (`eval --nearest-on`);
# the same generator, the evaluation suffixed -ronall. NEAREST=K: retrieval's neighbours
# (default 5), suffixed -kK. TF=1: the evaluation teacher-forced only (no decoding, minutes
# instead of half an hour); suffixed -tf.
# DND: the command to run (default `cargo run -q --`; a prebuilt binary's path spares cargo's
# start-up and keeps one build for a chain of folds). Outputs go under data/.
set -euo pipefail
DND=${DND:-cargo run -q --}
source "$(dirname "$0")/folds.sh" # FOLDS, FAIL, both, minus, dropped
# The folds' tasks, LoRAs and held-out sets are suite version 3's.
export DND_SUITE_VERSION=3
[ "${MORE:-0}" = 1 ] && export DND_SUITE_VERSION=5
V=$DND_SUITE_VERSION
[ "${RULES:-0}" = 1 ] && V=4
STEPS=${STEPS:-200}
SHAPE=()
[ "${POOLED:-0}" = 1 ] && SHAPE=(--prompt-tokens 1)
[ -n "${MIX:-}" ] && SHAPE+=(--mix "$MIX")

# Fold 0 was run first as "A second seed" (README): its names and `--seed 1` are kept so
# that this script gives exactly the numbers published for it.
names() {
  if [ "$1" = 0 ]; then MT=multitask-v3 GEN=data/gen-ex-v3-c1s1 SEED=(--seed 1)
  else MT=multitask-v3-f$1 GEN=data/gen-ex-v3-c1-f$1 SEED=(); fi
  ALL=multitask-all-v3-f$1 EV=data/eval-ex-v3-c1-all-f$1 OUT=data/eval-folds
  if [ "$V" = 4 ]; then GEN=data/gen-ex-v4-c1-f$1 EV=data/eval-ex-v4-c1-all-f$1 OUT=data/eval-folds-v4; fi
  if [ "$STEPS" != 200 ]; then GEN+=-s$STEPS EV+=-s$STEPS OUT+=-s$STEPS; fi
  if [ "${POOLED:-0}" = 1 ]; then GEN+=-pooled EV+=-pooled OUT+=-pooled; fi
  if [ -n "${MIX:-}" ]; then GEN+=-mix$MIX EV+=-mix$MIX OUT+=-mix$MIX; fi
  if [ "${ON_ALL:-0}" = 1 ]; then GEN+=-onall EV+=-onall OUT+=-onall; fi
  if [ "${MORE:-0}" = 1 ]; then MT+=-more ALL+=-more GEN+=-more EV+=-more OUT+=-more; fi
  if [ -n "${SUBSET:-}" ]; then MT+=-sub$SUBSET ALL+=-sub$SUBSET GEN+=-sub$SUBSET EV+=-sub$SUBSET OUT+=-sub$SUBSET; fi
  if [ "${FALLBACK_ALL:-0}" = 1 ]; then EV+=-fball OUT+=-fball; fi
  if [ "${RETRIEVAL_ON_ALL:-0}" = 1 ]; then EV+=-ronall OUT+=-ronall; fi
  if [ -n "${NEAREST:-}" ]; then EV+=-k$NEAREST OUT+=-k$NEAREST; fi
  if [ "${TF:-0}" = 1 ]; then EV+=-tf OUT+=-tf; fi
  if [ "${SELECT_BY:-nll}" != nll ]; then EV+=-$SELECT_BY OUT+=-$SELECT_BY; fi
}

if [ "${1:-}" = report ]; then
  reports=()
  for F in $(seq 0 $((FOLDS - 1))); do
    names "$F"
    [ -e "$EV/nll.json" ] && reports+=("$EV/nll.json")
  done
  [ ${#reports[@]} -gt 0 ] || { echo "no fold has finished" >&2; exit 1; }
  echo "pooling ${#reports[@]} folds: ${reports[*]}"
  $DND eval --report "${reports[@]}" --out "$OUT"
  exit
fi

if [ "${1:-}" = own ]; then
  # Each task's own LoRA (the suite filter's recipe: 64 steps), for the held-out tasks of
  # the folds named (default every fold: every task that passes the filter), into the folder
  # every evaluation reads. A fold's evaluation then has the own-LoRA column (the oracle)
  # and averages the LoRAs there of its training tasks (the other folds' held-out tasks).
  shift
  FS=("$@")
  [ ${#FS[@]} -gt 0 ] || mapfile -t FS < <(seq 0 $((FOLDS - 1)))
  for F in "${FS[@]}"; do
    # Version 3's held-out tasks: the only ones any evaluation here scores.
    eval "$(DND_SUITE_VERSION=3 $DND tasks --hold-out-every $FOLDS --fold "$F")"
    DND_SUITE_VERSION=3 $DND collect --only "$(minus "$H" "$FAIL")" --checkpoints 1 \
      --out data/train-loras-v3
  done
  exit
fi

F=${1:?usage: [RULES=1] examples/kfold.sh FOLD (0..$((FOLDS - 1))) | report | own [FOLD ...]}
names "$F"
eval "$($DND tasks --hold-out-every $FOLDS --fold "$F")" # H: held out; P, G: the training halves
# SUBSET=K: the dropped training tasks are added to every list that training leaves out
# (the evaluation scores held-out tasks only, so it needs no change).
DROP= LORA_P=500 LORA_ALL=1000
if [ -n "${SUBSET:-}" ]; then
  DROP=$(dropped "$(minus "$P" $FAIL)" "$SUBSET"),$(dropped "$(minus "$G" $FAIL)" "$SUBSET")
  LORA_P=$((500 / SUBSET)) LORA_ALL=$((1000 / SUBSET))
  FAIL_P=$(both "$P" $FAIL) FAIL_G=$(both "$G" $FAIL)
  echo "SUBSET=$SUBSET: $(minus "$(minus "$P" "$FAIL_P")" "$DROP" | tr , '\n' | wc -l) of P and" \
    "$(minus "$(minus "$G" "$FAIL_G")" "$DROP" | tr , '\n' | wc -l) of G kept"
fi
if [ "${MORE:-0}" = 1 ]; then
  # Version 5's split keeps version 3's halves (its tasks come first in suite order); the
  # rule tasks leave training with DROP, the held-out tasks of other versions the evaluation.
  eval "$(DND_SUITE_VERSION=3 $DND tasks --hold-out-every $FOLDS --fold "$F" | sed 's/=/3=/')"
  RULES_PG=$(tr , '\n' <<<"$P,$G" | grep '^rule_' | paste -sd,)
  DROP=${DROP:+$DROP,}$RULES_PG
  count() { minus "$(minus "$1" "$FAIL")" "$DROP" | tr , '\n' | grep -c .; }
  LORA_P=$((500 * $(count "$P") / $(count "$P3"))) LORA_ALL=$((1000 * $(count "$P,$G") / $(count "$P3,$G3")))
  echo "MORE=1: $(count "$P") tasks in P, $(count "$G") in G; LoRA steps $LORA_P and $LORA_ALL"
fi
# Version 4's held-out rule tasks (with MORE=1 every held-out task not of version 3):
# neither trained on nor evaluated (the bars are on version 3's H).
RULE_H=
[ "${MORE:-0}" = 1 ] && RULE_H=$(minus "$H" "$H3")
if [ "$V" = 4 ]; then
  RULE_H=$(DND_SUITE_VERSION=4 $DND tasks --hold-out-every $FOLDS --fold "$F" | sed -n 's/^H=//p' |
    tr , '\n' | grep '^rule_' | paste -sd,)
fi
echo "fold $F (suite version $V for the generator): $(date -u) H=$H"
UNDER_P=data/$MT/$MT/step-$(printf %06d $LORA_P) UNDER_ALL=data/$ALL/$ALL/step-$(printf %06d $LORA_ALL)
if [ ! -e "$UNDER_P" ]; then
  # The LoRA the residual sits on: one LoRA on the pooled examples of P.
  $DND collect --except "$H,$G,$(both "$P" $FAIL)${DROP:+,$DROP}" --pool "$MT" --steps $LORA_P \
    --checkpoints 1 --warmup 20 --out "data/$MT"
fi
echo "multi-task LoRA done: $(date -u)"
if [ ! -e "$UNDER_ALL" ]; then
  # The issue's baseline, to beat: one LoRA on the pooled examples of every training task
  # (P and G), with steps in proportion to the tasks as for multitask108.
  $DND collect --except "$H,$(both "$P" $FAIL),$(both "$G" $FAIL)${DROP:+,$DROP}" --pool "$ALL" \
    --steps $LORA_ALL \
    --checkpoints 1 --warmup 20 --out "data/$ALL"
fi
echo "multi-task LoRA of all training tasks done: $(date -u)"
if ! python3 -c "import json,sys; sys.exit(json.load(open('$GEN/train.json'))['step'] < $STEPS)" 2>/dev/null; then
  # The residual that reads a task's examples, trained end to end on G (and with RULES=1
  # the rule tasks not held out) on top of the LoRA of P; with ON_ALL=1 on P and G on top
  # of the LoRA of all.
  UNDER=$UNDER_P SKIP=$P
  [ "${ON_ALL:-0}" = 1 ] && UNDER=$UNDER_ALL SKIP=$(both "$P" $FAIL)
  DND_SUITE_VERSION=$V $DND train --checkpoints "data/$MT" --suite builtin \
    --except "$SKIP,$(both "$G" $FAIL),$(both "$H" $FAIL)${DROP:+,$DROP}" --hold-out-every $FOLDS --fold "$F" \
    --objective sft --condition examples --residual-from "$UNDER" \
    --steps "$STEPS" --batch 2 --lr 2e-3 --residual-l2 0.1 --save-every 25 \
    --contrast 1 --contrast-margin 0.1 "${SEED[@]}" "${SHAPE[@]}" --out "$GEN"
fi
echo "training done: $(date -u)"
# The averaged-LoRA and own-LoRA columns read what `own` collected (empty until then).
mkdir -p data/train-loras-v3
EXTRA=()
[ "${FALLBACK_ALL:-0}" = 1 ] && EXTRA+=(--fallback "$UNDER_ALL")
[ "${RETRIEVAL_ON_ALL:-0}" = 1 ] && EXTRA+=(--nearest-on "$UNDER_ALL")
[ -n "${NEAREST:-}" ] && EXTRA+=(--nearest "$NEAREST")
DECODE=(--decode --decode-limit 30 --guard 16)
[ "${TF:-0}" = 1 ] && DECODE=()
if [ ! -e "$EV/nll.json" ]; then
  DND_SUITE_VERSION=$V $DND eval --generator "$GEN" --nll --limit 20 "${DECODE[@]}" \
    --batches 1 --except "$FAIL${RULE_H:+,$RULE_H}" --checkpoints data/train-loras-v3 \
    --select 16 --select-by "${SELECT_BY:-nll}" --multitask "$UNDER_P" --multitask "$UNDER_ALL" "${EXTRA[@]}" \
    --dtype f32 --out "$EV"
fi
echo "evaluation done: $(date -u)"
