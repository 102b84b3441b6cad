"""Fixtures for meshd's end-to-end tests: the meshd binary, nginx, Python backends, meshd processes.

Every process is started in its own session and killed as a process group by a finalizer; every
test also runs under a SIGALRM watchdog (E2E_TEST_TIMEOUT seconds, default 120) so a hang fails
the test instead of the suite.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import meshlib
from meshlib import Backend, Meshd, Nginx

TEST_TIMEOUT = int(os.environ.get("E2E_TEST_TIMEOUT", "120"))


class WatchdogTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    def on_alarm(signum, frame):
        raise WatchdogTimeout(f"{item.nodeid} exceeded the {TEST_TIMEOUT}s per-test watchdog")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_sessionfinish(session, exitstatus):
    meshlib.REGISTRY.kill_all()


@pytest.fixture(scope="session", autouse=True)
def meshd_binary():
    path = meshlib.meshd_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"meshd binary not found or not executable at {path}: build it (swift build -c release) "
                    f"or set MESHD_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session", autouse=True)
def _kill_leftovers():
    yield
    meshlib.REGISTRY.kill_all()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    """nginx with one server per name; each answers `<name>\\n` (200) on every path."""
    n = Nginx(tmp_path_factory.mktemp("nginx"), ["web", "a", "b", "e1", "e2", "e3"])
    yield n
    n.stop()


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    """The Python backend (echo-hash, headers, slow, die, close, status) on 127.0.0.1."""
    b = Backend("py", logdir=tmp_path_factory.mktemp("backend"))
    yield b
    b.stop()


class MeshdFactory:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[Meshd] = []
        self.count = 0

    def __call__(self, config, **kw) -> Meshd:
        self.count += 1
        kw.setdefault("name", f"meshd{self.count}")
        m = Meshd(self.workdir, config, **kw)
        self.started.append(m)
        return m

    def stop_all(self):
        for m in self.started:
            try:
                m.stop()
            except Exception:
                meshlib.kill_group(m.proc)


@pytest.fixture
def start_meshd(tmp_path):
    f = MeshdFactory(tmp_path)
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def start_meshd_module(tmp_path_factory):
    f = MeshdFactory(tmp_path_factory.mktemp("meshd"))
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def meshctl():
    """The meshctl binary under test (MESHCTL_BIN, else next to meshd)."""
    path = meshlib.meshctl_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"meshctl not found at {path}: build it (swift build --product meshctl) or set MESHCTL_BIN", pytrace=False)
    return path
