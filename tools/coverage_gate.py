"""Line coverage of bnfold from a test run, checked against the project's floors.

    python tools/coverage_gate.py [--data .coverage] [--total 95] [--core 95] [--all]

Reads the coverage data ``make test`` leaves (``pytest --cov``: the test process and, through
coverage's ``patch = ["subprocess"]``, every ``python -m bnfold`` / ``bnfold`` child the CLI tests
start), prints bnfold's line coverage and that of each module of the fold core (``--all``: of
every module), and exits 1 when bnfold as a whole is below ``--total`` percent or any fold-core
module below ``--core`` percent. Modules never imported count with every line missed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import coverage
from coverage.exceptions import NoDataError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnfold"
# the fold core: what decides and computes a fold
CORE = (
    "bnfold/engine.py",
    "bnfold/folds/*.py",
    "bnfold/arithmetic.py",
    "bnfold/int8.py",
    "bnfold/constants.py",
    "bnfold/folded_weight.py",
    "bnfold/pages.py",
)


@dataclass(frozen=True)
class ModuleCoverage:
    path: str
    statements: int
    missing: list[int]

    @property
    def covered(self) -> int:
        return self.statements - len(self.missing)

    @property
    def percent(self) -> float:
        return 100.0 if self.statements == 0 else 100.0 * self.covered / self.statements


def is_core(path: str) -> bool:
    return any(Path(path).match(pattern) for pattern in CORE)


def measure(data_file: Path) -> list[ModuleCoverage]:
    cov = coverage.Coverage(data_file=str(data_file), config_file=str(ROOT / "pyproject.toml"))
    cov.load()
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        _, statements, _, missing, _ = cov.analysis2(str(path))
        out.append(ModuleCoverage(str(path.relative_to(ROOT)), len(statements), list(missing)))
    return out


def _ranges(lines: list[int]) -> str:
    spans: list[str] = []
    for line in lines:
        if spans and spans[-1].split("-")[-1] == str(line - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{line}"
        else:
            spans.append(str(line))
    text = ", ".join(spans)
    return text if len(text) <= 60 else text[:57] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".coverage")
    parser.add_argument("--total", type=float, default=95.0, help="least percent for bnfold")
    parser.add_argument("--core", type=float, default=95.0, help="least percent per core module")
    parser.add_argument("--all", action="store_true", help="list every module")
    args = parser.parse_args(argv)
    try:
        modules = measure(args.data)
    except NoDataError as exc:
        print(f"coverage_gate: {exc}", file=sys.stderr)
        return 2
    failures = []
    print(f"{'module':<34} {'lines':>6} {'missed':>6} {'cover':>7}  missing")
    for m in modules:
        core = is_core(m.path)
        low = core and m.percent < args.core
        if low:
            failures.append(f"{m.path} {m.percent:.1f}% < {args.core:g}%")
        if args.all or core or low:
            mark = " *" if low else ""
            print(
                f"{m.path:<34} {m.statements:>6} {len(m.missing):>6} {m.percent:>6.1f}%"
                f"  {_ranges(m.missing)}{mark}"
            )
    statements = sum(m.statements for m in modules)
    covered = sum(m.covered for m in modules)
    total = 100.0 * covered / statements if statements else 100.0
    core = [m for m in modules if is_core(m.path)]
    core_pct = 100.0 * sum(m.covered for m in core) / max(1, sum(m.statements for m in core))
    print(
        f"coverage: bnfold {total:.1f}% of {statements} lines (least {args.total:g}%); fold core "
        f"{core_pct:.1f}% over {len(core)} modules, lowest "
        f"{min(m.percent for m in core):.1f}% (least {args.core:g}% each)"
    )
    if total < args.total:
        failures.insert(0, f"bnfold {total:.1f}% < {args.total:g}%")
    for failure in failures:
        print(f"coverage below the floor: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
