# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo compare toyworld test test-slow bench bench-app clean app rate-demo gpu-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The demo: the study in the pretrained miniature world (textinv.toyworld): the SD row (baseline=true) and
# the SD + TI row of the toy_heart concept, what their images show, then the table, its plot and the figures.
DEMO_DIR ?= outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

demo: install
	$(PY) train.py experiment=demo baseline=true hydra.run.dir=$(DEMO_DIR)/baseline
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/ti
	$(PY) -m textinv.toyworld attributes $(DEMO_DIR)/baseline $(DEMO_DIR)/ti
	$(PY) experiments/table.py $(DEMO_DIR) --out $(DEMO_DIR)/table
	$(PY) experiments/figures.py compare --baseline $(DEMO_DIR)/baseline --ti $(DEMO_DIR)/ti --out $(DEMO_DIR)/figures/compare
	$(PY) experiments/figures.py steps --run $(DEMO_DIR)/ti --baseline $(DEMO_DIR)/baseline --out $(DEMO_DIR)/figures/steps
	@echo
	@echo "demo outputs in $(DEMO_DIR)/:"
	@echo "  ti/toy-heart.pt   the learned embedding for every tool (ti/diffusers/, ti/safetensors/: other layouts)"
	@echo "  ti/eval/, baseline/eval/                          metrics.json, attributes.json and generated images"
	@echo "  table/table.md, table/table.csv, table/tradeoff.png  the reconstruction/editability table and plot"
	@echo "  figures/compare/grid.png, figures/steps/steps.png  SD vs SD + TI, and the concept across steps"
	@echo "(toy-world numbers: the miniature world's CLIP scores them; they are not comparable with real SD's)"

# Textual inversion vs a hypernetwork on one protocol (the miniature world): the SD, SD + TI and SD + HN rows of a style
# (toy_dots) and an object (toy_heart) over seeds 0-2 (sweeps/method.yaml: same steps, prompts, evaluation seeds and
# scorer); then the table over both concepts, one per concept, and per concept the three rows' images side by side.
# Resumable: run it again to skip finished points. Fewer points: make compare ARGS="seed=0 concept=toy_dots"
COMPARE_DIR ?= outputs/compare

compare: install
	$(PY) train.py experiment=toyworld sweep=method hydra.sweep.dir=$(COMPARE_DIR)/runs $(ARGS)
	$(PY) experiments/table.py $(COMPARE_DIR)/runs --out $(COMPARE_DIR)/table
	for c in toy_dots toy_heart; do \
	  ls -d $(COMPARE_DIR)/runs/concept=$$c,* >/dev/null 2>&1 || continue; \
	  $(PY) experiments/table.py $(COMPARE_DIR)/runs/concept=$$c,* --out $(COMPARE_DIR)/table_$$c || exit 1; \
	  $(PY) experiments/figures.py compare --baseline $(COMPARE_DIR)/runs/concept=$$c,row=sd,seed=0 \
	    --ti $(COMPARE_DIR)/runs/concept=$$c,row=ti,seed=0 $(COMPARE_DIR)/runs/concept=$$c,row=hn,seed=0 \
	    --out $(COMPARE_DIR)/figures/$$c || exit 1; \
	done

# Retrain the miniature world from scratch (about 90 minutes on 2 CPU cores; resumable: run it again to go on,
# or in pieces with ARGS="--minutes 30"). Writes src/textinv/toyworld/weights/ (committed).
toyworld: install
	$(PY) -m textinv.toyworld pretrain $(ARGS)

# One pytest-xdist worker per core (at most 4: each holds its own tiny models), whole files per worker so module
# fixtures are built once, in tests/conftest.py's order (longest first; xdist would sort by test count);
# TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 4 ? 4 : n )))

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Tests marked slow (pytest -m slow): compile=true with the inductor backend (minutes of C++ compile on a CPU).
test-slow: install
	$(PY) -m pytest -q -m slow

