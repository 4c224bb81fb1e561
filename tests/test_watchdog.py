"""The peer watchdog's rules on a stand-in key-value store (no processes): a silent
peer, a peer that announced a failure and a store that stopped answering are named;
a peer that finished is not."""

from __future__ import annotations

import threading

import pytest

from trainers.distributed import PeerWatchdog


class FakeStore:
    """The two calls of JAX's distributed client that the watchdog uses."""

    def __init__(self, peers: dict[int, str]):
        self.values = {f"{PeerWatchdog.PREFIX}{p}": v for p, v in peers.items()}
        self.hang = threading.Event()
        self.lock = threading.Lock()

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.hang.is_set():
            threading.Event().wait()  # a frozen coordinator never answers
        with self.lock:
            self.values[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watch(store, me=0, n=2, timeout_s=0.3):
    fired = []
    got = threading.Event()

    def on_lost(message):
        fired.append(message)
        got.set()

    dog = PeerWatchdog(timeout_s, period_s=0.02, on_lost=on_lost, client=store, process_id=me,
                       num_processes=n).start()
    return dog, fired, got


def test_a_silent_peer_is_named():
    dog, fired, got = _watch(FakeStore({1: "7"}), me=0, n=3)
    assert got.wait(60), "the watchdog never fired"
    assert "process(es) 1, 2 of 3 stopped responding" in fired[0]
    assert fired[0].startswith("autotune: process 0:") and "exiting with code 69" in fired[0]


def test_a_peer_that_announced_a_failure_is_named_with_its_reason():
    store = FakeStore({1: "failed: BadRecordError: shard x record 3"})
    dog, fired, got = _watch(store, timeout_s=3600)  # no silence can fire first
    assert got.wait(60)
    assert "process 1 of 2 failed: BadRecordError: shard x record 3" in fired[0]


def test_a_frozen_coordinator_is_named_by_the_others():
    store = FakeStore({0: "1"})
    store.hang.set()
    dog, fired, got = _watch(store, me=1, n=2)
    assert got.wait(60)
    assert "the coordinator (process 0 of 2) has not answered" in fired[0]


class BeatingStore(FakeStore):
    """Process 1 beats whenever the store is read (alive exactly as long as the
    watchdog runs); process 2 has finished."""

    def __init__(self):
        super().__init__({1: "0", 2: "exited"})
        self.reads = 0
        self.enough = threading.Event()

    def key_value_dir_get(self, prefix):
        with self.lock:
            self.reads += 1
            self.values[f"{PeerWatchdog.PREFIX}1"] = str(self.reads)
            if self.reads >= 100:
                self.enough.set()
        return super().key_value_dir_get(prefix)


def test_a_live_or_finished_peer_is_not_named():
    store = BeatingStore()
    dog, fired, got = _watch(store, me=0, n=3, timeout_s=1.0)
    assert store.enough.wait(120)  # 100 rounds: at least two timeouts of watching
    dog.stop()
    assert fired == []
    assert store.values[f"{PeerWatchdog.PREFIX}0"] == "exited"  # it marks itself finished


def test_announce_failure_writes_the_reason_once():
    store = FakeStore({1: "0"})
    dog, fired, got = _watch(store, timeout_s=3600)
    dog.announce_failure("ValueError: bad\nsecond line")
    assert store.values[f"{PeerWatchdog.PREFIX}0"] == "failed: ValueError: bad second line"
    dog.stop()  # after a failure, stop() keeps the failure visible
    assert store.values[f"{PeerWatchdog.PREFIX}0"].startswith("failed")
