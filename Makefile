# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The demo: the SD row (baseline=true) and the SD + TI row of the built-in concept on the tiny model, then
# the table, its plot and the figures, all under one folder.
DEMO_DIR ?= outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

demo: install
	$(PY) train.py experiment=demo baseline=true hydra.run.dir=$(DEMO_DIR)/baseline
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/ti
	$(PY) experiments/table.py $(DEMO_DIR) --out $(DEMO_DIR)/table
	$(PY) experiments/figures.py compare --baseline $(DEMO_DIR)/baseline --ti $(DEMO_DIR)/ti --out $(DEMO_DIR)/figures/compare
	$(PY) experiments/figures.py steps --run $(DEMO_DIR)/ti --baseline $(DEMO_DIR)/baseline --out $(DEMO_DIR)/figures/steps
	@echo
	@echo "demo outputs in $(DEMO_DIR)/:"
	@echo "  ti/demo-toy.pt   the learned embedding for every tool (ti/diffusers/, ti/safetensors/: other layouts)"
	@echo "  ti/eval/, baseline/eval/                          metrics.json and generated images per evaluation"
	@echo "  table/table.md, table/table.csv, table/tradeoff.png  the reconstruction/editability table and plot"
	@echo "  figures/compare/grid.png, figures/steps/steps.png  SD vs SD + TI, and the concept across steps"
	@echo "(random CLIP/Inception weights offline: the numbers exercise the pipeline, they mean nothing)"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m textinv.bench

clean:
	rm -rf outputs multirun .pytest_cache

# Sweeps (sweeps/*.yaml): one folder per point under outputs/sweeps/<name>/; re-running skips finished points and
# resumes unfinished ones. Extra overrides via ARGS, e.g. make sweep-lr ARGS="hydra/launcher=slurm trainer=ddp trainer.devices=4"
.PHONY: sweep-lr sweep-seed sweep-init sweep-steps sweep-table

sweep-lr sweep-seed sweep-init sweep-steps sweep-table: install
	$(PY) train.py sweep=$(@:sweep-%=%) $(ARGS)
