"""Fuzz bnfold with mutated bytes of the sample models: load + inspect + fold (with verification).

Every execution writes one mutated model to a scratch folder and drives bnfold in process the
way ``bnfold inspect`` and ``bnfold fold`` do: ``bnfold.fold`` (load, validate, fold, render the
report) then ``bnfold.fold_file`` (fold, staged write, onnxruntime verification, commit). The only
acceptable outcomes are success, bnfold's own clean error (``BnfoldError``: bad input, exit 2) or
a clean verification failure (exit 1); anything else (another exception, a crash of the process,
an input or data file changed, a staged file left behind) is a finding.

Engines:

* ``atheris`` (coverage-guided libFuzzer, where ``pip install atheris`` works): libFuzzer's byte
  mutations plus the structure-aware mutator below as a custom mutator;
* ``mutator`` (no extra dependency, deterministic): execution ``i`` of seed ``S`` draws from
  ``numpy.random.default_rng([S, i])``: a seed model, then 1 to 4 mutations, mostly structure-aware
  (parse the protobuf, change one field: a dim, a data type, a name that rewires the graph, an
  external-data location or offset, raw bytes cut short, a repeated field entry removed or
  doubled), otherwise byte-level (bit flips, interesting bytes, cut, splice).

The fuzz loop runs in a child process watched by this driver: a crash or a hang (no progress for
``--hang-seconds``) is recorded with the input that caused it and the loop resumes after it.

    python benchmarks/fuzz.py --seconds 60 --seed 0 [--engine mutator|atheris] [--runs N]
        [--findings DIR] [--json PATH]

Prints the executions, their outcomes and every finding; exit 1 if there was a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_MODELS = sorted((ROOT / "models").glob("*.onnx"))
DATA_NAME = "ext.data"  # the external-data file every execution may reference
_INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 255, 2**31 - 1, -(2**31), 2**63 - 1, 10**12)
_INTERESTING_FLOATS = (0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3e38, -1.0)
_INTERESTING_STRINGS = ("", "../x.data", "/etc/hostname", DATA_NAME, "x", "ai.onnx", "location")


# --------------------------------------------------------------------------- the target


def seed_inputs(work: Path) -> list[bytes]:
    """The sample models, and one whose tensors live in ``work/DATA_NAME``."""
    import onnx

    seeds = [p.read_bytes() for p in SEED_MODELS]
    model = onnx.load(ROOT / "models" / "cnn.onnx")
    scratch = work / "seed"
    scratch.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model, scratch / "m.onnx", save_as_external_data=True, location=DATA_NAME, size_threshold=0
    )
    shutil.copyfile(scratch / DATA_NAME, work / DATA_NAME)
    seeds.append((scratch / "m.onnx").read_bytes())
    shutil.rmtree(scratch)
    return seeds


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


class Target:
    """Runs one input through bnfold and classifies the outcome."""

    def __init__(self, work: Path) -> None:
        import bnfold  # noqa: F401  (imported once, outside the timed loop)

        self.work = work
        self.model = work / "m.onnx"
        self.out = work / "out" / "o.onnx"
        self.data_digest = _digest(work / DATA_NAME)

    def __call__(self, data: bytes) -> tuple[str, str | None]:
        """(outcome, finding detail or None); outcomes: ok, bad_input, verification, finding."""
        from bnfold import fold, fold_file
        from bnfold.errors import BadInputError, BnfoldError, VerificationError
        from bnfold.report import render_table
        from bnfold.verify import CheckOptions

        self.model.write_bytes(data)
        outcome, detail = "ok", None
        try:
            result = fold(self.model)
            render_table(result.report)
            result.report.to_json()
            result.report.summary()
            options = CheckOptions(samples=1, batch=1, max_input_bytes=16 << 20, locate=True)
            fold_file(self.model, self.out, verify=options)
        except VerificationError:
            outcome = "verification"
        except BadInputError:
            outcome = "bad_input"
        except BnfoldError:
            outcome = "bad_input"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a finding: not a clean error
            outcome, detail = "finding", _describe(exc)
        problems = []
        if self.model.read_bytes() != data:
            problems.append("the input model was changed")
        if _digest(self.work / DATA_NAME) != self.data_digest:
            problems.append("the external-data file was changed")
        left = [p.name for p in self.work.glob(".*") if p.name.startswith(".bnfold")]
        left += [p.name for p in self.out.parent.glob(".*")] if self.out.parent.exists() else []
        if left:
            problems.append(f"staged files left behind: {left}")
        if problems and outcome != "finding":
            outcome, detail = "finding", "; ".join(problems)
        shutil.rmtree(self.out.parent, ignore_errors=True)
        return outcome, detail


def _describe(exc: BaseException) -> str:
    """Exception type, message and the innermost bnfold frame (the dedup key is the first two
    parts without the message)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "bnfold" in f.filename and "benchmarks" not in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    at = f"{Path(where.filename).name}:{where.lineno} in {where.name}" if where else "?"
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__} at {at}: {message}"


