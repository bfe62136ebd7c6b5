"""The options ``fold``, ``check``, ``bench`` and ``quantize`` share, declared once as option
groups (see ``bnfold.cli.option_groups``), and their conversion to the library's settings.

Nothing here imports numpy or onnxruntime: the settings are plain dataclasses, and the
runtime is loaded when a command validates or uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bnfold.cli.option_groups import OptionGroup
from bnfold.errors import UsageError
from bnfold.verify.settings import DEFAULT_INPUT_BUDGET, RunSettings

if TYPE_CHECKING:
    from bnfold.bench.bench import BenchOptions
    from bnfold.verify.check import CheckOptions

DEFAULT_MAX_INPUT_MIB = DEFAULT_INPUT_BUDGET >> 20
INPUTS_PANEL = "Inputs and sessions"
COMPARE_PANEL = "Comparison"
TIMING_PANEL = "Timing"
OUTPUT_PANEL = "Output"

ProviderOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        metavar="cpu|cuda",
        help="onnxruntime execution provider.",
        rich_help_panel=INPUTS_PANEL,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="onnxruntime intra-op threads (then inter-op 1).",
        rich_help_panel=INPUTS_PANEL,
    ),
]
OptLevelOpt = Annotated[
    str,
    typer.Option(
        "--opt-level",
        metavar="disable|basic|extended|all",
        help="onnxruntime graph optimisation level (disable: ORT cannot fold BN itself).",
        rich_help_panel=INPUTS_PANEL,
    ),
]


@dataclass
class InputFlags(OptionGroup):
    """Input sets and the provider (fold's verification, check, bench)."""

    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape",
            metavar="NAME=1x3x224x224",
            help="Shape of an input (NAME=1x3x224x224) or size of a symbolic dim (DIM=8). "
            "Repeatable.",
            rich_help_panel=INPUTS_PANEL,
        ),
    ] = None
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            min=1,
            help="Size of symbolic batch (first) dims (default 1, said in a note).",
            rich_help_panel=INPUTS_PANEL,
        ),
    ] = None
    inputs: Annotated[
        list[Path] | None,
        typer.Option(
            "--inputs",
            metavar="FILE.npz|DIR",
            help="Real inputs: an .npz with one array per input name, or a folder of them. "
            "Repeatable.",
            rich_help_panel=INPUTS_PANEL,
        ),
    ] = None
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the random inputs.", rich_help_panel=INPUTS_PANEL)
    ] = 0
    int_range: Annotated[
        tuple[int, int],
        typer.Option(
            "--int-range",
            metavar="LO HI",
            help="Inclusive range of random integer inputs.",
            rich_help_panel=INPUTS_PANEL,
        ),
    ] = (0, 10)
    max_input_mib: Annotated[
        int,
        typer.Option(
            "--max-input-mib",
            min=1,
            metavar="MIB",
            help="Largest input set (all inputs of one run) to allocate or read, in MiB.",
            rich_help_panel=INPUTS_PANEL,
        ),
    ] = DEFAULT_MAX_INPUT_MIB
    provider: ProviderOpt = "cpu"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``--shape`` values as a dict."""
        from bnfold.verify.inputs import parse_shape

        out: dict[str, tuple[int, ...]] = {}
        for text in self.shape or []:
            name, dims = parse_shape(text)
            if name in out:
                raise UsageError(f"--shape {name}=... is given twice")
            out[name] = dims
        return out

    def apply(self, settings: RunSettings) -> None:
        """Set the shared input and provider settings of ``settings`` from these flags."""
        settings.shapes = self.shapes()
        settings.batch = self.batch
        settings.seed = self.seed
        settings.int_range = (self.int_range[0], self.int_range[1])
        settings.inputs = list(self.inputs or [])
        settings.max_input_bytes = self.max_input_mib << 20
        settings.provider = self.provider

    def input_files(self) -> list[Path]:
        """The .npz files ``--inputs`` names (a folder for the files in it)."""
        from bnfold.verify.inputs import npz_files

        return npz_files(self.inputs or [])


@dataclass
class CompareFlags(OptionGroup):
    """How many random sets, and the tolerances (fold's verification, check)."""

    samples: Annotated[
        int,
        typer.Option(
            "--samples", min=0, help="Seeded random input sets.", rich_help_panel=COMPARE_PANEL
        ),
    ] = 3
    atol: Annotated[
        float | None,
        typer.Option(
            "--atol",
            help="Absolute tolerance (default by dtype; float32 1e-5).",
            rich_help_panel=COMPARE_PANEL,
        ),
    ] = None
    rtol: Annotated[
        float | None,
        typer.Option(
            "--rtol",
            help="Tolerance relative to max|ref| (range mode) or |ref| "
            "(default by dtype; float32 1e-4).",
            rich_help_panel=COMPARE_PANEL,
        ),
    ] = None
    tolerance_mode: Annotated[
        str,
        typer.Option(
            "--tolerance-mode",
            metavar="range|elementwise",
            help="range: |ref-cand| <= atol + rtol*max|ref| per output; "
            "elementwise: <= atol + rtol*|ref|.",
            rich_help_panel=COMPARE_PANEL,
        ),
    ] = "range"
    output_tol: Annotated[
        list[str] | None,
        typer.Option(
            "--output-tol",
            metavar="NAME=ATOL,RTOL",
            help="Tolerance for one output (an unknown name is an error). Repeatable.",
            rich_help_panel=COMPARE_PANEL,
        ),
    ] = None

    def per_output(self) -> dict[str, tuple[float, float]]:
        """``--output-tol NAME=ATOL,RTOL`` values as a dict."""
        out: dict[str, tuple[float, float]] = {}
        for text in self.output_tol or []:
            name, _, tols = text.rpartition("=")
            try:
                atol, rtol = (float(t) for t in tols.split(","))
                if not name or not (0 <= atol < math.inf and 0 <= rtol < math.inf):
                    raise ValueError
            except ValueError:
                raise UsageError(
                    f"--output-tol {text!r}: expected NAME=ATOL,RTOL with both finite and >= 0"
                ) from None
            if name in out:
                raise UsageError(f"--output-tol {name}=... is given twice")
            out[name] = (atol, rtol)
        return out


@dataclass
class TimingFlags(OptionGroup):
    """Paired latency rounds (bench, quantize --bench)."""

    warmup: Annotated[
        int,
        typer.Option(
            "--warmup",
            min=0,
            help="Warm-up runs per model and level.",
            rich_help_panel=TIMING_PANEL,
        ),
    ] = 5
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=1,
            help="Paired rounds (fewer than 8 give wide intervals).",
            rich_help_panel=TIMING_PANEL,
        ),
    ] = 20
    iters: Annotated[
        int,
        typer.Option(
            "--iters",
            min=1,
            help="Runs per model per round (the median is kept).",
            rich_help_panel=TIMING_PANEL,
        ),
    ] = 10
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="onnxruntime intra-op threads (inter-op 1).",
            rich_help_panel=TIMING_PANEL,
        ),
    ] = 1


