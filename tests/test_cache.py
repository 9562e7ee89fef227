"""Compile cache: content addressing, full key comparison, atomic entries, process safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from ecograph.cache import CompileCache, graph_hash, key_digest
from ecograph.models import build_default_model


def test_graph_hash_tracks_structure_and_constant_bytes():
    a, b = build_default_model(seed=0), build_default_model(seed=0)
    assert graph_hash(a) == graph_hash(b)
    c = build_default_model(seed=1)  # same structure, other weights
    assert graph_hash(a) != graph_hash(c)
    w = b.value("wq")
    arr = w.const_value.copy()
    arr[0, 0] = np.nextafter(arr[0, 0], np.float32(1))
    b.set_constant_value(w, arr)
    assert graph_hash(a) != graph_hash(b)


def test_miss_builds_then_hit_reuses(tmp_path):
    cache = CompileCache(tmp_path)
    key = {"graph": "abc", "target": "x86", "passes": "default", "versions": {"ecograph": "0"}}
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "lib.so").write_bytes(b"artifact")

    p1, hit1 = cache.get_or_build(key, build)
    p2, hit2 = cache.get_or_build(dict(key), build)
    assert (hit1, hit2) == (False, True)
    assert p1 == p2 and (p2 / "lib.so").read_bytes() == b"artifact"
    assert len(calls) == 1
    assert len(cache.entries()) == 1
    assert cache.clear() == 1 and cache.entries() == []


def test_a_hit_compares_the_stored_key_not_only_its_hash(tmp_path):
    cache = CompileCache(tmp_path)
    key = {"graph": "abc", "target": "x86"}
    path, _ = cache.get_or_build(key, lambda f: (f / "x").write_text("1"))
    # Simulate a collision or corruption: same folder, different stored key.
    key_file = path.parent / "key.json"
    key_file.write_text(json.dumps({"graph": "zzz", "target": "x86"}))
    assert cache.lookup(key) is None
    path2, hit = cache.get_or_build(key, lambda f: (f / "x").write_text("2"))
    assert not hit and (path2 / "x").read_text() == "2"


def test_failed_build_leaves_no_entry(tmp_path):
    cache = CompileCache(tmp_path)

    def broken(folder: Path) -> None:
        (folder / "half").write_text("partial")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.get_or_build({"k": 1}, broken)
    assert cache.lookup({"k": 1}) is None
    assert not [p for p in tmp_path.rglob("half")]


def _worker(root: str, out: str) -> None:
    cache = CompileCache(root)

    def slow_build(folder: Path) -> None:
        with open(out, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (folder / "lib").write_text("ok")

    path, _ = cache.get_or_build({"model": "same"}, slow_build)
    assert (path / "lib").read_text() == "ok"


def test_two_processes_compiling_the_same_model_build_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1


def test_key_digest_is_order_independent():
    assert key_digest({"a": 1, "b": 2}) == key_digest({"b": 2, "a": 1})


def test_source_digest_follows_every_source_file(tmp_path):
    """The compile-cache key holds a digest of ecograph's source, so an edited compiler (a
    development install keeps its version) never reuses an artifact an older one built."""
    from ecograph.cache import source_digest

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not source")
    first = source_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("changed, still not source")
    assert source_digest.__wrapped__(tmp_path) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 3\n")
    edited = source_digest.__wrapped__(tmp_path)
    assert edited != first
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "c.py")
    assert source_digest.__wrapped__(tmp_path) not in (first, edited)
    own = source_digest()
    assert len(own) == 64 and own == source_digest()
