"""Which int8 types to quantize to, as onnxruntime recommends for the CPU bnfold runs on.

The rule is onnxruntime's own, from ``quantize_static``'s docstring, "Choosing parameters for
CPU inference" (onnxruntime/quantization/quantize.py, onnxruntime 1.32), for QDQ models:

- x86/x64 without VNNI: activations QUInt8, weights QInt8, ``reduce_range=True`` (7-bit weights:
  the u8·s8 dot product (VPMADDUBSW) can saturate without VNNI, worst with per-channel weights);
- x86/x64 with VNNI (AVX512-VNNI or AVX-VNNI): QUInt8 / QInt8, ``reduce_range=False``;
- ARM (aarch64/arm64): QInt8 / QInt8, ``reduce_range=False``.

Other machines get quantize_static's own defaults (QInt8 / QInt8, no reduced range). VNNI is read
from /proc/cpuinfo (Linux); where that is unreadable an x86 CPU is assumed to lack it, the safe
side (reduced range never saturates).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["QUANT_TYPES", "QuantTypes", "cpu_flags", "recommended_types"]

QUANT_TYPES = ("int8", "uint8")
SOURCE = (
    "onnxruntime quantize_static docstring, 'Choosing parameters for CPU inference' "
    "(onnxruntime/quantization/quantize.py)"
)
_X86 = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_ARM = {"aarch64", "arm64", "armv8", "armv8l", "armv7l"}
_VNNI = {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"}


@dataclass(frozen=True)
class QuantTypes:
    """Activation and weight types (``int8``/``uint8``), reduced range, and why."""

    activation: str
    weight: str
    reduce_range: bool
    reason: str

    def __post_init__(self) -> None:
        for value in (self.activation, self.weight):
            if value not in QUANT_TYPES:
                raise ValueError(f"quantization type must be one of {QUANT_TYPES}, not {value!r}")

    def to_dict(self) -> dict[str, str | bool]:
        return dict(vars(self))

    def ort(self) -> tuple[Any, Any]:
        """(activation QuantType, weight QuantType) for onnxruntime."""
        from onnxruntime.quantization import QuantType

        names = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        return names[self.activation], names[self.weight]


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def recommended_types(machine: str | None = None, flags: set[str] | None = None) -> QuantTypes:
    """onnxruntime's recommendation for ``machine`` (default: this one) with CPU ``flags``
    (default: read from /proc/cpuinfo)."""
    arch = (machine or platform.machine()).lower()
    if arch in _ARM:
        return QuantTypes("int8", "int8", False, f"ARM CPU ({arch}): QInt8/QInt8 ({SOURCE})")
    if arch in _X86:
        found = cpu_flags() if flags is None and machine is None else flags
        vnni = sorted(_VNNI & found) if found is not None else []
        if vnni:
            return QuantTypes(
                "uint8",
                "int8",
                False,
                f"x86 CPU with VNNI ({', '.join(vnni)}): QUInt8/QInt8 ({SOURCE})",
            )
        known = "without VNNI" if found is not None else "VNNI unknown, assumed absent"
        return QuantTypes(
            "uint8", "int8", True, f"x86 CPU {known}: QUInt8/QInt8, reduce_range ({SOURCE})"
        )
    return QuantTypes(
        "int8",
        "int8",
        False,
        f"{arch} CPU: no onnxruntime guidance, quantize_static defaults QInt8/QInt8",
    )
