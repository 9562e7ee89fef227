"""Targets: resolved once, at the API / CLI boundary, into a `TargetSpec` that travels down.

Presets: "x86", "x86:<cpu>", "arm", "arm:<cpu>", "cuda", "cuda:sm_XX", or a raw TVM target dict.
`resolve` turns any of them into a `TargetSpec`: the TVM target as a plain dict (TVM 0.27 takes
dicts, not strings), the family (x86 / arm / cuda / other), the facts code generation needs
(LLVM CPU name, the CPU features LLVM may use, vector width, cores, CUDA arch) and how to link
the library (the host C++ compiler, or Debian's aarch64 cross compiler for ARM). "x86" and
"cuda" detect the host CPU and the GPU; what was detected is recorded in the spec, in the
compile-cache key and in the manifest, so a build is never mistaken for one made for another CPU.
Nothing below this module parses a target string: lowering, schedules, build, runtime, cache
and report read the spec's fields.

Every LLVM CPU target gets `LLVM_WORKAROUNDS` (see docs/tvm.md, "LLVM loop-vectorizer
miscompile"): the LLVM 22 bundled with TVM 0.27 vectorizes `x[(a % 3) * 20 + (i % 4) * 5 + j]`
as if `i % 4` were `i` when it picks 512-bit vectors (znver4, skylake-avx512), so Tile returned
garbage on AVX-512 hosts. Interleave groups of one member avoid the faulty analysis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ecograph.errors import BuildError

ARM_TRIPLE = "aarch64-linux-gnu"
X86_TRIPLE = "x86_64-linux-gnu"
ARM_CROSS_CXX = "aarch64-linux-gnu-g++"
DEFAULT_CUDA_ARCH = "sm_80"

# LLVM command-line options added to every LLVM CPU target (scoped to each build by TVM).
LLVM_WORKAROUNDS = ("-max-interleave-group-factor=1",)

# Features LLVM may not infer from an older CPU name (e.g. znver4 reported as znver3), as
# LLVM names them -> as /proc/cpuinfo names them.
_X86_FEATURES = {
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avxvnni": "avx_vnni",
}


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: what TVM compiles for, the facts schedules need, how to link."""

    name: str  # the preset as given ("x86", "arm:cortex-a72", "cuda:sm_90", "custom")
    family: str  # "x86" | "arm" | "cuda" | "other"
    target: dict[str, Any]  # the TVM target dict (with "host" for GPU targets)
    cc: str | None = None  # C++ compiler for export_library; None: TVM's default (host g++)
    notes: list[str] = field(default_factory=list)
    cpu: str | None = None  # LLVM CPU name the code is tuned for ("znver4", "generic", ...)
    features: frozenset[str] = frozenset()  # CPU features the code may use (LLVM names)
    cuda_arch: str | None = None  # "sm_80" for CUDA targets
    num_cores: int | None = None  # cores of the machine it runs on, when known (the host)

    def tvm_target(self) -> Any:
        import tvm

        spec = dict(self.target)
        host = spec.pop("host", None)
        if host is not None:
            return tvm.target.Target(spec, host=host)
        return tvm.target.Target(spec)

    def has(self, feature: str) -> bool:
        """True if the generated code may use CPU `feature` (LLVM name: "avx512vnni", "dotprod")."""
        return feature in self.features

    @property
    def is_gpu(self) -> bool:
        return self.family == "cuda"

    @property
    def is_cross(self) -> bool:
        """True when the library cannot run on this machine's CPU (ARM from x86)."""
        return self.family == "arm" and os.uname().machine not in ("aarch64", "arm64")

    @property
    def device(self) -> str:
        """The device kind the compiled code runs on: "cuda" or "cpu"."""
        return "cuda" if self.is_gpu else "cpu"

    @property
    def vector_bits(self) -> int:
        """Widest SIMD register the code may use: 512 (AVX-512), 256 (AVX/AVX2), 128."""
        if self.has("avx512f"):
            return 512
        if self.has("avx2") or self.has("avx"):
            return 256
        return 128

    def describe(self) -> str:
        """One line for reports and logs: "x86 (znver4; avx512f, avx512vnni; 2 cores)"."""
        if self.is_gpu:
            return f"{self.name} (CUDA {self.cuda_arch})"
        shown = sorted(f for f in self.features if f in _SHOWN_FEATURES)
        parts = [self.cpu or "generic", ", ".join(shown) or "baseline ISA"]
        if self.num_cores:
            parts.append(f"{self.num_cores} cores")
        return f"{self.name} ({'; '.join(parts)})"

    def facts(self) -> dict[str, Any]:
        """The resolved facts as JSON: recorded in manifests and reports, keyed in caches."""
        return {
            "name": self.name,
            "family": self.family,
            "tvm": self.target,
            "cpu": self.cpu,
            "features": sorted(self.features),
            "cuda_arch": self.cuda_arch,
            "num_cores": self.num_cores,
        }

    def cache_key(self) -> dict[str, Any]:
        """What a compiled artifact depends on: everything but the preset's spelling."""
        key = self.facts()
        del key["name"]
        return key


