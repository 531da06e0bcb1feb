# Everyday entry points for nucleiseg. `make help` lists them.
PYTHON ?= python3
SWEEP_DIR ?= multirun_outputs/$(shell date +%Y-%m-%d)/$(shell date +%H-%M-%S)

.PHONY: help install test lint format train smoke sweep clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

install:  ## install nucleiseg and its dev tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the test suite
	$(PYTHON) -m pytest -q

lint:  ## ruff check + format check
	$(PYTHON) -m ruff check nucleiseg tests benchmarks
	$(PYTHON) -m ruff format --check nucleiseg tests benchmarks

format:  ## apply ruff fixes and formatting
	$(PYTHON) -m ruff check --fix nucleiseg tests benchmarks
	$(PYTHON) -m ruff format nucleiseg tests benchmarks

train:  ## the default run: synthetic data, U-Net, all three phases
	$(PYTHON) -m nucleiseg.train

smoke:  ## the same pipeline at toy size (under a minute on CPU)
	$(PYTHON) -m nucleiseg.train experiment=smoke

sweep:  ## the three backbones on the default dataset, one sweep dir
	$(PYTHON) -m nucleiseg.train -m backbone=unet,micronet,unetpp hydra.sweep.dir=$(SWEEP_DIR)

clean:  ## remove run outputs and caches (keeps multirun_outputs/.gitkeep)
	rm -rf outputs lightning_logs .pytest_cache .ruff_cache
	find multirun_outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
