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

demo: install
	$(PY) train.py experiment=demo hydra.run.dir=outputs/demo/latest_$$(date +%Y%m%d_%H%M%S)
	@echo "outputs: $$(ls -td outputs/demo/*/ | head -1)"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m textinv.bench

clean:
	rm -rf outputs multirun .pytest_cache

# Sweeps (conf/sweep/): one folder per point under outputs/sweeps/<name>/; re-running skips finished points and
# resumes unfinished ones. Extra overrides via ARGS, e.g. make sweep-lr ARGS="hydra/launcher=slurm trainer=ddp trainer.devices=4"
.PHONY: sweep-lr sweep-seed sweep-init sweep-steps sweep-table

sweep-lr sweep-seed sweep-init sweep-steps sweep-table: install
	$(PY) train.py sweep=$(@:sweep-%=%) $(ARGS)
