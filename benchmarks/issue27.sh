#!/usr/bin/env bash
# Issue 27's headline in one GPU command: TRL's sweep, then the headline table (every figure a median of repeats on
# this one GPU). Usage on the GPU host, from the repo root (carry .whl and .bench):
#
#   OUT=$OUT bash benchmarks/issue27.sh                                   # full: ~9 min (BUDGET=540)
#   OUT=$OUT REPEATS=2 SWEEP_CKPT=0 SWEEP_LIGER=1 BUDGET=360 bash benchmarks/issue27.sh   # reduced: ~6 min
#   OUT=$OUT STAGES=headline CONTENDERS="forgekit hf:ckpt=0|hf:ckpt=1" REPEATS=1 BUDGET=200 TAG=issue27-h100-b \
#       bash benchmarks/issue27.sh                                        # top-up on the same warm host
#
# Stages, each under a hard `timeout` and each writing its JSON + markdown into $OUT as it goes (run.py rewrites
# them after every run), so a stage cut short keeps what it measured:
#   env       install the wheelhouse, record the GPU and versions                    ($OUT/env.txt)
#   sweep     TRL at checkpointing x batch x Liger, one process, the fastest that fits ($OUT/issue27-trl-sweep.*)
#   headline  TRL at its best and forgekit, REPEATS each, interleaved; then the usual recipe (hf, no checkpointing,
#             checkpointing if that runs out of memory) once                         ($OUT/$TAG.*)
# run.py's --budget-s starts no run that would end after the stage's share of BUDGET (it lists it as not run).
set -u
OUT=${OUT:-/tmp/fk-out}; mkdir -p "$OUT/logs"
WORK=${WORK:-/tmp/fkbench}
BUDGET=${BUDGET:-540}           # seconds for the whole script
STEPS=${STEPS:-6}               # optimizer steps per run; tokens/s is timed over steps 2..STEPS
REPEATS=${REPEATS:-3}
SWEEP_S=${SWEEP_S:-215}         # the sweep stage's share (includes building the 16 GB random model, ~30 s)
SWEEP_CKPT=${SWEEP_CKPT:-1,0}; SWEEP_BATCH=${SWEEP_BATCH:-2,4}; SWEEP_LIGER=${SWEEP_LIGER:-0,1}
CONTENDERS=${CONTENDERS:-trl:best forgekit hf:ckpt=0|hf:ckpt=1}
ONCE=${ONCE:-hf:ckpt=0|hf:ckpt=1}
TAG=${TAG:-issue27-h100}
STAGES=${STAGES:-env sweep headline}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[issue27 $(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/issue27.log"; }
COMMON=(--model llama8b --steps "$STEPS" --tokens-per-step 8192 --tokenizer .bench/tokenizer --work "$WORK"
        --out "$OUT" --timeout 240)

FKB_INSTALL_S=120 source benchmarks/device_env.sh > "$OUT/env.txt" 2>&1   # always: later stages need the env
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used --format=csv >> "$OUT/env.txt" 2>&1
log "env done: $(grep '^device:' "$OUT/env.txt")"

if [[ " $STAGES " == *" sweep "* ]]; then
  s=$(( SWEEP_S < $(left) - 20 ? SWEEP_S : $(left) - 20 ))
  log "sweep: budget ${s}s"
  timeout $(( s + 15 )) python3 benchmarks/run.py "${COMMON[@]}" --trl-sweep --sweep-only --budget-s "$s" \
    --sweep-ckpt "$SWEEP_CKPT" --sweep-batch "$SWEEP_BATCH" --sweep-liger "$SWEEP_LIGER" \
    --tag issue27-trl-sweep > "$OUT/sweep.log" 2>&1
  log "sweep rc=$? $(grep -o 'TRL at its best: .*' "$OUT/issue27-trl-sweep.md" 2>/dev/null)"
fi

if [[ " $STAGES " == *" headline "* ]]; then
  s=$(( $(left) - 25 ))
  from=(); [[ -f "$OUT/issue27-trl-sweep.json" ]] && from=(--sweep-from "$OUT/issue27-trl-sweep.json")
  log "headline: budget ${s}s, contenders: $CONTENDERS"
  # shellcheck disable=SC2086  # CONTENDERS is a list of words
  timeout $(( s + 15 )) python3 benchmarks/run.py "${COMMON[@]}" "${from[@]}" --contenders $CONTENDERS \
    --once $ONCE --repeats "$REPEATS" --budget-s "$s" --tag "$TAG" > "$OUT/headline.log" 2>&1
  log "headline rc=$?"
fi

cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null   # every child's own log (the JSON holds the figures)
log "done; $(left)s of the budget left"
