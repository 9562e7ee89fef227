"""Target presets: "x86", "x86:<cpu>", "arm", "arm:<cpu>", "cuda", "cuda:sm_XX", or a raw dict.

A preset resolves to a `TargetSpec`: the TVM target as a plain dict (TVM 0.27 takes dicts, not
strings), the family (x86 / arm / cuda / other), and how to link the library (the host C++
compiler, or Debian's aarch64 cross compiler for ARM). Resolution of "x86" and "cuda" detects
the host CPU features and the GPU when there is one; what was detected is recorded in the spec
so the manifest says exactly what the library was built for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ecograph.errors import BuildError

ARM_TRIPLE = "aarch64-linux-gnu"
ARM_CROSS_CXX = "aarch64-linux-gnu-g++"
DEFAULT_CUDA_ARCH = "sm_80"

# AVX-512 features LLVM may not infer from an older CPU name (e.g. znver4 reported as znver3).
_X86_FEATURES = (
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512cd",
    "avx512vnni",
    "avx512bf16",
    "avxvnni",
)


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: what TVM compiles for and how the library is linked."""

    name: str  # the preset as given ("x86", "arm:cortex-a72", "cuda:sm_90", "custom")
    family: str  # "x86" | "arm" | "cuda" | "other"
    target: dict[str, Any]  # the TVM target dict (with "host" for GPU targets)
    cc: str | None = None  # C++ compiler for export_library; None: TVM's default (host g++)
    notes: list[str] = field(default_factory=list)

    def tvm_target(self) -> Any:
        import tvm

        spec = dict(self.target)
        host = spec.pop("host", None)
        if host is not None:
            return tvm.target.Target(spec, host=host)
        return tvm.target.Target(spec)

    @property
    def is_gpu(self) -> bool:
        return self.family == "cuda"

    @property
    def is_cross(self) -> bool:
        """True when the library cannot run on this machine's CPU (ARM from x86)."""
        return self.family == "arm" and os.uname().machine not in ("aarch64", "arm64")


def resolve(target: str | dict[str, Any] | TargetSpec) -> TargetSpec:
    """Resolve a preset name or raw TVM target dict to a TargetSpec (see module doc)."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        return _raw(target)
    if not isinstance(target, str):
        raise BuildError(f"target must be a preset name or a dict, got {type(target).__name__}")
    family, _, variant = target.partition(":")
    if family == "x86":
        return _x86(target, variant)
    if family == "arm":
        return _arm(target, variant)
    if family == "cuda":
        return _cuda(target, variant)
    if family in ("llvm", "cpu"):
        return _x86(target, variant)
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


def _x86(name: str, cpu: str) -> TargetSpec:
    import tvm.target.codegen as cg

    notes: list[str] = []
    spec: dict[str, Any] = {"kind": "llvm"}
    if cpu:
        if not _llvm_cpu_ok(cpu, "x86_64-linux-gnu"):
            raise BuildError(f"target {name!r}: LLVM does not know the x86 CPU {cpu!r}")
        spec["mcpu"] = cpu
        spec["mtriple"] = "x86_64-linux-gnu"
        return TargetSpec(name, "x86", spec, notes=notes)
    host = cg.llvm_get_system_cpu()
    spec["mcpu"] = host
    flags = _cpuinfo_flags()
    mattr = []
    for feat in _X86_FEATURES:
        if feat in flags:
            mattr.append(f"+{feat}")
    if mattr:
        spec["mattr"] = mattr
    spec["num-cores"] = os.cpu_count() or 1
    notes.append(f"host CPU detected: {host} with {', '.join(mattr) or 'no AVX-512'}")
    return TargetSpec(name, "x86", spec, notes=notes)


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _arm(name: str, cpu: str) -> TargetSpec:
    spec: dict[str, Any] = {"kind": "llvm", "mtriple": ARM_TRIPLE, "mattr": ["+neon"]}
    if cpu:
        if not _llvm_cpu_ok(cpu, ARM_TRIPLE):
            raise BuildError(f"target {name!r}: LLVM does not know the ARM CPU {cpu!r}")
        spec["mcpu"] = cpu
    cc = None if os.uname().machine in ("aarch64", "arm64") else ARM_CROSS_CXX
    return TargetSpec(name, "arm", spec, cc=cc)


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
    return TargetSpec(name, "cuda", spec, notes=notes)


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
        spec.setdefault("host", {"kind": "llvm"})
        return TargetSpec("custom", "cuda", spec)
    triple = str(spec.get("mtriple", ""))
    if triple.startswith("aarch64"):
        cc = None if os.uname().machine in ("aarch64", "arm64") else ARM_CROSS_CXX
        return TargetSpec("custom", "arm", spec, cc=cc)
    return TargetSpec("custom", "x86" if kind == "llvm" else "other", spec)


def check_toolchain(spec: TargetSpec) -> None:
    """Fail early, with the fix, when the linker a target needs is missing."""
    if spec.cc and shutil.which(spec.cc) is None:
        raise BuildError(
            f"target {spec.name!r} links with {spec.cc}, which is not installed; on Debian/Ubuntu "
            "run: apt-get install g++-aarch64-linux-gnu"
        )
