"""The llama.cpp runner: GGUF files on the CPU through llama-cpp-python's low-level C API (and on a
GPU with `n_gpu_layers`, where llama-cpp-python was built with GPU offload: README, "GPU").

The model computes with the GGUF's own quantized weights (no dequantized copy), and one llama.cpp
context holds the keys/values of several sequences, each in a stream of its own (`kv_unified` off):
each `Sequence` gets a sequence id (a slot) for as long as it lives, `crop` is `llama_memory_seq_rm`
past n, and a batch asks logits only for the positions the engine needs (the last one, or every
verified draft position). Never imports torch.

Why streams of their own: in one unified cache every forward attends over all the cells in use,
masked, whoever they belong to. With the prefix store's 7 other prompts resident (as after a few
sites of the typing replay) a 512-token prefill ran at 147 tok/s instead of 279 and a decoded token
took 47.6 ms instead of 37.9 (`python -m benchmarks.runners`, "resident" rows). A stream per slot
costs its cells up front: SLOTS x SEQ_CTX tokens at 12 KiB (the 0.5B) is 240 MiB.

Threads wait passively (OMP_WAIT_POLICY=PASSIVE unless the user set it, before llama.cpp loads):
llama.cpp's OpenMP threads meet at a barrier after every operation, and with the default spinning
barrier a busy machine (an editor, a browser, a build) turns that into a collapse: measured here on
2 cores under load, 2 threads decoded at 4455 ms/token spinning and 74 ms/token passive (1 thread:
45 ms).

Rules: slots and cache cells are bounded (`SLOTS`, `SEQ_CTX` a sequence). When a forward finds no
free slot, the runner frees the least recently used entry of the prefix stores attached to it and
tries again; a sequence the engine holds is never taken from it. A prompt longer than a stream is
an error that says so. A failed decode raises, and the
engine drops that sequence (its cache may be half written). One thread uses a runner at a time
(the engine worker).
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from codestral_ls.engine.decoding.kvcache import PrefixStore, Sequence
from codestral_ls.engine.errors import EngineError, ModelLoadError

log = logging.getLogger(__name__)

# Sequences held at once: the store's entries (spines of the open file among them) plus the one being
# decoded. Each costs SEQ_CTX cells up front: 10 x 2048 x 12 KiB = 240 MiB for the 0.5B (resident).
SLOTS = 10
# Cache cells of one sequence (f16 K+V: 12 KiB a token for the 0.5B). A CPU prompt is the 640-token
# windows, extra context, the typed middle and up to max_tokens plus background tokens.
SEQ_CTX = 2048


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class LlamaKV:
    """One sequence slot in the runner's context."""

    runner: LlamaCppRunner | None
    seq_id: int
    bytes_per_token: int
    finalizer: weakref.finalize | None = None  # frees the slot if this handle dies unreleased

    def crop(self, n: int) -> None:
        if self.runner is not None:
            self.runner.seq_rm(self.seq_id, n)

    def nbytes(self, n_tokens: int) -> int:
        return n_tokens * self.bytes_per_token

    def release(self) -> None:
        if self.finalizer is not None:
            self.finalizer.detach()  # the slot may go to another sequence: this handle must not free it
        if self.runner is not None:
            self.runner.free_slot(self.seq_id)
            self.runner = None


