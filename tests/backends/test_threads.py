"""The thread policy: every core by default, fewer when other work slows the kernels down."""

from __future__ import annotations

import pytest

from ecograph.backends.tvm import threads
from ecograph.errors import BuildError


class FakeMachine:
    """A clock whose calls take `cost[threads]` seconds, and TVM's pool as a variable."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = dict(cost)
        self.now = 0.0
        self.pool = 0
        self.switches = 0
        self.others: float | None = 0.0  # busy cores of other processes, as the load meter says

    def configure(self, n: int) -> None:
        self.pool = n
        self.switches += 1

    def clock(self) -> float:
        return self.now

    def call(self, policy: threads.ThreadPolicy, key: str = "m") -> int:
        return policy.call(key, self._run)

    def _run(self) -> int:
        self.now += self.cost[self.pool]
        return self.pool


def _policy(
    machine: FakeMachine, cores: int, monkeypatch: pytest.MonkeyPatch, **kw
) -> threads.ThreadPolicy:
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    kw.setdefault("load", lambda: machine.others)
    return threads.ThreadPolicy("auto", configure=machine.configure, clock=machine.clock, **kw)


def test_idle_machine_keeps_every_core(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.018})
    p = _policy(m, 2, monkeypatch)
    used = [m.call(p) for _ in range(100)]
    assert p.choice("m") == 2
    assert used.count(1) <= 100 // p.probe_every + 1  # only the probes ran on one thread


def test_busy_core_moves_to_fewer_threads_and_back(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.018})
    p = _policy(m, 2, monkeypatch)
    for _ in range(40):
        m.call(p)
    m.cost[2] = 0.060  # another process takes a core: the static split waits for it
    for _ in range(60):
        m.call(p)
    assert p.choice("m") == 1
    m.cost[2] = 0.010  # the other process ends
    for _ in range(100):
        m.call(p)
    assert p.choice("m") == 2


def test_back_to_every_core_at_the_first_probe_after_the_load_ends(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.018})
    p = _policy(m, 2, monkeypatch)
    m.cost[2] = 0.060  # busy from the start: many slow samples at 2 threads
    for _ in range(200):
        m.call(p)
    assert p.choice("m") == 1
    m.cost[2] = 0.010
    used = [m.call(p) for _ in range(p.probe_every + 1)]  # the next probe comes in time
    assert p.choice("m") == 2 and used[-1] == 2


def test_one_lucky_probe_is_undone_at_the_next(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.018})
    p = _policy(m, 2, monkeypatch)
    for _ in range(40):
        m.call(p)
    m.cost[1] = 0.001  # one probe at one thread happens to be fast
    while m.call(p) != 1:
        pass
    m.cost[1] = 0.018
    assert p.choice("m") == 1  # it moved at once ...
    used = [m.call(p) for _ in range(2 * p.probe_every)]
    assert p.choice("m") == 2 and used.count(1) <= p.probe_every + 1  # ... and back


def test_models_keep_their_own_timings(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.005})  # a model that is faster on one thread
    p = _policy(m, 2, monkeypatch)
    for _ in range(60):
        m.call(p, "small")
    assert p.choice("small") == 1 and p.choice("other") == 2


def test_tiny_models_are_not_probed(monkeypatch):
    m = FakeMachine({2: 1e-5, 1: 1e-5})
    p = _policy(m, 2, monkeypatch)
    assert {m.call(p) for _ in range(100)} == {2}


def test_fixed_count_never_switches(monkeypatch):
    m = FakeMachine({3: 0.01})
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    p = threads.ThreadPolicy(3, configure=m.configure, clock=m.clock)
    assert {m.call(p) for _ in range(50)} == {3} and m.switches == 1


def test_a_busy_core_seen_by_the_load_meter_moves_at_the_next_call(monkeypatch):
    # A model whose calls take 200 ms: probes every 16 calls would come seconds apart.
    m = FakeMachine({2: 0.120, 1: 0.230})
    p = _policy(m, 2, monkeypatch)
    assert [m.call(p) for _ in range(3)] == [2, 2, 2]
    m.others, m.cost[2] = 1.0, 0.300  # another process takes a core
    assert m.call(p) == 1  # the regime's first guess: the free cores
    m.others, m.cost[2] = 0.0, 0.120  # it ends
    assert m.call(p) == 2  # back at once: the idle regime kept its choice
    m.others = 0.9
    assert m.call(p) == 1 and p.choice("m", 1) == 1 and p.choice("m", 0) == 2


def test_measurement_overrules_a_regimes_guess(monkeypatch):
    # The other process barely slows this model (memory-bound kernels, say): two threads stay
    # faster under load, and the probes find it.
    m = FakeMachine({2: 0.010, 1: 0.030})
    m.others = 1.0
    p = _policy(m, 2, monkeypatch)
    used = [m.call(p) for _ in range(4 * p.probe_every)]
    assert used[0] == 1 and p.choice("m", 1) == 2 and used[-1] == 2


def test_unknown_load_is_one_regime(monkeypatch):
    m = FakeMachine({2: 0.010, 1: 0.018})
    m.others = None  # no /proc/stat
    p = _policy(m, 2, monkeypatch)
    assert {m.call(p) for _ in range(10)} == {2} and p.regime() == 0


def test_load_meter_counts_other_processes_only():
    t = {"now": 0.0, "busy": 100.0, "own": 5.0}
    meter = threads.LoadMeter(
        window=0.1,
        busy_seconds=lambda: t["busy"],
        own_seconds=lambda: t["own"],
        clock=lambda: t["now"],
    )
    assert meter() is None  # the first reading starts a window
    t["now"], t["busy"], t["own"] = 1.0, 101.8, 5.9  # 1.8 core-s busy, 0.9 of them ours
    assert meter() == pytest.approx(0.9)
    t["now"], t["busy"] = 1.05, 103.0  # within the window: not read again
    assert meter() == pytest.approx(0.9)
    # Ticks lag process_time: our own time may exceed the busy time counted; never below 0.
    t["now"], t["busy"], t["own"] = 2.0, 103.0, 8.0
    assert meter() == 0.0


def test_load_meter_without_proc_stat_says_unknown():
    meter = threads.LoadMeter(busy_seconds=lambda: None)
    assert meter() is None and meter() is None and not meter.available


def test_proc_stat_is_parsed_for_our_cores_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 500 0 0 0 0 0 0\n"
        "cpu0 100 1 50 900 7 2 3 4 0 0\n"
        "cpu1 200 0 100 800 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    tick = threads._TICK
    assert threads.read_busy_seconds(frozenset({0}), str(stat)) == pytest.approx(160 / tick)
    assert threads.read_busy_seconds(frozenset({0, 1}), str(stat)) == pytest.approx(460 / tick)
    assert threads.read_busy_seconds(frozenset({5}), str(stat)) is None
    assert threads.read_busy_seconds(frozenset({0}), str(tmp_path / "absent")) is None


def test_the_real_meter_reads_this_machine():
    meter = threads.LoadMeter(window=0.0)
    meter()
    sum(i * i for i in range(200_000))  # our own work is not "other processes"
    others = meter()
    if not meter.available:
        pytest.skip("/proc/stat is not readable here")
    assert others is not None and 0.0 <= others <= len(threads._CORES) + 0.5


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(BuildError, match="threads must be"):
        threads.ThreadPolicy(bad)


def test_environment_sets_the_default(monkeypatch):
    monkeypatch.setenv("ECOGRAPH_NUM_THREADS", "1")
    assert threads.policy("auto").settings  # reset
    monkeypatch.setattr(threads, "_POLICY", None)
    assert threads.policy().settings == [1]
    monkeypatch.setenv("ECOGRAPH_NUM_THREADS", "lots")
    monkeypatch.setattr(threads, "_POLICY", None)
    with pytest.raises(BuildError, match="ECOGRAPH_NUM_THREADS"):
        threads.policy()
    monkeypatch.setattr(threads, "_POLICY", None)


def test_running_a_model_leaves_the_callers_cpu_affinity_alone(tmp_path):
    # TVM's pool pinned the calling thread to one core; afterwards torch / numpy in the same
    # process ran on one core and this process believed it had one core.
    import os

    import ecograph
    from ecograph.models import build_default_model, example_inputs

    before = os.sched_getaffinity(0)
    model = ecograph.load(ecograph.compile(build_default_model(), "x86", tmp_path / "m"))
    model(**example_inputs())
    assert os.sched_getaffinity(0) == before


_POOL_SCRIPT = """
import os, sys
import ecograph.backends.tvm.threads as threads
import tvm, tvm_ffi
configure = tvm_ffi.get_global_func("runtime.config_threadpool")
configure(0, len(os.sched_getaffinity(0)))
print(tvm.runtime.num_threads(), threads.policy().settings, threads.policy().adaptive, sep=";")
"""


@pytest.mark.parametrize("env", [{}, {"TVM_NUM_THREADS": "1"}, {"ECOGRAPH_NUM_THREADS": "1"}])
def test_tvm_pool_is_started_with_every_core_unless_the_user_said(env):
    """TVM starts its pool with TVM_NUM_THREADS threads, else half the hardware threads, and
    cannot grow it later: ecograph sets it to every core (before the pool starts) so the
    policy's choice is real; a user's TVM_NUM_THREADS stays a fixed count. Real TVM, in a
    fresh process."""
    import os
    import subprocess
    import sys

    cores = len(os.sched_getaffinity(0))
    clean = {
        k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "ECOGRAPH_NUM_THREADS")
    }
    proc = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    pool, settings, adaptive = proc.stdout.strip().split(";")
    if "TVM_NUM_THREADS" in env:
        assert (int(pool), settings, adaptive) == (1, "[1]", "False")
    elif "ECOGRAPH_NUM_THREADS" in env:
        assert (int(pool), settings, adaptive) == (cores, "[1]", "False")
    else:
        assert int(pool) == cores  # the pool can run on every core
        assert adaptive == ("True" if cores > 1 else "False")
