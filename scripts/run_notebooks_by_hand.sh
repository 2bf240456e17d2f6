#!/usr/bin/env bash
# Default-parameter runs of every notebook, one after another, until a deadline (epoch seconds):
#   bash scripts/run_notebooks_by_hand.sh $(( $(date +%s) + 3600 ))
# or only some of them: bash scripts/run_notebooks_by_hand.sh DEADLINE cookbooks/lora_vs_full/lora_vs_full.ipynb ...
# Outputs and logs in /tmp/hand/; prints rc, wall time and the number of plots each notebook showed.
mkdir -p /tmp/hand
cd "$(dirname "$0")/.."
deadline=$1; shift
ALL="README.ipynb cookbooks/bring_your_own_data/bring_your_own_data.ipynb cookbooks/continue_from_checkpoint/continue_from_checkpoint.ipynb cookbooks/bring_any_hf_model/bring_any_hf_model.ipynb cookbooks/modifying_hyperparameters/modifying_hyperparameters.ipynb cookbooks/optimize_cost/optimize_cost.ipynb cookbooks/lora_vs_full/lora_vs_full.ipynb cookbooks/launch_as_job/launch_as_job.ipynb"
for nb in ${@:-$ALL}; do
  now=$(date +%s); left=$((deadline - now)); [ $left -lt 60 ] && { echo "$nb SKIPPED (deadline)"; continue; }
  name=$(basename $nb .ipynb); dir=$(dirname $nb)
  t0=$(date +%s)
  timeout $left .venv/bin/papermill $nb /tmp/hand/$name.out.ipynb --cwd $dir --kernel python3 -p RUN_ROOT /tmp/hand/root-$name > /tmp/hand/$name.log 2>&1
  rc=$?; t1=$(date +%s)
  imgs=$(python3 -c "
import json;nb=json.load(open('/tmp/hand/$name.out.ipynb'))
print(sum(1 for c in nb['cells'] if c['cell_type']=='code' for o in c.get('outputs',[]) if 'image/png' in o.get('data',{})))" 2>/dev/null)
  echo "$nb rc=$rc wall=$((t1-t0))s images=$imgs"
done
