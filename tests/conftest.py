"""Test-wide settings: a private compile cache, so tests never touch ~/.cache/ecograph; and,
under pytest-xdist (`make test` runs one worker per core), one TVM thread per worker, so the
workers' kernels do not contend for the same cores (ecograph otherwise starts TVM's pool with
every core: backends/tvm/threads.py)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("ECOGRAPH_CACHE_DIR", tempfile.mkdtemp(prefix="ecograph-test-cache-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TVM_NUM_THREADS", "1")
