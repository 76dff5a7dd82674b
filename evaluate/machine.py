"""The machine a report was measured on: the CPU and the best vector instruction set its flags list, what
torch's CPU kernels dispatch to, OS and architecture, Python, torch and its intra-op threads, and the
other libraries the numbers depend on. Latency depends on all of it; FLOPs and metrics on the libraries.

Reading it never fails: where /proc/cpuinfo is absent or unreadable (not Linux) the CPU name comes from
`platform` and the instruction set is "unknown"; torch's own view (`torch_cpu_capability`) is always there.
"""
from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# The libraries besides torch whose code computes the numbers of a report (models, metrics, runtimes).
LIBRARIES = ("timm", "transformers", "torchmetrics", "onnxruntime", "openvino")

_CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo keys naming the CPU, in order of preference (x86, then ARM boards and others).
_CPU_NAME_KEYS = ("model name", "cpu model", "hardware", "model", "cpu")
# Instruction-set levels, best first: (flag that marks it, name), then the extensions worth naming at
# that level as (flag, name). Flag names are Linux's (x86 "flags", ARM "Features").
_ISA_LEVELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("avx512f", "AVX-512", (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"),
                            ("amx_tile", "AMX"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"))),
    ("avx2", "AVX2", (("avx_vnni", "VNNI"),)),
    ("sse4_2", "SSE4.2", ()),
    ("sve2", "SVE2", (("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"))),
    ("sve", "SVE", (("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"))),
    ("asimd", "NEON", (("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"))),
)


@dataclass(frozen=True)
class MachineInfo:
    """Where a report was measured. `isa` is the best level in the CPU's flags with the extensions present
    ("AVX-512 + VNNI, BF16"), "baseline" when it has none of those levels, "unknown" when the flags could
    not be read; `torch_cpu_capability` is `torch.backends.cpu.get_cpu_capability()` (the kernels torch
    chose: "AVX512", "AVX2", "DEFAULT", ...); `threads` is torch's intra-op thread count for the latency;
    `libraries` maps each of `LIBRARIES` installed to its version."""

    cpu: str
    isa: str
    torch_cpu_capability: str
    os: str
    arch: str
    python: str
    torch: str
    threads: int
    libraries: dict[str, str] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineInfo:
        return cls(**{**data, "libraries": dict(data.get("libraries", {}))})

    def summary(self) -> str:
        """One line: '<CPU> (<ISA>), torch <version>, <n> threads; torch CPU kernels <capability>, <OS>
        <arch>, Python <version>, <library> <version>, ...'."""
        threads = f"{self.threads} thread" + ("" if self.threads == 1 else "s")
        rest = [f"torch CPU kernels {self.torch_cpu_capability}", f"{self.os} {self.arch}", f"Python {self.python}"]
        rest += [f"{name} {version}" for name, version in self.libraries.items()]
        return f"{self.cpu} ({self.isa}), torch {self.torch}, {threads}; {', '.join(rest)}"


def current_machine(threads: int | None = None) -> MachineInfo:
    """This machine, measuring with `threads` intra-op threads (default: torch's current count)."""
    cpuinfo = _read_cpuinfo()
    return MachineInfo(
        cpu=cpu_name(cpuinfo),
        isa="unknown" if cpuinfo is None else isa_level(cpu_flags(cpuinfo)),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        os=f"{platform.system()} {platform.release()}".strip() or "unknown OS",
        arch=platform.machine() or "unknown architecture",
        python=platform.python_version(),
        torch=torch.__version__,
        threads=torch.get_num_threads() if threads is None else threads,
        libraries=library_versions(),
    )


def _read_cpuinfo() -> str | None:
    try:
        return _CPUINFO.read_text(errors="replace")
    except OSError:  # not Linux, or no /proc: the caller falls back to `platform`
        return None


def _first_values(cpuinfo: str) -> dict[str, str]:
    """The first value of each key of /proc/cpuinfo (keys lower-cased; one block per core repeats them)."""
    values: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip().lower(), value.strip())
    return values


def cpu_name(cpuinfo: str | None) -> str:
    """The CPU's model name from /proc/cpuinfo text, else `platform.processor()`, else the architecture."""
    values = _first_values(cpuinfo) if cpuinfo is not None else {}
    for key in _CPU_NAME_KEYS:
        if values.get(key):
            return " ".join(values[key].split())
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo text ("flags" on x86, "Features" on ARM), lower-cased."""
    values = _first_values(cpuinfo)
    return frozenset(values.get("flags", values.get("features", "")).lower().split())


def isa_level(flags: Iterable[str]) -> str:
    """The best instruction-set level among `flags`, with the extensions present: "AVX-512 + VNNI, BF16",
    "AVX2", "NEON", ...; "baseline" when none of the levels is there."""
    present = set(flags)
    for flag, name, extensions in _ISA_LEVELS:
        if flag in present:
            extras = [extra for extra_flag, extra in extensions if extra_flag in present]
            return f"{name} + {', '.join(extras)}" if extras else name
    return "baseline"


# The instructions that make int8 dot products fast, best first: (flag, short name). `isa_level` names
# them "VNNI" and "AMX-INT8" among a level's extensions.
INTEGER_DOT_FLAGS = (("amx_int8", "AMX"), ("avx512_vnni", "VNNI"), ("avx_vnni", "VNNI"))
_INTEGER_DOT_EXTENSIONS = ("VNNI", "AMX-INT8")


def integer_dot_product(flags: Iterable[str] | None = None) -> str | None:
    """"AMX" or "VNNI" when `flags` (default: this CPU's) have integer dot-product instructions, else None."""
    if flags is None:
        cpuinfo = _read_cpuinfo()
        flags = cpu_flags(cpuinfo) if cpuinfo is not None else ()
    present = set(flags)
    return next((name for flag, name in INTEGER_DOT_FLAGS if flag in present), None)


def isa_has_integer_dot_product(isa: str) -> bool:
    """Whether an `isa_level` string (as a report records it) names VNNI or AMX-INT8 among its extensions."""
    _, _, extensions = isa.partition(" + ")
    return any(extension in _INTEGER_DOT_EXTENSIONS for extension in extensions.split(", "))


def library_versions() -> dict[str, str]:
    """Installed versions of `LIBRARIES`; one that is not installed took no part in any number, and is left out."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