_SHOWN_FEATURES = frozenset(
    {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx512bf16", "neon", "dotprod"}
)


def resolve(target: str | dict[str, Any] | TargetSpec) -> TargetSpec:
    """Resolve a preset name or raw TVM target dict to a TargetSpec (see module doc)."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        return _raw(target)
    if not isinstance(target, str):
        raise BuildError(f"target must be a preset name or a dict, got {type(target).__name__}")
    family, _, variant = target.partition(":")
    if family in ("x86", "llvm", "cpu"):
        return _x86(target, variant)
    if family == "arm":
        return _arm(target, variant)
    if family == "cuda":
        return _cuda(target, variant)
    raise BuildError(
        f"unknown target {target!r}; use 'x86', 'x86:<cpu>', 'arm', 'arm:<cpu>', 'cuda', "
        "'cuda:sm_XX' or a TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver4'}"
    )


def _llvm_cpu_ok(cpu: str, triple: str | None = None) -> bool:
    import tvm.target.codegen as cg

    try:
        return bool(cg.llvm_is_valid_cpu(cpu, triple or cg.llvm_get_system_triple()))
    except Exception:
        return False


def _with_workarounds(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with LLVM_WORKAROUNDS added to its "cl-opt" list (options already set are kept)."""
    opts = list(spec.get("cl-opt", []))
    set_names = {o.split("=", 1)[0] for o in opts}
    opts += [o for o in LLVM_WORKAROUNDS if o.split("=", 1)[0] not in set_names]
    return {**spec, "cl-opt": opts}


def llvm_features(spec: dict[str, Any]) -> frozenset[str]:
    """The CPU features LLVM enables for an llvm target dict (its mcpu plus mattr)."""
    import tvm
    import tvm.target.codegen as cg

    plain = {k: v for k, v in spec.items() if k in ("kind", "mcpu", "mtriple", "mattr")}
    try:
        found = cg.llvm_get_cpu_features(tvm.target.Target(plain))
    except Exception:
        return frozenset()
    return frozenset(str(f) for f in found)


def _cpu_spec(name: str, family: str, spec: dict[str, Any], **kw: Any) -> TargetSpec:
    spec = _with_workarounds(spec)
    return TargetSpec(
        name, family, spec, cpu=str(spec.get("mcpu", "generic")), features=llvm_features(spec), **kw
    )


def _x86(name: str, cpu: str) -> TargetSpec:
    import tvm.target.codegen as cg

    if cpu:
        if not _llvm_cpu_ok(cpu, X86_TRIPLE):
            raise BuildError(f"target {name!r}: LLVM does not know the x86 CPU {cpu!r}")
        return _cpu_spec(name, "x86", {"kind": "llvm", "mcpu": cpu, "mtriple": X86_TRIPLE})
    host = cg.llvm_get_system_cpu()
    flags = cpuinfo_flags()
    mattr = [f"+{llvm}" for llvm, linux in _X86_FEATURES.items() if linux in flags]
    cores = host_cores()
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": host, "num-cores": cores}
    if mattr:
        spec["mattr"] = mattr
    notes = [f"host CPU detected: {host} with {', '.join(mattr) or 'no AVX-512'}"]
    return _cpu_spec(name, "x86", spec, notes=notes, num_cores=cores)


def _affinity_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Read once, at import: a TVM thread pool that binds threads pins the calling thread to one
# core, after which sched_getaffinity(0) says 1 (ecograph asks TVM not to bind; see threads.py).
_HOST_CORES = _affinity_cores()


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask when ecograph was imported)."""
    return _HOST_CORES


def cpuinfo_flags() -> set[str]:
    """The host CPU's feature flags from /proc/cpuinfo (empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# ISA extensions code generation may use, as LLVM names them -> as /proc/cpuinfo names them.
