# Everyday entry points for nucleiseg. `make help` lists them.
PYTHON ?= python3
# One timestamp per make call, so DDP ranks and the report all use the same sweep dir.
SWEEP_DIR ?= multirun_outputs/$(shell date +%Y-%m-%d/%H-%M-%S)
DATA ?= data
SEEDS ?= 0,1,2
LOGGER ?= csv
RUN ?= outputs/tnbc_cpu
ARGS ?=
TUNE_ARGS ?=
TNBC_ROOT ?= $(DATA)/TNBC_NucleiSegmentation
CONSEP_ROOT ?= $(DATA)/consep
CONSEP_RUN ?= outputs/consep_cpu
MPP ?= 0.25
GENERALIST_RUN ?= outputs/generalist_cpu
comma := ,
# the generalist's runs, one per seed of SEEDS, and their ensemble (make generalist-ensemble)
GENERALIST_SEED_RUNS = $(foreach seed,$(subst $(comma), ,$(SEEDS)),$(GENERALIST_RUN)_seed$(seed))
GENERALIST_ENSEMBLE = $(GENERALIST_RUN)_ensemble
ROWS ?= matrix

.PHONY: help install test lint format train smoke sweep paper report bench gpu-check study tnbc-cpu consep-cpu generalist generalist-ensemble generalization clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

install:  ## install nucleiseg and its dev tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

# the suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process so its
# module fixtures are built once; TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
test:  ## run the test suite (TEST_WORKERS=2 processes)
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

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

sweep:  ## the three backbones on the default dataset, one sweep dir, then the report
	$(PYTHON) -m nucleiseg.train -m backbone=unet,micronet,unetpp size=small \
		hydra.sweep.dir=$(SWEEP_DIR)
	$(PYTHON) -m nucleiseg.report $(SWEEP_DIR)

paper:  ## the paper's six runs x SEEDS on TNBC and Lizard (DATA=data), then the report
	$(PYTHON) -m nucleiseg.train -m dataset=lizard,tnbc backbone=unet,micronet,unetpp \
		seed=$(SEEDS) logger=$(LOGGER) paths.data_dir=$(DATA) hydra.sweep.dir=$(SWEEP_DIR)
	$(PYTHON) -m nucleiseg.report $(SWEEP_DIR)

report:  ## tables + figures for a sweep: make report SWEEP=multirun_outputs/<date>/<time>
	@test -n "$(SWEEP)" || (echo "usage: make report SWEEP=multirun_outputs/<date>/<time>" && exit 2)
	$(PYTHON) -m nucleiseg.report $(SWEEP)

# one fixed study dir: rerun `make study` to continue it
STUDY_DIR ?= multirun_outputs/study
# each part's report lands in STUDY_DOCS (docs/study/: the study so far, with its README)
STUDY_DOCS ?= docs/study
study:  ## the study (conf/study.yaml; DATA=data): phase 1 once per seed, arms branch from it; resumable, in parts with MAX_RUNS=n
	$(PYTHON) -m nucleiseg.study output_dir=$(STUDY_DIR) "overrides=['experiment=study','dataset.root=$(TNBC_ROOT)']" docs_dir=$(STUDY_DOCS) $(if $(MAX_RUNS),max_runs=$(MAX_RUNS),) $(STUDY_ARGS)

tnbc-cpu:  ## a TNBC model on a 2-core CPU: train, tune post-processing on validation, score test and CoNSeP (DATA=data, RUN=outputs/tnbc_cpu, ARGS=overrides for all, TUNE_ARGS=grid)
	$(PYTHON) -m nucleiseg.train experiment=tnbc_cpu dataset.root=$(TNBC_ROOT) paths.output_dir=$(RUN) $(ARGS)
	$(PYTHON) -m nucleiseg.tune_postprocess experiment=tnbc_cpu dataset.root=$(TNBC_ROOT) ckpt=$(RUN)/checkpoints/finetune/best.ckpt paths.output_dir=$(RUN)/tuning $(ARGS) $(TUNE_ARGS)
	$(PYTHON) -m nucleiseg.evaluate experiment=tnbc_cpu dataset.root=$(TNBC_ROOT) ckpt=$(RUN)/checkpoints/finetune/best.tuned.ckpt paths.output_dir=$(RUN)/eval_tnbc trainer.precision=32-true $(ARGS)
	$(PYTHON) -m nucleiseg.evaluate experiment=tnbc_cpu dataset=consep dataset.root=$(CONSEP_ROOT) ckpt=$(RUN)/checkpoints/finetune/best.tuned.ckpt paths.output_dir=$(RUN)/eval_consep trainer.precision=32-true $(ARGS)

