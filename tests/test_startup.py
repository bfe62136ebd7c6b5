"""``bnfold --help`` imports nothing heavy (issue 9 item 6): onnx, onnx-ir, onnxruntime, numpy,
torch and matplotlib load only when a command needs them. (Its CPU time is measured by
``benchmarks/bench_startup.py``, never by a timed test.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnx_ir", "onnxruntime", "numpy", "torch", "matplotlib", "sympy")

PROBE = """
import sys
from typer.testing import CliRunner
from bnfold.cli import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
heavy = {heavy!r}
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["fold", "--help"], ["check", "--help"], ["bench", "--help"],
     ["quantize", "--help"], ["demo", "--help"]],
    ids=lambda a: " ".join(a),
)  # fmt: skip
def test_help_imports_nothing_heavy(args):
    code = PROBE.format(args=args, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_library_still_imports_on_first_use():
    code = (
        "import sys, bnfold\n"
        "assert 'onnx_ir' not in sys.modules\n"
        "assert callable(bnfold.fold) and 'onnx_ir' in sys.modules\n"
        "from bnfold.verify import CheckOptions; from bnfold.bench import BenchOptions\n"
        "print(CheckOptions().batch, BenchOptions().threads, sorted(dir(bnfold))[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None 1 ['BadInputError', 'BnfoldError', 'FoldOptions']"
