#!/usr/bin/env bash
# One device session (see benchmarks/results/README.md): same-GPU comparison through forgekit's real path,
# then the gpu test tier. Usage on the GPU host, from the repo root: OUT=<dir> bash benchmarks/device_batch.sh
set -u
OUT=${OUT:-/tmp/fk-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh > "$OUT/env.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>&1
timeout ${BENCH_SECONDS:-380} python3 benchmarks/run.py --model llama8b --contenders ${CONTENDERS:-trl forgekit} \
  --steps ${STEPS:-8} --repeats ${REPEATS:-1} --tokens-per-step 8192 --tokenizer .bench/tokenizer \
  --tag ${TAG:-llama8b-h200-realpath} --out "$OUT" --timeout 300 > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
timeout ${TEST_SECONDS:-170} python3 -m pytest -m gpu tests/gpu/test_gpu.py -q -x -p no:cacheprovider \
  -k "${TESTS:-logits or finetune_through or packed_loss}" > "$OUT/gpu_tests.log" 2>&1
echo "tests rc=$?" >> "$OUT/gpu_tests.log"
