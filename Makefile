# The two commands the README opens with: `make demo` and `make test`. Both build .venv/ here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install bench clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "codestral-ls needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)

# Reinstalls when pyproject.toml changes. llama-cpp-python compiles from source (~5 min on 2 cores,
# once: pip caches the wheel); its multimodal library is not used, so it is not built.
# torch==2.13.0 is pinned: an unpinned torch pulls a multi-GB CUDA build (GPU users: see README).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(PY) -m pip install --quiet -e '.[model,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/codestral-ls complete server/samples/sample.py:8:11

lint: $(STAMP)
	$(VENV)/bin/ruff check server engine tests benchmarks editors

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -ra

clean:
	rm -rf $(VENV) build *.egg-info
