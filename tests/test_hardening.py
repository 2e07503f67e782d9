"""Small hardenings of issue 24 (round 3): a daemon body nested too deeply is a 400, the discovery folder's
mode is never set through a symlink, and `codestral/stats` never reads the KV store's runner state from
another thread than the engine's."""

from __future__ import annotations

import json
import os
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from codestral_ls.engine.decoding.kvcache import Entry, PrefixStore, Sequence
from codestral_ls.engine.serving.daemon import EngineDaemon
from codestral_ls.engine.serving.discovery import DaemonInfo, write_daemon_file

from tests.test_daemon import TOKEN, FakeWorker


@pytest.fixture
def daemon() -> Iterator[EngineDaemon]:
    httpd = EngineDaemon(("127.0.0.1", 0), FakeWorker(), TOKEN)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def post(httpd: EngineDaemon, body: bytes) -> tuple[int, dict]:
    r = urllib.request.Request(httpd.url + "/v1/fim", data=body, method="POST",
                               headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read().splitlines()[-1])
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


DEPTH = 100_000
NESTED = [
    b"[" * DEPTH + b"]" * DEPTH,  # the whole body
    b'{"client": "c", "request": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",  # the request
    b'{"client": "c", "request": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}",  # objects
    b'{"client": "c", "request": {"doc": "d", "prefix": "x", "suffix": "", "stop": '
    + b"[" * DEPTH + b"]" * DEPTH + b"}}",  # a field of the request
]


@pytest.mark.parametrize("body", NESTED, ids=["body", "request", "objects", "field"])
def test_a_deeply_nested_body_is_a_clear_400_and_the_daemon_answers_after(daemon, body):
    code, answer = post(daemon, body)
    assert code == 400 and "nested too deeply" in answer["error"], answer
    ok = {"client": "c", "request": {"doc": "d", "prefix": "x = ", "suffix": "\n", "forced_middle": "1"}}
    code, answer = post(daemon, json.dumps(ok).encode())
    assert code == 200 and answer["result"]["text"].endswith("x = 1"), answer


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX modes")
def test_the_discovery_folder_mode_is_never_set_through_a_symlink(tmp_path: Path):
    target = tmp_path / "someone-elses"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symlink"):
        write_daemon_file(link / "daemon.json", DaemonInfo("127.0.0.1", 1, "t", 1))
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert not (target / "daemon.json").exists()
    # A real folder of the user's is still made private.
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    write_daemon_file(real / "daemon.json", DaemonInfo("127.0.0.1", 1, "t", 1))
    assert stat.S_IMODE(real.stat().st_mode) == 0o700


class EngineThreadKV:
    """Runner state that only the engine thread may touch (a torch cache being cropped, a llama.cpp slot)."""

    def __init__(self, owner: threading.Thread, size: int) -> None:
        self.owner, self.size = owner, size

    def _mine(self) -> None:
        assert threading.current_thread() is self.owner, "runner state read from another thread"

    def crop(self, n: int) -> None:
        self._mine()

    def nbytes(self, n_tokens: int) -> int:
        self._mine()
        return self.size * n_tokens

    def release(self) -> None:
        self._mine()


def test_stats_read_the_kv_store_without_touching_runner_state():
    store = PrefixStore(budget_bytes=10_000)
    errors: list[BaseException] = []

    def engine() -> None:
        try:
            me = threading.current_thread()
            for i in range(40):
                store.put(Entry(doc=f"d{i % 3}", seq=Sequence(ids=[i, i + 1], kv=EngineThreadKV(me, 100))))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=engine)
    t.start()
    t.join()
    assert not errors, errors
    summary = store.summary()  # codestral/stats, on the event loop's thread
    assert summary["entries"] == len(store.entries) and 0 < summary["bytes"] <= 10_000
    assert summary["budget_bytes"] == 10_000