# --------------------------------------------------------------------------- mutations


def mutate(data: bytes, seeds: list[bytes], rng) -> bytes:
    """1 to 4 mutations of ``data``; three in four are structure-aware when it parses."""
    for _ in range(int(rng.integers(1, 5))):
        structured = rng.random() < 0.75
        data = (_mutate_proto(data, rng) if structured else None) or _mutate_bytes(data, seeds, rng)
    return data


def _repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; older ones have label
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _fields(message, out: list, strings: list) -> None:
    """Every (message, field, index) scalar slot and (message, field) repeated field."""
    for field, value in message.ListFields():
        if _repeated(field):
            out.append((message, field, None))
            if field.type == field.TYPE_MESSAGE:
                for item in value:
                    _fields(item, out, strings)
            else:
                out.extend((message, field, i) for i in range(min(len(value), 8)))
                if field.type == field.TYPE_STRING:
                    strings.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            _fields(value, out, strings)
        else:
            out.append((message, field, -1))
            if field.type == field.TYPE_STRING:
                strings.append(value)


def _mutate_proto(data: bytes, rng) -> bytes | None:
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return None
    slots: list = []
    strings: list[str] = list(_INTERESTING_STRINGS)
    _fields(model, slots, strings)
    if not slots:
        return None
    message, field, index = slots[int(rng.integers(len(slots)))]
    try:
        if index is None:  # a repeated field: drop, double or clear an entry
            values = getattr(message, field.name)
            if len(values):
                k = int(rng.integers(len(values)))
                choice = rng.random()
                if choice < 0.5:
                    del values[k]
                elif choice < 0.9:
                    values.add().CopyFrom(
                        values[k]
                    ) if field.type == field.TYPE_MESSAGE else values.append(values[k])
                else:
                    del values[:]
        else:
            old = getattr(message, field.name) if index < 0 else getattr(message, field.name)[index]
            new = _new_value(field, old, strings, rng)
            if index < 0:
                setattr(message, field.name, new)
            else:
                getattr(message, field.name)[index] = new
        return model.SerializeToString()
    except (ValueError, TypeError, OverflowError, Exception):
        return None


