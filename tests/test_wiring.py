"""One client per port per process: created on first use, shared by every resource init, sensor tick and
caller, closed once at teardown; a forked child starts with none of its parent's."""

from __future__ import annotations

import os

from dagster import build_resources

from orchestration.resources import resources_from_settings
from orchestration.wiring import Clients


def test_resources_hand_every_tick_and_run_the_same_clients(offline_settings, monkeypatch):
    from orchestration import wiring

    registry = Clients()
    monkeypatch.setattr(wiring, "CLIENTS", registry)
    import orchestration.resources as resources_module

    monkeypatch.setattr(resources_module, "CLIENTS", registry)
    resources = resources_from_settings(offline_settings)
    seen = []
    for _ in range(3):  # three sensor ticks / run steps, each building its resources
        with build_resources({k: resources[k] for k in ("lake", "metadata", "queue", "signal")}) as r:
            seen.append((r.lake, r.metadata, r.queue, r.signal))
    assert all(s == seen[0] for s in seen)
    assert registry.created == {"lake": 1, "metadata": 1, "signal": 1, "queue": 1}


def test_close_all_closes_each_client_once(offline_settings):
    registry = Clients()
    closed = []

    class Closing:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    registry._get("a", offline_settings, lambda: Closing("a"))
    registry._get("b", offline_settings, lambda: Closing("b"))
    assert registry._get("a", offline_settings, lambda: Closing("again")).name == "a"
    registry.close_all()
    registry.close_all()
    assert closed == ["b", "a"]  # reverse order of creation, once


def test_a_forked_child_gets_its_own_clients(offline_settings):
    registry = Clients()
    parent = registry.lake(offline_settings)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse (or close) the parent's client
        try:
            child = registry.lake(offline_settings)
            os.write(w, b"same" if child is parent else b"own")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 10) == b"own"
    assert registry.lake(offline_settings) is parent
