"""Every place the fold core builds a refusal reason, and whether a test proves it.

A *site* is a ``Refusal(...)`` call in ``bnfold/engine.py`` or ``bnfold/folds/*.py``. For each,
from the coverage data of a test run made with per-test contexts (``pytest --cov
--cov-context=test``, as ``make test`` runs it), this lists:

- executed: whether any test (or a child process it started) ran the site's statement;
- asserted: whether a test that ran it also holds the reason's text: some string literal of
  the test function (its decorators, the module-level tables and the module's helper functions
  it calls included) contains a constant piece of the reason's (f-)string of at least
  ``MIN_PIECE`` characters, or is one of at least that length contained in such a piece.

Sites whose reason has no such constant piece (``Refusal(why)``, ``Refusal(f"{what}:
{self.reason}")``: they pass on a reason built elsewhere) are listed but not counted.

    python tools/refusal_sites.py [--data .coverage] [--min 90] [--all] [--json out.json]

Prints the sites not yet proved (``--all``: every site) and the figure; exits 1 when the share
of sites executed by a test asserting their text is below ``--min`` percent.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coverage import CoverageData

ROOT = Path(__file__).resolve().parents[1]
CORE = [ROOT / "bnfold" / "engine.py", *sorted((ROOT / "bnfold" / "folds").glob("*.py"))]
MIN_PIECE = 8
_EDGES = " \t\n'\"():;,.`{}[]"


@dataclass
class Site:
    """One ``Refusal(...)`` call."""

    file: str
    line: int  # the line of the statement holding the call (what coverage records)
    call_line: int
    text: str  # the reason as written, with {...} for the computed parts
    pieces: list[str]
    executed_by: list[str] = field(default_factory=list)
    asserted_by: str | None = None

    @property
    def counted(self) -> bool:
        return bool(self.pieces)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(_EDGES)


def _reason_text(arg: ast.expr) -> tuple[str, list[str]]:
    """The reason as written and its constant pieces (long enough to identify it)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        parts: list[str | None] = [arg.value]
    elif isinstance(arg, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else None for v in arg.values]
    else:
        return "{" + ast.unparse(arg) + "}", []
    text = "".join("{...}" if p is None else str(p) for p in parts)
    pieces = [_clean(str(p)) for p in parts if p is not None]
    return text, [p for p in pieces if len(p) >= MIN_PIECE]


def find_sites(files: list[Path]) -> list[Site]:
    sites = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        statement_of: dict[int, int] = {}
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.stmt) and not isinstance(
                stmt, ast.FunctionDef | ast.ClassDef | ast.If | ast.For | ast.While | ast.With
            ):
                for sub in ast.walk(stmt):
                    statement_of.setdefault(id(sub), stmt.lineno)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Refusal"
                and node.args
            ):
                text, pieces = _reason_text(node.args[0])
                line = statement_of.get(id(node), node.lineno)
                rel = str(path.relative_to(ROOT))
                sites.append(Site(rel, line, node.lineno, text, pieces))
    return sorted(sites, key=lambda s: (s.file, s.call_line))


class TestSources:
    """String literals a test holds: its function, decorators, module tables and helpers."""

    def __init__(self) -> None:
        self._modules: dict[Path, tuple[ast.Module, dict[str, ast.AST]]] = {}
        self._cache: dict[str, list[str]] = {}

    def _module(self, path: Path) -> tuple[ast.Module, dict[str, ast.AST]]:
        if path not in self._modules:
            tree = ast.parse(path.read_text(), str(path))
            defs: dict[str, ast.AST] = {}
            for stmt in tree.body:
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    defs[stmt.name] = stmt
            self._modules[path] = (tree, defs)
        return self._modules[path]

    def literals(self, context: str) -> list[str]:
        """Literals of the test named by a coverage context ("tests/x.py::Class::test[p]|run")."""
        nodeid = context.split("|")[0]
        if nodeid in self._cache:
            return self._cache[nodeid]
        found: list[str] = []
        parts = re.sub(r"\[.*\]$", "", nodeid).split("::")
        path = ROOT / parts[0]
        if path.suffix == ".py" and path.exists() and len(parts) > 1:
            tree, defs = self._module(path)
            target: ast.AST | None = defs.get(parts[1])
            for name in parts[2:]:
                if isinstance(target, ast.ClassDef):
                    target = next(
                        (s for s in target.body if getattr(s, "name", None) == name), None
                    )
            if target is not None:
                nodes: list[ast.AST] = [target]
                called = {
                    n.func.id
                    for n in ast.walk(target)
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                }
                nodes += [defs[name] for name in called if name in defs]
                nodes += [s for s in tree.body if isinstance(s, ast.Assign | ast.AnnAssign)]
                for node in nodes:
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                            found.append(_clean(sub.value))
        self._cache[nodeid] = found
        return found


def proves(site: Site, literals: list[str]) -> bool:
    for literal in literals:
        for piece in site.pieces:
            if piece in literal or (len(literal) >= MIN_PIECE and literal in piece):
                return True
    return False


def measure(data_file: Path) -> list[Site]:
    data = CoverageData(str(data_file))
    data.read()
    by_file = {Path(f).resolve(): f for f in data.measured_files()}
    sources = TestSources()
    sites = find_sites(CORE)
    for site in sites:
        measured = by_file.get((ROOT / site.file).resolve())
        if measured is None:
            continue
        contexts = data.contexts_by_lineno(measured).get(site.line, [])
        site.executed_by = sorted(contexts)
        for context in site.executed_by:
            if context and proves(site, sources.literals(context)):
                site.asserted_by = context.split("|")[0]
                break
    return sites


def _state(site: Site) -> str:
    if not site.counted:
        return "passes a reason on"
    if site.asserted_by:
        return "asserted"
    return "executed" if site.executed_by else "NOT RUN"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".coverage")
    parser.add_argument("--min", type=float, default=0.0, help="least percent proved")
    parser.add_argument("--all", action="store_true", help="list every site")
    parser.add_argument("--json", type=Path, help="write every site as JSON")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"refusal_sites: no coverage data at {args.data}", file=sys.stderr)
        return 2
    sites = measure(args.data)
    counted = [s for s in sites if s.counted]
    executed = [s for s in counted if s.executed_by]
    proved = [s for s in counted if s.asserted_by]
    for site in sites:
        if args.all or (site.counted and not site.asserted_by):
            print(f"  {site.file}:{site.call_line:<4} {_state(site):<18} {site.text[:80]}")
    share = 100.0 * len(proved) / len(counted) if counted else 100.0
    print(
        f"refusal sites: {len(sites)} ({len(sites) - len(counted)} pass a reason on); of the "
        f"{len(counted)} that build one, {len(executed)} executed, {len(proved)} executed by a "
        f"test asserting its text: {share:.1f}% (least {args.min:g}%)"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in sites], indent=1) + "\n")
    return 0 if share >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
