"""Shared fixtures: a tiny random Codestral-architecture model (benchmarks/tiny_model.py: as a
transformers folder for the torch runner, and as a GGUF for the llama.cpp runner), and the embedded
0.5B model loaded once per session (tests marked `model`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.tiny_model import build_tiny_model, write_tiny_gguf

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-codestral"))


@pytest.fixture(scope="session")
def tiny_torch_engine(tiny_model_dir: Path):
    from codestral_ls.engine import EngineOptions, ModelSpec, load_engine

    return load_engine(ModelSpec(model=str(tiny_model_dir), device="cpu"), EngineOptions())


@pytest.fixture(scope="session")
def tiny_engine(tiny_torch_engine):
    """The tiny model on the torch runner (tests/test_engine.py runs its tests on both runners)."""
    return tiny_torch_engine


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-codestral.gguf")


@pytest.fixture(scope="session")
def tiny_llamacpp_engine(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same tiny model from its GGUF on the llama.cpp runner (tokenizer from the GGUF)."""
    pytest.importorskip("llama_cpp")
    from codestral_ls.engine import EngineOptions, ModelSpec, load_engine

    with pytest.MonkeyPatch.context() as mp:  # the extracted tokenizer goes to a test cache, not the user's
        mp.setenv("CODESTRAL_LS_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_engine(ModelSpec(model=str(tiny_gguf), runner="llamacpp"), EngineOptions())


@pytest.fixture(scope="session")
def qwen_engine():
    """The embedded Qwen2.5-Coder-0.5B, loaded once per test session."""
    from codestral_ls.engine import EngineOptions, ModelSpec, load_engine

    return load_engine(ModelSpec(), EngineOptions())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA; none here")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