consep-cpu:  ## CoNSeP on a 2-core CPU: train at MPP (0.25: its native 40x; 0.5: 20x), tune post-processing on validation, score test (DATA=data, CONSEP_RUN=outputs/consep_cpu, ARGS=overrides for all)
	$(PYTHON) -m nucleiseg.train experiment=consep_cpu dataset.root=$(CONSEP_ROOT) model.mpp=$(MPP) paths.output_dir=$(CONSEP_RUN) $(ARGS)
	$(PYTHON) -m nucleiseg.tune_postprocess experiment=consep_cpu dataset.root=$(CONSEP_ROOT) ckpt=$(CONSEP_RUN)/checkpoints/finetune/best.ckpt paths.output_dir=$(CONSEP_RUN)/tuning $(ARGS) $(TUNE_ARGS)
	$(PYTHON) -m nucleiseg.evaluate experiment=consep_cpu dataset.root=$(CONSEP_ROOT) ckpt=$(CONSEP_RUN)/checkpoints/finetune/best.tuned.ckpt paths.output_dir=$(CONSEP_RUN)/eval_test trainer.precision=32-true $(ARGS)

generalist:  ## a model for slides of other labs: TNBC + CoNSeP, stain augmentation, contours; train, tune on both validation splits, score each test split (DATA=data, GENERALIST_RUN=outputs/generalist_cpu)
	$(PYTHON) -m nucleiseg.train experiment=generalist_cpu paths.data_dir=$(DATA) paths.output_dir=$(GENERALIST_RUN) $(ARGS)
	$(PYTHON) -m nucleiseg.tune_postprocess experiment=generalist_cpu paths.data_dir=$(DATA) ckpt=$(GENERALIST_RUN)/checkpoints/finetune/best.ckpt paths.output_dir=$(GENERALIST_RUN)/tuning $(ARGS) $(TUNE_ARGS)
	$(PYTHON) -m nucleiseg.evaluate dataset=tnbc dataset.root=$(TNBC_ROOT) ckpt=$(GENERALIST_RUN)/checkpoints/finetune/best.tuned.ckpt paths.output_dir=$(GENERALIST_RUN)/eval_tnbc trainer.precision=32-true
	$(PYTHON) -m nucleiseg.evaluate dataset=consep dataset.root=$(CONSEP_ROOT) ckpt=$(GENERALIST_RUN)/checkpoints/finetune/best.tuned.ckpt paths.output_dir=$(GENERALIST_RUN)/eval_consep trainer.precision=32-true

generalist-ensemble:  ## the generalist once per seed (SEEDS=0,1,2: runs <GENERALIST_RUN>_seed<k>; a run already scored is kept, an unfinished one resumed), their maps averaged as one checkpoint (<GENERALIST_RUN>_ensemble/ensemble.ckpt), tuned on both validation splits, each test split scored
	for seed in $(subst $(comma), ,$(SEEDS)); do run=$(GENERALIST_RUN)_seed$$seed; \
	  if [ -f $$run/eval_consep/results.json ]; then echo "$$run: trained and scored, kept"; \
	  else $(MAKE) generalist GENERALIST_RUN=$$run ARGS="seed=$$seed $(ARGS)" || exit 1; fi; \
	done
	$(PYTHON) -m nucleiseg.ensemble "members=[$(subst $(eval) ,$(comma),$(strip $(foreach run,$(GENERALIST_SEED_RUNS),$(run)/checkpoints/finetune/best.ckpt)))]" output=$(GENERALIST_ENSEMBLE)/ensemble.ckpt overwrite=true
	$(PYTHON) -m nucleiseg.tune_postprocess experiment=generalist_cpu paths.data_dir=$(DATA) ckpt=$(GENERALIST_ENSEMBLE)/ensemble.ckpt paths.output_dir=$(GENERALIST_ENSEMBLE)/tuning $(TUNE_ARGS)
	$(PYTHON) -m nucleiseg.evaluate dataset=tnbc dataset.root=$(TNBC_ROOT) ckpt=$(GENERALIST_ENSEMBLE)/ensemble.tuned.ckpt paths.output_dir=$(GENERALIST_ENSEMBLE)/eval_tnbc trainer.precision=32-true
	$(PYTHON) -m nucleiseg.evaluate dataset=consep dataset.root=$(CONSEP_ROOT) ckpt=$(GENERALIST_ENSEMBLE)/ensemble.tuned.ckpt paths.output_dir=$(GENERALIST_ENSEMBLE)/eval_consep trainer.precision=32-true

generalization:  ## the generalization matrix: each source alone and the mix, scored on every source (DATA=data, ROWS=matrix or loso_tnbc, ARGS="extra_test=[my/folder]"); resumable
	$(PYTHON) -m nucleiseg.generalization data_dir=$(DATA) rows=$(ROWS) $(ARGS)

bench:  ## benchmarks: framework vs plain loop, phases, loader, tiled inference, start-up
	$(PYTHON) -m benchmarks.run

gpu-check:  ## on a GPU machine: bf16/compile/DDP smoke runs, FLOPs and MFU, GPU benchmarks (TNBC=<root> adds the sweep)
	$(PYTHON) -m benchmarks.gpu_check $(if $(TNBC),--tnbc-root $(TNBC),)

clean:  ## remove run outputs and caches (keeps multirun_outputs/.gitkeep)
	rm -rf outputs lightning_logs .pytest_cache .ruff_cache
	find multirun_outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
