"""The server counts tokens on the event loop while the engine thread encodes prompts with the same
tokenizer (issue: prove it safe or move it). Proven here: the same texts encoded from several threads
at once give exactly the sequential ids, for each tokenizer kind the engine uses (a Hugging Face fast
tokenizer, as the llama.cpp runner and HF folders load; mistral-common's SentencePiece for Codestral).

Why it holds: both encode without mutating shared state (the Rust `tokenizers` core and SentencePiece
encode through const methods); the one mutation a fast tokenizer has, truncation/padding settings, is
never set by this project. A test here would catch a tokenizer whose encode is not re-entrant
("Already borrowed" errors or mixed-up ids).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mistral_common
import pytest
from codestral_ls.engine.models.fim import FimEncoder, detect_profile
from codestral_ls.engine.models.tokenizer import MistralCommonTokenizer

V3 = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
TEXTS = [f"def f{i}(x):\n    return x * {i} + {'é' * (i % 5)}🙂\n" + "    # note\n" * (i % 7) for i in range(200)]


def _hammer(encoder: FimEncoder) -> None:
    expected_counts = [len(encoder.encode_text(t)) for t in TEXTS]
    expected_prompts = [encoder.build(t, "\nprint()\n", "", ()).ids for t in TEXTS[:50]]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def counter() -> list[int]:  # what the event loop does per keystroke
        start.wait()
        return [len(encoder.encode_text(t)) for t in TEXTS for _ in range(3)][::3]

    def engine() -> list[list[int]]:  # what the engine thread does per request
        start.wait()
        return [encoder.build(t, "\nprint()\n", "", ()).ids for t in TEXTS[:50]]

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(counter), pool.submit(counter), pool.submit(engine), pool.submit(engine)]
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=120))
            except BaseException as exc:  # noqa: BLE001 - any error from a concurrent encode fails the test
                errors.append(exc)
    assert not errors, errors
    assert results[0] == expected_counts and results[1] == expected_counts
    assert results[2] == expected_prompts and results[3] == expected_prompts


def test_hugging_face_fast_tokenizer_is_safe_to_share(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    _hammer(FimEncoder(tok, detect_profile(tok)))


def test_mistral_common_tokenizer_is_safe_to_share():
    if not V3.exists():
        pytest.skip("mistral-common ships no v3 tokenizer here")
    tok = MistralCommonTokenizer.from_file(V3)
    _hammer(FimEncoder(tok, detect_profile(tok)))
