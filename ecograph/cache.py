"""The compile cache: content-addressed folders keyed by graph, target, passes and versions.

- The versions include a digest of ecograph's own source (`source_digest`): an edited or
  upgraded compiler (a development install keeps its version number) never reuses an
  artifact an older one built.

- The key is a JSON-able dict; its SHA-256 names the entry folder. A hit re-reads the stored
  `key.json` and compares it with the requested key in full, so a hash collision (or a
  corrupted entry) is a miss, never a wrong artifact.
- Entries are built in a temporary folder beside the cache and renamed into place (atomic).
- A file lock per key makes two processes compiling the same model at once safe: the second
  waits and then reuses the first one's result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from ecograph.ir import Graph
from ecograph.ir.text import to_text

KEY_FILE = "key.json"
PAYLOAD = "payload"


def default_cache_dir() -> Path:
    env = os.environ.get("ECOGRAPH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ecograph"


def graph_hash(graph: Graph) -> str:
    """SHA-256 over the graph's text form and the bytes of every constant."""
    h = hashlib.sha256()
    h.update(to_text(graph, inline_limit=0).encode())
    for name, value in sorted(graph.constants.items()):
        arr = value.const_value
        assert arr is not None
        h.update(name.encode() + b"\0")
        if arr.dtype == object:
            h.update(json.dumps([str(x) for x in arr.reshape(-1)]).encode())
        else:
            h.update(
                memoryview(
                    arr.reshape(-1).view("u1")
                    if arr.flags.c_contiguous
                    else arr.copy().reshape(-1).view("u1")
                )
            )
    return h.hexdigest()


def array_digest(arr: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes: equal for equal arrays, whatever their
    names (quantization's shared codes, backends/tvm/build.share_params' weight keys)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


@functools.cache
def source_digest(root: Path | None = None) -> str:
    """SHA-256 over the Python source of the ecograph package (or of `root`): relative paths
    and contents, in sorted order. Part of every compile-cache key."""
    base = Path(__file__).resolve().parent if root is None else Path(root)
    h = hashlib.sha256()
    for path in sorted(base.rglob("*.py")):
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    key: dict[str, Any]
    bytes: int
    created: float


class CompileCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _entry_dir(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def lookup(self, key: Mapping[str, Any]) -> Path | None:
        """The payload folder for `key`, or None. Compares the stored key in full."""
        entry = self._entry_dir(key_digest(key))
        try:
            stored = json.loads((entry / KEY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if stored != json.loads(json.dumps(key, sort_keys=True)):
            return None
        payload = entry / PAYLOAD
        return payload if payload.is_dir() else None

    def get_or_build(
        self, key: Mapping[str, Any], build: Callable[[Path], None]
    ) -> tuple[Path, bool]:
        """Return (payload folder, hit). On a miss `build(folder)` fills a fresh folder,
        which is then moved into the cache atomically."""
        digest = key_digest(key)
        entry = self._entry_dir(digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            found = self.lookup(key)
            if found is not None:
                return found, True
            if entry.exists():  # a stale or colliding entry: replace it
                shutil.rmtree(entry)
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=entry.parent))
            try:
                (tmp / PAYLOAD).mkdir()
                build(tmp / PAYLOAD)
                (tmp / KEY_FILE).write_text(json.dumps(key, sort_keys=True, indent=1))
                os.replace(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return entry / PAYLOAD, False

    def entries(self) -> list[CacheEntry]:
        out = []
        if not self.root.is_dir():
            return out
        for key_file in sorted(self.root.glob(f"*/*/{KEY_FILE}")):
            entry = key_file.parent
            try:
                key = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            out.append(CacheEntry(entry.name, entry, key, size, key_file.stat().st_mtime))
        return out

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        entries = self.entries()
        for e in entries:
            shutil.rmtree(e.path, ignore_errors=True)
            Path(str(e.path) + ".lock").unlink(missing_ok=True)
        return len(entries)


def describe(entry: CacheEntry) -> str:
    age = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created))
    target = entry.key.get("target", "?")
    if isinstance(target, dict):  # a resolved target: family and CPU model or CUDA arch
        target = f"{target.get('family')}:{target.get('cuda_arch') or target.get('cpu')}"
    model = entry.key.get("model", entry.key.get("graph", "?"))
    return f"{entry.digest[:16]}  {age}  {entry.bytes / 1024:9.1f} KiB  {target}  {model}"