def _new_value(field, old, strings: list[str], rng):
    kind = field.type
    if kind in (field.TYPE_STRING,):
        return str(strings[int(rng.integers(len(strings)))])
    if kind == field.TYPE_BYTES:
        if not old or rng.random() < 0.3:
            return bytes(rng.integers(0, 256, int(rng.integers(0, 16)), dtype="uint8"))
        return old[: int(rng.integers(len(old)))] if rng.random() < 0.7 else old + old
    if kind in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return _INTERESTING_FLOATS[int(rng.integers(len(_INTERESTING_FLOATS)))]
    if kind == field.TYPE_BOOL:
        return not old
    pick = int(rng.integers(len(_INTERESTING_INTS) + 3))
    if pick >= len(_INTERESTING_INTS):
        value = int(old) + int(rng.integers(-3, 4))
    else:
        value = _INTERESTING_INTS[pick]
    if kind in (field.TYPE_UINT32, field.TYPE_UINT64):
        value = abs(value)
    if kind in (field.TYPE_INT32, field.TYPE_ENUM, field.TYPE_SINT32, field.TYPE_SFIXED32):
        value = max(-(2**31), min(2**31 - 1, value))
    if kind == field.TYPE_UINT32:
        value = min(2**32 - 1, value)
    if kind == field.TYPE_ENUM and field.enum_type.values_by_number.get(value) is None:
        values = [v.number for v in field.enum_type.values]
        value = values[int(rng.integers(len(values)))]
    return value


def _mutate_bytes(data: bytes, seeds: list[bytes], rng) -> bytes:
    buf = bytearray(data)
    choice = int(rng.integers(6))
    if not buf:
        return bytes(seeds[int(rng.integers(len(seeds)))])
    at = int(rng.integers(len(buf)))
    if choice == 0:
        buf[at] ^= 1 << int(rng.integers(8))
    elif choice == 1:
        buf[at] = (0x00, 0xFF, 0x7F, 0x80, 0x01)[int(rng.integers(5))]
    elif choice == 2:
        del buf[at : at + int(rng.integers(1, 64))]
    elif choice == 3:
        buf[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype="uint8"))
    elif choice == 4:
        buf = buf[:at]
    else:
        other = seeds[int(rng.integers(len(seeds)))]
        cut = int(rng.integers(len(other) or 1))
        buf = buf[:at] + other[cut:]
    return bytes(buf)


# --------------------------------------------------------------------------- the child loop


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _child_mutator(args: argparse.Namespace, work: Path) -> None:
    import numpy as np

    seeds = seed_inputs(work)
    target = Target(work)
    current = work / "current.bin"
    i = args.start
    while (args.runs is None or i < args.runs) and time.time() < args.deadline:
        rng = np.random.default_rng([args.seed, i])
        data = mutate(seeds[int(rng.integers(len(seeds)))], seeds, rng)
        current.write_bytes(data)
        outcome, detail = target(data)
        _record(work, i, outcome, detail, data)
        i += 1
    _emit({"done": i})


def _record(work: Path, i: int, outcome: str, detail: str | None, data: bytes) -> None:
    if outcome in ("finding", "verification"):  # keep the input for the driver
        found = work / ("found" if outcome == "finding" else "verification")
        found.mkdir(exist_ok=True)
        (found / f"{i}.onnx").write_bytes(data)
    _emit({"i": i, "outcome": outcome, "detail": detail})


