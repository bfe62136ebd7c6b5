"""Child process for peak-memory measurement: ``python -m bnfold.bench._peak_child ARGS_JSON``.

Prints the peak RSS (KiB) before creating the session and after running it. Linux's VmHWM is
used where it exists: ru_maxrss of an exec'd child starts at the forking parent's RSS.
"""

from __future__ import annotations

import json
import resource
import sys


def peak_kib() -> int:
    """This process's peak resident set size in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    args = json.loads(sys.argv[1])
    import numpy as np

    from bnfold.verify.session import ModelRef, make_session, session_feeds

    with np.load(args["inputs"]) as data:
        feeds = {k: data[k] for k in data.files}
    before = peak_kib()
    from pathlib import Path

    session = make_session(
        ModelRef("model", path=Path(args["model"])),
        provider=args["provider"],
        opt_level=args["opt_level"],
        threads=args["threads"],
    )
    feeds = session_feeds(session, feeds)
    for _ in range(args["runs"]):
        session.run(None, feeds)
    after = peak_kib()
    print(json.dumps({"baseline_kib": before, "peak_kib": after}))


if __name__ == "__main__":
    main()
