"""Run ecograph artifacts on remote devices through TVM RPC (see ecograph.backends.tvm.rpc).

    model = ecograph.remote.connect("build/model-arm", "127.0.0.1", 9091)
    y = model(x)

`serve()` starts a server on a device (loopback unless a host is given explicitly).
"""

from __future__ import annotations

from ecograph.backends.tvm.rpc import (
    EmulatedArmDevice,
    RemoteError,
    RemoteModel,
    connect,
    emulator_ready,
    is_loopback,
    serve,
)

__all__ = [
    "EmulatedArmDevice",
    "RemoteError",
    "RemoteModel",
    "connect",
    "emulator_ready",
    "is_loopback",
    "serve",
]