class LlamaCppRunner:
    name = "llamacpp"
    # On 2 quiet CPU cores 64-token forwards prefill at 0.80x llama.cpp's own 512-token batches
    # (237 vs 297 tok/s, benchmarks.runners): a real request prefills in 256-token chunks (~1 s).
    # A warm-up takes 64 (~0.3 s): that is how long a real request can wait behind one.
    prefill_chunk = 256
    warm_chunk = 64

    def __init__(self, path: Path, threads: int | None = None, seq_ctx: int = SEQ_CTX, slots: int = SLOTS,
                 n_batch: int = 512, kv_unified: bool = False, n_gpu_layers: int = 0) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when the OpenMP runtime loads
        import llama_cpp as ll

        self.ll = ll
        self.path = path
        self.threads = threads or default_threads()
        _quiet(ll)
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        if n_gpu_layers and not ll.llama_supports_gpu_offload():
            raise ModelLoadError(
                f"--n-gpu-layers {n_gpu_layers}: this llama-cpp-python was built for the CPU only; rebuild it "
                "with GPU offload (CUDA: CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir "
                "llama-cpp-python==0.3.36; README, \"GPU\"), or leave --n-gpu-layers at 0")
        # -1: every layer (llama.cpp counts the output layer too: n_layer + 1 offloads all).
        mp.n_gpu_layers = 2**31 - 1 if n_gpu_layers < 0 else n_gpu_layers
        self.n_gpu_layers = n_gpu_layers
        self.device = "gpu" if n_gpu_layers else "cpu"
        self.model = ll.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelLoadError(f"cannot read GGUF {path}: llama.cpp cannot load it")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.vocab_size = int(ll.llama_vocab_n_tokens(self.vocab))
        n_layer = ll.llama_model_n_layer(self.model)
        n_head = ll.llama_model_n_head(self.model)
        n_head_kv = ll.llama_model_n_head_kv(self.model)
        head_dim = ll.llama_model_n_embd(self.model) // max(1, n_head)
        self.bytes_per_token = n_layer * n_head_kv * head_dim * 2 * 2  # K and V, f16
        seq_ctx = min(seq_ctx, ll.llama_model_n_ctx_train(self.model) or seq_ctx)
        cp = ll.llama_context_default_params()
        cp.n_ctx = seq_ctx * slots
        cp.n_batch = cp.n_ubatch = n_batch  # one prefill chunk is one ubatch
        cp.n_seq_max = slots
        # A stream per slot: a forward attends over its own sequence's cells only (`kv_unified=True`,
        # one shared cache, is the old layout: benchmarks.runners measures it as an ablation).
        cp.kv_unified = self.kv_unified = kv_unified
        # No flash attention: on the CPU it changes greedy picks (measured on the embedded model, a
        # 512-token prompt: the 7th token differs from torch fp32's and llama.cpp's own default).
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp cannot create a context for {path}")
        self.mem = ll.llama_get_memory(self.ctx)
        self.seq_ctx = int(ll.llama_n_ctx_seq(self.ctx))  # every cell, when unified
        self.n_batch = int(ll.llama_n_batch(self.ctx))
        self.n_ubatch = int(ll.llama_n_ubatch(self.ctx))
        self.weight_bytes = int(ll.llama_model_size(self.model))
        self.slots = slots
        self._free = list(range(slots - 1, -1, -1))
        self._held: set[int] = set()
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._stores: weakref.WeakSet[PrefixStore] = weakref.WeakSet()
        self._closed = False

    # -- the Runner interface ---------------------------------------------------------------

    def attach(self, store: PrefixStore) -> None:
        self._stores.add(store)

    def forward(self, seq: Sequence, ids: list[int], n_logits: int = 1) -> np.ndarray:
        if seq.kv is None:
            seq.kv = self._new_kv()
        kv = seq.kv
        assert isinstance(kv, LlamaKV) and kv.runner is self
        rows: list[np.ndarray] = []
        # A batch larger than n_batch is split; only the last one carries logits in practice.
        for start in range(0, len(ids), self.n_batch):
            part = ids[start:start + self.n_batch]
            want = max(0, n_logits - (len(ids) - start - len(part)))
            rows += self._decode(kv.seq_id, len(seq.ids), part, min(want, len(part)))
            seq.ids.extend(part)
        return np.stack(rows[-n_logits:])

    def fork(self, seq: Sequence) -> Sequence:
        """A sequence of its own holding a copy of `seq` (ids and keys/values): `llama_memory_seq_cp`,
        a copy of the stream's buffers between two streams (exact: the same bytes), cell sharing in a
        unified cache."""
        if seq.kv is None:
            return Sequence()
        src = seq.kv
        assert isinstance(src, LlamaKV) and src.runner is self
        kv = self._new_kv()
        self.ll.llama_memory_seq_cp(self.mem, src.seq_id, kv.seq_id, -1, -1)
        return Sequence(ids=list(seq.ids), kv=kv)

    # -- slots and cells --------------------------------------------------------------------

    def _new_kv(self) -> LlamaKV:
        kv = LlamaKV(self, self._take_slot(), self.bytes_per_token)
        # A sequence dropped without `release` (an exception unwinding) still frees its slot.
        kv.finalizer = weakref.finalize(kv, self.free_slot, kv.seq_id)
        return kv

    def seq_rm(self, seq_id: int, n: int) -> None:
        self.ll.llama_memory_seq_rm(self.mem, seq_id, n, -1)

    def free_slot(self, seq_id: int) -> None:
        if self._closed or seq_id not in self._held:
            return
        self._held.discard(seq_id)
        self.ll.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        self._free.append(seq_id)

    def _take_slot(self) -> int:
        while not self._free:
            if not self._reclaim():
                raise EngineError(f"llama.cpp runner: all {self.slots} sequence slots are in use")
        seq_id = self._free.pop()
        self._held.add(seq_id)
        return seq_id

    def _reclaim(self) -> bool:
        """Free the least recently used entry over all attached stores; False when none is left."""
        stores = [s for s in self._stores if s.entries]
        if not stores:
            return False
        oldest = min(stores, key=lambda s: min(e.last_used for e in s.entries))
        return oldest.evict_oldest()

    def _decode(self, seq_id: int, pos0: int, ids: list[int], n_logits: int) -> list[np.ndarray]:
        ll, b = self.ll, self._batch
        n = len(ids)
        if pos0 + n > self.seq_ctx:
            raise EngineError(f"the prompt needs {pos0 + n} tokens of cache; a llama.cpp sequence holds "
                              f"{self.seq_ctx} (smaller prefixTokens/suffixTokens/extraContextTokens)")
        b.n_tokens = n
        for i, t in enumerate(ids):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_id
            b.logits[i] = 1 if i >= n - n_logits else 0
        while True:
            rc = ll.llama_decode(self.ctx, b)
            if rc == 0:
                break
            # No room: in one unified cache, freeing an old entry makes room; a stream of its own
            # cannot be helped by freeing the others (and its length was checked above).
            if rc == 1 and self.kv_unified and self._reclaim():
                continue
            # A failed decode may have written part of the batch: clear it so the slot stays a
            # valid cache of its first pos0 tokens (the engine drops the sequence anyway).
            ll.llama_memory_seq_rm(self.mem, seq_id, pos0, -1)
            raise EngineError(f"llama.cpp decode failed (code {rc})" + (": out of cache cells" if rc == 1 else ""))
        out = []
        for i in range(n - n_logits, n):
            ptr = ll.llama_get_logits_ith(self.ctx, i)
            out.append(np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy())
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ll.llama_batch_free(self._batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def describe(self) -> str:
        layers = "all" if self.n_gpu_layers < 0 else str(self.n_gpu_layers)
        offload = f", {layers} layers on the GPU" if self.n_gpu_layers else ""
        return (f"llama.cpp{offload} {self.threads} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
                f"{self.seq_ctx} tokens a sequence, n_batch {self.n_batch}, n_ubatch {self.n_ubatch}, "
                f"{len(self._free)} free slots")


_LOG_CB = None


def _quiet(ll: object) -> None:
    """Route llama.cpp's log lines to Python logging (debug), not to stderr: stdout/stderr belong
    to the LSP client."""
    global _LOG_CB
    if _LOG_CB is not None:
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def cb(level: int, text: bytes | None, user: object) -> None:
        if text:
            log.debug("llama.cpp: %s", text.decode(errors="replace").rstrip())

    _LOG_CB = cb
    ll.llama_log_set(cb, None)  # type: ignore[attr-defined]
