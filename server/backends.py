"""Where FIM requests go, opened from the options: the one way to open any backend.

    local     EngineWorker: the model in this process (engine/serving/worker.py)
    daemon    DaemonBackend: `codestral-ls engine serve` on this machine (engine/serving/daemon_client.py)
    mistral, openai, llamacpp, ollama
              RemoteBackend: a remote serving engine over HTTP(S) (engine/serving/remote.py, its `APIS`)

Every backend satisfies `engine.serving.backend.Backend`, so context, anchoring and post-processing
are the same whichever one answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from codestral_ls.engine.models.embedded import Progress
from codestral_ls.engine.serving.backend import Backend
from codestral_ls.engine.serving.daemon_client import DaemonBackend
from codestral_ls.engine.serving.http_client import HttpBackend
from codestral_ls.engine.serving.remote import APIS, RemoteBackend
from codestral_ls.server.options import Options, engine_config


def open_backend(options: Options, progress: Progress | None = None,
                 on_loaded: Callable[[], None] | None = None) -> Backend:
    """The backend `options.backend` names, started.

    Never raises: a bad setup is its `load_error`. `progress(message, percent)` hears the model
    load (local only, on the engine thread); `on_loaded` runs once the backend can answer (or not).
    """
    if options.backend == "local":
        from codestral_ls.engine import load_engine
        from codestral_ls.engine.serving.worker import EngineWorker

        spec, engine_options = engine_config(options)
        return EngineWorker(lambda: load_engine(spec, engine_options, progress=progress),
                            on_loaded=on_loaded).start()
    backend: HttpBackend
    if options.backend == "daemon":
        backend = DaemonBackend(options)
    elif (api := APIS.get(options.backend)) is not None:
        backend = RemoteBackend(api, options)
    else:
        raise ValueError(f"no backend named {options.backend!r}")
    if on_loaded is not None:
        threading.Thread(target=lambda: (backend.loaded.wait(), on_loaded()), daemon=True,
                         name="codestral-backend-loaded").start()
    return backend
