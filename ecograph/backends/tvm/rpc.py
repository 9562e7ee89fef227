"""Run artifacts on remote devices through TVM RPC, and serve a device.

- `connect(artifact, host, port)` (or `tracker=(host, port), key=...`) uploads an artifact's
  library to an RPC server and returns a `RemoteModel`: call it with numpy arrays like a
  loaded model; the work runs on the device.
- `serve(host="127.0.0.1", port=9091)` starts an RPC server in this process (what
  `ecograph rpc-server` runs). It binds loopback unless told otherwise; TVM RPC executes
  arbitrary code for whoever connects, so any other address gets a loud warning.
- `EmulatedArmDevice` starts an aarch64 Python under qemu-user (set up by
  scripts/setup_arm_emulator.sh) running a TVM RPC server on loopback: an ARM "device" on an
  x86 machine, used by the tests to prove ARM artifacts end to end. Timings under emulation
  mean nothing; numerics do.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ecograph.errors import EcographError

from .runtime import LIBRARY, CompiledModel, open_artifact

log = logging.getLogger(__name__)

DEFAULT_PORT = 9091
DEFAULT_PORT_END = 9199


class RemoteError(EcographError):
    """A remote device could not be reached or failed to run an artifact."""


# -------------------------------------------------------------------- server


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_EXPOSED_WARNING = (
    "\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    "!! WARNING: the TVM RPC server is listening on {host}:{port}, not on loopback.\n"
    "!! TVM RPC runs ARBITRARY CODE for anyone who can connect: it has no\n"
    "!! authentication and no encryption. Use it only on a trusted, isolated network,\n"
    "!! or bind 127.0.0.1 and forward the port over SSH instead.\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    port_end: int = DEFAULT_PORT_END,
    key: str = "",
    tracker: tuple[str, int] | None = None,
    block: bool = True,
) -> int:
    """Start a TVM RPC server in this process; returns the bound port.

    Binds `host` (loopback by default) on the first free port in [port, port_end). With
    `tracker`, registers with that tracker under `key`. `block=False` returns right away and
    leaves the server running in a background thread.
    """
    from tvm.rpc import server as tvm_server

    if not is_loopback(host):
        message = _EXPOSED_WARNING.format(host=host, port=port)
        print(message, file=sys.stderr, flush=True)
        warnings.warn(
            f"TVM RPC server bound to non-loopback address {host}: it runs arbitrary code for "
            "anyone who connects",
            RuntimeWarning,
            stacklevel=2,
        )
    bound = tvm_server._popen_start_rpc_server(
        host, port, port_end, tracker_addr=tracker, key=key, silent=False
    )
    log.info("TVM RPC server listening on %s:%s", host, bound)
    if block:
        state = tvm_server.PopenRPCServerState.current
        state.thread.join()
    return int(bound)


# -------------------------------------------------------------------- client


class RemoteModel(CompiledModel):
    """An artifact loaded on a remote device; called like `CompiledModel`, with the same
    input checks (names, dtypes, shapes) and torch-in/torch-out behaviour."""

    def __init__(
        self,
        session: Any,
        path: Path,
        manifest: dict[str, Any],
        vm: Any,
        device: Any,
        params: list[Any],
    ) -> None:
        super().__init__(path, manifest, vm, device, params)
        self.session = session

    def __repr__(self) -> str:
        return f"<RemoteModel {self.path} target={self.manifest['target']['name']}>"


def _session(
    host: str | None,
    port: int | None,
    tracker: tuple[str, int] | None,
    key: str | None,
    timeout: float,
) -> Any:
    from tvm import rpc

    try:
        if tracker is not None:
            if not key:
                raise RemoteError("connecting through a tracker needs a device key")
            client = rpc.connect_tracker(*tracker)
            return client.request(key, session_timeout=0)
        if host is None or port is None:
            raise RemoteError("give host and port of an RPC server, or tracker=(host, port)")
        return rpc.connect(host, port, session_timeout=0)
    except RemoteError:
        raise
    except Exception as exc:
        where = f"tracker {tracker[0]}:{tracker[1]} key {key!r}" if tracker else f"{host}:{port}"
        raise RemoteError(f"cannot reach the TVM RPC server at {where}: {exc}") from exc


def connect(
    artifact: str | os.PathLike[str],
    host: str | None = None,
    port: int | None = None,
    *,
    tracker: tuple[str, int] | None = None,
    key: str | None = None,
    timeout: float = 60.0,
) -> RemoteModel:
    """Upload `artifact` to a remote device and return a callable `RemoteModel`. The folder
    gets the same checks as `load` (`runtime.open_artifact`) before anything is uploaded."""
    import tvm
    import tvm.runtime.vm

    checked = open_artifact(artifact)
    manifest = checked.manifest
    sess = _session(host, port, tracker, key, timeout)
    digest = manifest["files"][LIBRARY][:16]
    remote_name = f"ecograph-{digest}.so"
    sess.upload(str(checked.path_of(LIBRARY)), remote_name)
    lib = sess.load_module(remote_name)
    dev = sess.cuda(0) if manifest["target"]["family"] == "cuda" else sess.cpu(0)
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    params = checked.load_params(dev)
    return RemoteModel(sess, checked.folder, manifest, vm, dev, params)


# ---------------------------------------------------------- emulated device


def emulator_dir() -> Path:
    """Where scripts/setup_arm_emulator.sh puts the sysroot and wheels."""
    env = os.environ.get("ECOGRAPH_ARM_EMULATOR_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "ecograph" / "arm-emulator"


def emulator_ready() -> str | None:
    """None when the emulated ARM device can start, else the reason it cannot."""
    root = emulator_dir()
    if shutil.which("qemu-aarch64") is None:
        return "qemu-aarch64 is not installed (scripts/setup_arm_emulator.sh)"
    if not (root / "READY").is_file():
        return f"no emulator sysroot in {root} (run scripts/setup_arm_emulator.sh)"
    return None


# The server script runs inside the emulated Python. `python -m tvm.exec.rpc_server` cannot be
# used there: it re-executes sys.executable, which the kernel cannot run without binfmt_misc.
_SERVER_SCRIPT = """
import sys
from tvm.rpc import server
port = server._popen_start_rpc_server("127.0.0.1", {port}, {port_end}, key={key!r})
print("ECOGRAPH_RPC_PORT", port, flush=True)
server.PopenRPCServerState.current.thread.join()
"""


class EmulatedArmDevice:
    """An aarch64 TVM RPC server under qemu-user on loopback; a context manager.

    with EmulatedArmDevice() as dev:
        model = connect("build/model-arm", dev.host, dev.port)
    """

    def __init__(
        self, port: int = 9190, port_end: int = 9290, key: str = "", start_timeout: float = 300.0
    ) -> None:
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._port_range = (port, port_end)
        self._key = key
        self._timeout = start_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []

    def __enter__(self) -> EmulatedArmDevice:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        reason = emulator_ready()
        if reason:
            raise RemoteError(reason)
        root = emulator_dir()
        sysroot, site = root / "sysroot", root / "site-packages"
        script = _SERVER_SCRIPT.format(
            port=_free_port(*self._port_range), port_end=self._port_range[1], key=self._key
        )
        cmd = [
            "qemu-aarch64",
            "-L",
            str(sysroot),
            "-E",
            f"PYTHONPATH={site}",
            "-E",
            "PYTHONNOUSERSITE=1",
            "-E",
            "PYTHONUNBUFFERED=1",
            str(sysroot / "usr/bin/python3.11"),
            "-c",
            script,
        ]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        deadline = time.monotonic() + self._timeout
        found: list[int] = []

        def reader() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self._log.append(line)
                if line.startswith("ECOGRAPH_RPC_PORT") and not found:
                    found.append(int(line.split()[1]))

        threading.Thread(target=reader, daemon=True).start()
        while not found:
            if self._proc.poll() is not None:
                raise RemoteError(
                    "the emulated ARM Python exited while starting:\n" + "".join(self._log[-30:])
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RemoteError(f"the emulated ARM device did not start in {self._timeout} s")
            time.sleep(0.2)
        self.port = found[0]

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def output(self) -> str:
        return "".join(self._log)


def _free_port(low: int, high: int) -> int:
    for port in range(low, high):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RemoteError(f"no free port in [{low}, {high})")


__all__ = [
    "EmulatedArmDevice",
    "RemoteError",
    "RemoteModel",
    "connect",
    "emulator_dir",
    "emulator_ready",
    "is_loopback",
    "serve",
]
