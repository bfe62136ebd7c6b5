"""Folding and verifying must work without torch: torch lives only in the train extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_fold_and_verify_do_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, bnfold\n"
        "from bnfold.verify import CheckOptions\n"
        f"r = bnfold.fold_file({str(MODELS / 'cnn.onnx')!r}, {str(tmp_path / 'out.onnx')!r},"
        " verify=CheckOptions(batch=1))\n"
        "assert r.report.bn_folded == 4 and r.report.verify['passed']\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "out.onnx").stat().st_size > 0