@dataclass
class OutputFlags(OptionGroup):
    """Where the machine-readable result goes, and how much is said (every command)."""

    json: Annotated[
        Path | None,
        typer.Option(
            "--json",
            metavar="PATH|-",
            help="Write the full result as JSON to PATH, or to stdout with '-' "
            "(then nothing else goes to stdout).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Nothing on stdout; on stderr at most the one error line.",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = False

    @property
    def json_stdout(self) -> bool:
        return self.json is not None and str(self.json) == "-"

    @property
    def json_file(self) -> Path | None:
        return None if self.json is None or self.json_stdout else self.json

    @property
    def human(self) -> bool:
        """Whether tables and status lines go to stdout."""
        return not (self.quiet or self.json_stdout)


def check_options(
    inputs: InputFlags,
    compare: CompareFlags,
    *,
    opt_level: str = "disable",
    threads: int | None = None,
    calibrate: bool = False,
    locate: bool = False,
) -> CheckOptions:
    """CheckOptions from the shared flags (raises UsageError on bad ones)."""
    from bnfold.verify.check import CheckOptions

    options = CheckOptions(
        threads=threads,
        samples=compare.samples,
        opt_level=opt_level,
        atol=compare.atol,
        rtol=compare.rtol,
        mode=compare.tolerance_mode,
        per_output=compare.per_output(),
        calibrate=calibrate,
        locate=locate,
    )
    inputs.apply(options)
    options.validate()
    return options


def bench_options(
    inputs: InputFlags, timing: TimingFlags, *, levels: tuple[str, ...], memory: bool
) -> BenchOptions:
    """BenchOptions from the shared flags (raises UsageError on bad ones)."""
    from bnfold.bench.bench import BenchOptions

    options = BenchOptions(
        threads=timing.threads,
        levels=levels,
        warmup=timing.warmup,
        rounds=timing.rounds,
        iters=timing.iters,
        memory=memory,
    )
    inputs.apply(options)
    options.validate()
    return options
