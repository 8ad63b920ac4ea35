# gpt2ft developer entry points: `make run` and `make test` work on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when a requirements file or the project metadata changed.
STAMP := $(VENV)/.installed
REQUIREMENTS := $(wildcard requirements/*.txt) pyproject.toml
SOURCES := api shared worker cli

.PHONY: run test lint format install tokenizer browser clean parity bench docker compose-smoke gpu-smoke

run: install
	$(BIN)/gpt2ft run

test: install tokenizer lint
	$(BIN)/pytest tests -v -rs

# Our engine vs the Hugging Face Trainer on the same data, seed and hyperparameters (CPU, ~minutes).
parity: install tokenizer
	$(BIN)/python -m bench.parity

# Our engine vs the Trainer (stock, bf16 + fused AdamW, + torch_compile) on gpt2-tiny and a
# gpt2-small shape, short records vs padding, MFU, then the API figures; last line `bench: ...`
# (bench/run.py; ~20 min on 2 cores, BENCH_QUICK=1 for one round of each, ~8 min).
bench: install tokenizer
	$(BIN)/python -m bench.run

# Every task x method through the worker's code on one GPU, with memory, tokens/s and MFU
# figures (bench/gpu_smoke.py; about 5 minutes on an H100/H200). GPU_SMOKE_DEVICE=cpu runs the
# same script on the CPU with gpt2-tiny. A GPU-lent session runs bench/gpu.sh instead.
gpu-smoke: install tokenizer
	$(BIN)/python -m bench.gpu_smoke

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(SOURCES)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The same two pip commands build the Docker images (Dockerfile.api, Dockerfile.worker).
$(STAMP): $(BIN)/python $(REQUIREMENTS)
	$(BIN)/python -m pip install -c requirements/constraints.txt -r requirements/dev.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

# OpenAI's GPT-2 BPE files into var/tokenizer/gpt2, where tests/conftest.py looks.
tokenizer: install
	$(BIN)/python -c "from pathlib import Path; \
	from shared.tokenizer_files import fetch_tokenizer_files as fetch; \
	print('tokenizer:', fetch(Path('var/tokenizer/gpt2')))"

# Debian's Chromium for tests/e2e/test_dashboard.py (skipped, saying why, when it is missing).
browser:
	@[ -x /usr/bin/chromium ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -q --no-install-recommends chromium; }

# A Docker daemon and Compose: installs Debian's docker.io and docker-compose and starts dockerd
# where none answers (root); leaves a host's own Docker alone.
docker:
	scripts/docker-daemon.sh

# The deployment proved by running it (Docker; ~4 min warm, ~15 min on a fresh machine):
# builds both images, starts docker-compose.yml with docker-compose.cpu.yml (no GPU), drives
# the openai SDK flow (upload, job, succeeded, completion), then down -v. Not in `make test`
# for its length; .ci/run runs it after the tests.
compose-smoke: install docker
	scripts/compose-smoke.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	@echo "kept var/ (your database, uploads, models, dev API key): rm -rf var to reset"