# SD 1.5 architecture (training step vs floor, evaluation generation), then SDXL's architecture at 256 px: training
# step vs its floor and vs diffusers' textual_inversion_sdxl.py (PEER_SCRIPT=path/to/it; skipped without one).
# SDXL in fp32 holds ~13 GiB of weights per process (peak ~18 GiB); parts run one at a time.
PEER_SCRIPT ?= $(TEXTINV_PEER_SCRIPT)
# PEER_SCRIPT_SD: diffusers' examples/textual_inversion/textual_inversion.py, the SD 1.5 peer (skipped without one)
PEER_SCRIPT_SD ?=

# Every part runs REPEATS times, alternating (rotated order, each in its own process); medians with their spread.
# The *_compiled parts are compile=true (inductor: a C++ compiler on CPU); their compile time and break-even step.
REPEATS ?= 3
SD_PARTS_WITH_PEER := floor,train,train_compiled,train_hn,generate,generate_compiled,peer

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m textinv.bench --repeats $(REPEATS) --json outputs/bench/sd15.json \
		$(if $(PEER_SCRIPT_SD),--parts $(SD_PARTS_WITH_PEER) --peer-script $(PEER_SCRIPT_SD))
	$(PY) -m textinv.bench --model sdxl_arch --resolution 256 --steps 5 --repeats $(REPEATS) \
		--parts floor,train,train_compiled,peer --json outputs/bench/sdxl.json $(if $(PEER_SCRIPT),--peer-script $(PEER_SCRIPT))

# One prepared script for a GPU (SD 1.5 at 512 px and SDXL at 1024 px, bf16 frozen weights; evaluation images/s; peak
# memory; diffusers' scripts when given; 2-rank DDP on 2 GPUs; GPU-hours of the study). Without a GPU: the same
# script on tiny models on the CPU, and it says so. PEER_SCRIPT_SD=.../textual_inversion.py PEER_SCRIPT=..._sdxl.py
gpu-check: install
	$(PY) -m textinv.bench.gpu_check --json outputs/bench/gpu-check.json $(if $(PEER_SCRIPT_SD),--peer-script-sd $(PEER_SCRIPT_SD)) \
		$(if $(PEER_SCRIPT),--peer-script-sdxl $(PEER_SCRIPT)) $(ARGS)

# The local web page over outputs/ (ARGS="--runs DIR --port N"); http://127.0.0.1:8000/ by default.
app: install
	$(PY) -m textinv app $(ARGS)

# A rehearsal of a human rating study on the newest make demo: 5 invites, the page served on RATE_PORT, five
# simulated raters answering through it (known truth), then the report (README "Human ratings").
RATE_PORT ?= 8765
rate-demo: install
	@demo=$$(ls -td outputs/demo/*/ 2>/dev/null | head -1); test -n "$$demo" || { echo "error: run make demo first"; exit 2; }; \
	study=$${demo}study-$$(date +%H-%M-%S); \
	$(PY) -m textinv rate new $${demo}baseline $${demo}ti --raters 5 --out $$study || exit 2; \
	$(PY) -m textinv app --study $$study --port $(RATE_PORT) & pid=$$!; \
	$(PY) -m textinv rate simulate $$study --url http://127.0.0.1:$(RATE_PORT) --seed 0; rc=$$?; kill $$pid; \
	test $$rc = 0 && $(PY) -m textinv rate report $$study

# The web page's targets (pages over 100 runs, a toy-world image from the page), on copies of the newest make demo.
bench-app: install
	$(PY) -m textinv.bench.app $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache

# Sweeps (sweeps/*.yaml): one folder per point under outputs/sweeps/<name>/; re-running skips finished points and
# resumes unfinished ones. Extra overrides via ARGS, e.g. make sweep-lr ARGS="hydra/launcher=slurm trainer=ddp trainer.devices=4"
.PHONY: sweep-lr sweep-seed sweep-init sweep-steps sweep-table

sweep-lr sweep-seed sweep-init sweep-steps sweep-table: install
	$(PY) train.py sweep=$(@:sweep-%=%) $(ARGS)