# A CPU model whose LLVM features include one the host lacks would die with SIGILL here.
_ISA_FLAGS = {
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "popcnt": "popcnt",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "lzcnt": "abm",
    "movbe": "movbe",
    "adx": "adx",
    "sha": "sha_ni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "gfni": "gfni",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512ifma": "avx512ifma",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512fp16": "avx512_fp16",
}


def missing_on_host(spec: TargetSpec) -> list[str]:
    """The ISA extensions `spec`'s code may use that this x86 host lacks (empty: it can run
    here). Only meaningful for x86 specs on an x86 host; other families return []."""
    if spec.family != "x86":
        return []
    return missing_x86_features(spec.features)


def missing_x86_features(features: Iterable[str]) -> list[str]:
    """Of x86 code's LLVM `features`, the ISA extensions this x86 host lacks ([] elsewhere).
    Running such code dies with SIGILL; the loader checks this first."""
    if os.uname().machine not in ("x86_64", "AMD64"):
        return []
    flags = cpuinfo_flags()
    if not flags:
        return []  # /proc/cpuinfo unreadable: nothing to compare with
    return sorted(f for f in features if f in _ISA_FLAGS and _ISA_FLAGS[f] not in flags)


def _arm(name: str, cpu: str) -> TargetSpec:
    spec: dict[str, Any] = {"kind": "llvm", "mtriple": ARM_TRIPLE, "mattr": ["+neon"]}
    if cpu:
        if not _llvm_cpu_ok(cpu, ARM_TRIPLE):
            raise BuildError(f"target {name!r}: LLVM does not know the ARM CPU {cpu!r}")
        spec["mcpu"] = cpu
    cc = None if os.uname().machine in ("aarch64", "arm64") else ARM_CROSS_CXX
    return _cpu_spec(name, "arm", spec, cc=cc)


def _cuda(name: str, arch: str) -> TargetSpec:
    notes: list[str] = []
    if arch:
        if not (arch.startswith("sm_") and arch[3:].rstrip("a").isdigit()):
            raise BuildError(f"target {name!r}: CUDA arch must look like 'sm_80' or 'sm_90a'")
    else:
        arch = detect_cuda_arch() or ""
        if arch:
            notes.append(f"GPU detected: {arch}")
        else:
            arch = DEFAULT_CUDA_ARCH
            notes.append(f"no GPU found; built for {arch} (pass 'cuda:sm_XX' to choose)")
    spec: dict[str, Any] = {"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}}
    return TargetSpec(name, "cuda", spec, notes=notes, cuda_arch=arch)


def detect_cuda_arch() -> str | None:
    """The compute capability of GPU 0 as 'sm_XY', or None without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = (
            subprocess.run(
                [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or "." not in out[0]:
        return None
    major, minor = out[0].strip().split(".", 1)
    return f"sm_{major}{minor}"


def _raw(target: dict[str, Any]) -> TargetSpec:
    kind = target.get("kind")
    if kind not in ("llvm", "cuda", "c"):
        raise BuildError(f"raw target dict needs kind 'llvm', 'cuda' or 'c'; got {target!r}")
    spec = dict(target)
    if kind == "cuda":
        arch = str(spec.get("arch", "")) or DEFAULT_CUDA_ARCH
        spec["arch"] = arch
        spec.setdefault("host", {"kind": "llvm"})
        return TargetSpec("custom", "cuda", spec, cuda_arch=arch)
    if kind == "c":
        return TargetSpec("custom", "other", spec)
    triple = str(spec.get("mtriple", ""))
    cores = spec.get("num-cores")
    num_cores = int(cores) if isinstance(cores, int) else None
    if triple.startswith("aarch64"):
        cc = None if os.uname().machine in ("aarch64", "arm64") else ARM_CROSS_CXX
        return _cpu_spec("custom", "arm", spec, cc=cc, num_cores=num_cores)
    return _cpu_spec("custom", "x86", spec, num_cores=num_cores)


def check_toolchain(spec: TargetSpec) -> None:
    """Fail early, with the fix, when the linker a target needs is missing."""
    if spec.cc and shutil.which(spec.cc) is None:
        raise BuildError(
            f"target {spec.name!r} links with {spec.cc}, which is not installed; on Debian/Ubuntu "
            "run: apt-get install g++-aarch64-linux-gnu"
        )
