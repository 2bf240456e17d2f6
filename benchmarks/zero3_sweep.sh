#!/usr/bin/env bash
# ZeRO-3 full fine-tuning of the 8B shape on 2 GPUs: the shipped zero_3.json against larger DeepSpeed buckets
# and more tokens per optimizer step. On the GPU host, from the repo root:
#   OUT=<dir> REPEATS=1 STEPS=30 VARIANTS="base buckets buckets16k" bash benchmarks/zero3_sweep.sh
set -u
OUT=${OUT:-/tmp/fk-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh > "$OUT/env.txt" 2>&1
FULL="forgekit:workers=2,zero=3,rows=4,set.lora_config=null,set.learning_rate=1e-5"
BUCKETS="set.deepspeed={config_path: $PWD/benchmarks/ds/zero_3_buckets_2e8.json}"
CONTENDERS=()
for v in ${VARIANTS:-base buckets buckets16k}; do
  case $v in
    base) CONTENDERS+=("$FULL") ;;
    buckets) CONTENDERS+=("$FULL,$BUCKETS") ;;
    buckets16k) CONTENDERS+=("$FULL,$BUCKETS,set.gradient_accumulation_steps=2") ;;
    base16k) CONTENDERS+=("$FULL,set.gradient_accumulation_steps=2") ;;
  esac
done
python3 benchmarks/run.py --model llama8b --steps ${STEPS:-30} --repeats ${REPEATS:-1} --tokens-per-step 8192 \
  --tokenizer .bench/tokenizer --contenders "${CONTENDERS[@]}" --timeout ${TIMEOUT:-260} \
  --tag ${TAG:-llama8b-2xh200-zero3-sweep} --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
