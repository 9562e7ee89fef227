"""TVM RPC: serve() safety, a loopback x86 round trip, and ARM on the emulated device."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import ecograph
from ecograph import remote
from ecograph.backends.tvm import rpc
from ecograph.ir import GraphBuilder, interpret
from ecograph.models import build_default_model, example_inputs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert rpc.is_loopback(host) is loopback


def test_serve_warns_loudly_off_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tvm.rpc import server as tvm_server

    calls: list[tuple] = []
    monkeypatch.setattr(
        tvm_server, "_popen_start_rpc_server", lambda *a, **k: calls.append(a) or 9123
    )
    with pytest.warns(RuntimeWarning, match="arbitrary code"):
        assert rpc.serve("0.0.0.0", 9123, block=False) == 9123
    assert "ARBITRARY CODE" in capsys.readouterr().err
    assert calls[0][0] == "0.0.0.0"


def test_serve_binds_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    from tvm.rpc import server as tvm_server

    calls: list[tuple] = []
    monkeypatch.setattr(
        tvm_server, "_popen_start_rpc_server", lambda *a, **k: calls.append(a) or 9091
    )
    rpc.serve(block=False)
    assert calls[0][0] == "127.0.0.1"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.fixture
def local_server() -> Iterator[int]:
    """An x86 RPC server started with serve() in a child process, on loopback."""
    port = rpc._free_port(9300, 9400)
    code = f"from ecograph.backends.tvm.rpc import serve; serve(port={port}, port_end={port + 1})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_x86_artifact_over_loopback_rpc(tmp_path: Path, local_server: int) -> None:
    art = ecograph.compile(build_default_model(), "x86", tmp_path / "x86")
    model = remote.connect(art, "127.0.0.1", local_server)
    feeds = example_inputs(2, 6)
    want = interpret(build_default_model(), feeds)["y"]
    np.testing.assert_allclose(model(**feeds), want, rtol=1e-5, atol=2e-5)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    art = ecograph.compile(build_default_model(), "x86", tmp_path / "x86")
    port = rpc._free_port(9400, 9500)
    with pytest.raises(remote.RemoteError, match=f"127.0.0.1:{port}"):
        remote.connect(art, "127.0.0.1", port)


# ------------------------------------------------------------------ emulated ARM

EMULATOR_MISSING = rpc.emulator_ready()


def _int8_graph() -> object:
    rng = np.random.default_rng(5)
    b = GraphBuilder("qmm")
    a = b.input("a", "int8", ["m", 48])
    w = b.constant(rng.integers(-128, 128, (48, 16)).astype(np.int8), "w")
    b.output(b.op("MatMulInteger", a, w, name="acc"))
    return b.graph


@pytest.mark.emulator
@pytest.mark.skipif(EMULATOR_MISSING is not None, reason=str(EMULATOR_MISSING))
def test_arm_artifacts_run_on_emulated_device(tmp_path: Path) -> None:
    """Cross-compile for aarch64, run on qemu-user over RPC, compare with the interpreter."""
    encoder = ecograph.compile(build_default_model(), "arm:cortex-a72", tmp_path / "enc")
    qmm = ecograph.compile(_int8_graph(), "arm", tmp_path / "qmm")
    feeds = example_inputs(2, 8)
    a = np.random.default_rng(6).integers(-128, 128, (5, 48)).astype(np.int8)
    with remote.EmulatedArmDevice() as device:
        got = remote.connect(encoder, device.host, device.port)(**feeds)
        got_q = remote.connect(qmm, device.host, device.port)(a)
    want = interpret(build_default_model(), feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(got_q, interpret(_int8_graph(), {"a": a})["acc"])