def _child_atheris(args: argparse.Namespace, work: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["bnfold"]):
        import bnfold.api  # noqa: F401

    import numpy as np

    seeds = seed_inputs(work)
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    for k, s in enumerate(seeds):
        (corpus / f"seed{k}").write_bytes(s)
    target = Target(work)
    current = work / "current.bin"
    count = [args.start]

    def one(data: bytes) -> None:
        if time.time() >= args.deadline or (args.runs is not None and count[0] >= args.runs):
            _emit({"done": count[0]})
            os._exit(0)
        current.write_bytes(data)
        outcome, detail = target(data)
        _record(work, count[0], outcome, detail, data)
        count[0] += 1

    def custom(data: bytes, max_size: int, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        if rng.random() < 0.5:
            out = _mutate_proto(data, rng)
            if out is not None and len(out) <= max_size:
                return out
        return atheris.Mutate(data, max_size)

    atheris.Setup(
        [sys.argv[0], f"-seed={args.seed + args.start}", "-timeout=60", "-max_len=200000",
         "-print_final_stats=0", str(corpus)],
        one,
        custom_mutator=custom,
    )  # fmt: skip
    atheris.Fuzz()


# --------------------------------------------------------------------------- the driver


def _run_child(
    args: argparse.Namespace, engine: str, start: int, work: Path, events: list
) -> tuple[int, str]:
    """Run the loop from execution ``start``; return (next start, how the child ended)."""
    cmd = [
        sys.executable, __file__, "--child", "--engine", engine, "--seed", str(args.seed),
        "--start", str(start), "--deadline", str(args.deadline), "--work", str(work),
    ] + (["--runs", str(args.runs)] if args.runs is not None else [])  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    next_start = start
    while True:
        try:
            line = lines.get(timeout=args.hang_seconds)
        except queue.Empty:
            proc.kill()
            proc.wait()
            return next_start + 1, "hang"
        if line is None:
            break
        event = json.loads(line)
        if "done" in event:
            proc.wait()
            return event["done"], "done"
        events.append(event)
        next_start = event["i"] + 1
    proc.wait()
    return next_start + 1, f"crash (exit {proc.returncode})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=None, help="stop after this many executions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("auto", "atheris", "mutator"), default="auto")
    parser.add_argument("--hang-seconds", type=float, default=60.0)
    parser.add_argument("--findings", type=Path, default=None, help="save finding inputs here")
    parser.add_argument(
        "--verification",
        type=Path,
        default=None,
        help="save the inputs that failed verification here (to read: a clean outcome, but on "
        "a valid model it can be a fold that is not exact)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (_child_atheris if args.engine == "atheris" else _child_mutator)(args, args.work)
        return
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "mutator"
    args.deadline = time.time() + args.seconds
    events: list[dict] = []
    findings: dict[str, dict] = {}
    start, started = 0, time.time()
    with tempfile.TemporaryDirectory(prefix="bnfold-fuzz-") as tmp:
        work = Path(tmp)
        while time.time() < args.deadline and (args.runs is None or start < args.runs):
            start, how = _run_child(args, engine, start, work, events)
            if how != "done":
                current = work / "current.bin"
                detail = f"{how} of the fuzzing process"
                findings.setdefault(
                    detail,
                    {
                        "detail": detail,
                        "count": 0,
                        "input": current.read_bytes() if current.exists() else b"",
                    },
                )
                findings[detail]["count"] += 1
            elif engine == "mutator" or args.runs is not None:
                break
        elapsed = time.time() - started
        if args.verification is not None and (work / "verification").is_dir():
            args.verification.mkdir(parents=True, exist_ok=True)
            for kept in sorted((work / "verification").glob("*.onnx")):
                shutil.copyfile(kept, args.verification / kept.name)
        for e in events:
            if e["outcome"] == "finding":
                key = e["detail"].split(": ")[0]
                saved = work / "found" / f"{e['i']}.onnx"
                entry = findings.setdefault(key, {"detail": e["detail"], "count": 0, "i": e["i"]})
                entry.setdefault("input", saved.read_bytes() if saved.exists() else None)
                entry["count"] += 1
    counts = {
        k: sum(e["outcome"] == k for e in events)
        for k in ("ok", "bad_input", "verification", "finding")
    }
    print(f"engine {engine}, seed {args.seed}: {len(events)} executions in {elapsed:.1f} s "
          f"({len(events) / max(elapsed, 1e-9):.1f}/s)")  # fmt: skip
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"findings: {len(findings)}")
    for key, f in findings.items():
        where = f" (execution {f['i']})" if "i" in f else ""
        print(f"  {f['count']}x {f['detail']}{where}")
        if args.findings is not None and f.get("input"):
            args.findings.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(key.encode()).hexdigest()[:12]
            (args.findings / f"{name}.onnx").write_bytes(f["input"])
    if args.json is not None:
        summary = {
            "engine": engine, "seed": args.seed, "executions": len(events), "seconds": elapsed,
            "outcomes": counts,
            "findings": [{k: v for k, v in f.items() if k != "input"} for f in findings.values()],
        }  # fmt: skip
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
