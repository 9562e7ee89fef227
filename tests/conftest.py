"""Test-wide settings: a private compile cache, so tests never touch ~/.cache/ecograph."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("ECOGRAPH_CACHE_DIR", tempfile.mkdtemp(prefix="ecograph-test-cache-"))
