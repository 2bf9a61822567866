#!/usr/bin/env bash
# Reruns the lever table of BENCHMARKS.md with one `moth bench` call: the
# reference preset, each lever alone on top of it, and the default preset,
# on the same base model, budget and distance protocol.
#
#   scripts/levers.sh                       # the table (hours on 2 CPU cores)
#   EPOCHS=0.01 SAMPLES=2 STEPS=5 POINTS=1 scripts/levers.sh \
#       --session-config '{"warmup":{"budget":{"steps":3}}}'
#                                           # a smoke run of every variant (about 25 min
#                                           # at one thread: the epochs=2 variant sets its
#                                           # own length)
#
# Environment: EPOCHS (default 1, the epochs after warm-up of every variant
# that does not set its own), SAMPLES and STEPS (test samples per class and
# inversion steps per direction of the distance measurements; default 32
# and 200, the quick protocol's), POINTS (distance measurements per run,
# default 4), OUT (default runs/levers), OMP_NUM_THREADS as usual. Other
# arguments go to `moth bench` as they are; they must not repeat an option
# set here (clap refuses an option given twice).
set -euo pipefail
cd "$(dirname "$0")/.."
ref="moth+preset=reference"
variants=(
    "$ref"                                   # the authors' settings
    "$ref+stamp_at_least=1"                  # never a step without a stamp
    "$ref+portion=0.3"                       # stamping portion
    "$ref+pairs_per_step=5"                  # five disjoint pairs per step
    "$ref+pairs_per_step=5+portion=1.0"
    "$ref+period=1"                          # period length
    "$ref+first.steps=100+later.steps=25"    # inversion budgets halved
    "$ref+warmup.budget.steps=100+inversion.early_stop=10"  # cheaper inversions
    "$ref+period=6+later.steps=0"            # reuse: later steps stamp the period's trigger
    "$ref+lr=3e-4"                           # training learning rate
    "$ref+accuracy_every=0"                  # fixed epochs, no accuracy stop
    "$ref+epochs=2"                          # the reference's own 2 epochs
    "moth+epochs=2"                          # the default preset, with its own 2-epoch budget
    "moth+epochs=2+recover_steps=0"          # without recovery: stop at the first crossing
    "moth+epochs=2+period=3+later.steps=50"  # without reuse: invert at every step
    "moth+recover_steps=0+period=3+later.steps=50"  # the previous release's default
    "asymmetric"                             # default preset, one direction per step (Fig. 6)
)
joined=$(IFS=,; echo "${variants[*]}")
exec cargo run --release --quiet -- bench --epochs "${EPOCHS:-1}" --samples "${SAMPLES:-32}" \
    --steps "${STEPS:-200}" --points "${POINTS:-4}" --variants "$joined" --out "${OUT:-runs/levers}" "$@"
