"""Typer option aliases shared by ``check``, ``bench`` and ``fold`` (verification after folding)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bnfold.errors import UsageError
from bnfold.verify import CheckOptions
from bnfold.verify.inputs import DEFAULT_INPUT_BUDGET, parse_shape

ShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--shape",
        metavar="NAME=1x3x224x224",
        help="Shape of an input (NAME=1x3x224x224) or a symbolic dim (DIM=8). Repeatable.",
    ),
]
InputsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--inputs",
        metavar="FILE.npz|DIR",
        help="Real inputs: an .npz with one array per input name, or a folder of them. Repeatable.",
    ),
]
SamplesOpt = Annotated[
    int, typer.Option("--samples", min=0, help="Seeded random input sets to draw.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random input sets.")]
IntRangeOpt = Annotated[
    tuple[int, int],
    typer.Option("--int-range", metavar="LO HI", help="Inclusive range of random integer inputs."),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch", min=1, help="Size of a symbolic first dim.")
]
ProviderOpt = Annotated[
    str, typer.Option("--provider", metavar="cpu|cuda", help="onnxruntime execution provider.")
]
AtolOpt = Annotated[
    float | None,
    typer.Option("--atol", help="Absolute tolerance [default: by dtype; float32 1e-5]."),
]
RtolOpt = Annotated[
    float | None,
    typer.Option(
        "--rtol",
        help="Tolerance relative to max|ref| (range mode) or |ref| [default: by dtype; float32 1e-4].",
    ),
]
ToleranceModeOpt = Annotated[
    str,
    typer.Option(
        "--tolerance-mode",
        metavar="range|elementwise",
        help="range: |ref-cand| <= atol + rtol*max|ref| per output; elementwise: <= atol + rtol*|ref|.",
    ),
]
OutputTolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--output-tol", metavar="NAME=ATOL,RTOL", help="Tolerance for one output. Repeatable."
    ),
]
OptLevelOpt = Annotated[
    str,
    typer.Option(
        "--opt-level",
        metavar="disable|basic|extended|all",
        help="onnxruntime graph optimisation level (disable: ORT cannot fold BN itself).",
    ),
]
MaxInputMibOpt = Annotated[
    int,
    typer.Option(
        "--max-input-mib",
        min=1,
        metavar="MIB",
        help="Largest input set (all inputs of one run) to allocate, in MiB.",
    ),
]
DEFAULT_MAX_INPUT_MIB = DEFAULT_INPUT_BUDGET >> 20
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="onnxruntime intra-op threads.")
]


def parse_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``--shape`` values as a dict."""
    return dict(parse_shape(v) for v in values or [])


def parse_output_tols(values: list[str] | None) -> dict[str, tuple[float, float]]:
    """``--output-tol NAME=ATOL,RTOL`` values as a dict."""
    out: dict[str, tuple[float, float]] = {}
    for text in values or []:
        name, _, tols = text.rpartition("=")
        try:
            atol, rtol = (float(t) for t in tols.split(","))
            if not name or atol < 0 or rtol < 0:
                raise ValueError
        except ValueError:
            raise UsageError(
                f"--output-tol {text!r}: expected NAME=ATOL,RTOL with both >= 0"
            ) from None
        out[name] = (atol, rtol)
    return out


def build_check_options(
    *,
    shape: list[str] | None = None,
    inputs: list[Path] | None = None,
    samples: int = 3,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
    batch: int | None = None,
    provider: str = "cpu",
    opt_level: str = "disable",
    atol: float | None = None,
    rtol: float | None = None,
    tolerance_mode: str = "range",
    output_tol: list[str] | None = None,
    threads: int | None = None,
    calibrate: bool = False,
    locate: bool = False,
    max_input_mib: int = DEFAULT_MAX_INPUT_MIB,
) -> CheckOptions:
    """CheckOptions from raw CLI values (raises UsageError on bad ones)."""
    options = CheckOptions(
        samples=samples,
        seed=seed,
        shapes=parse_shapes(shape),
        inputs=list(inputs or []),
        int_range=tuple(int_range),
        batch=batch,
        provider=provider,
        opt_level=opt_level,
        atol=atol,
        rtol=rtol,
        mode=tolerance_mode,
        per_output=parse_output_tols(output_tol),
        calibrate=calibrate,
        locate=locate,
        threads=threads,
        max_input_bytes=max_input_mib << 20,
    )
    options.validate()
    return options
