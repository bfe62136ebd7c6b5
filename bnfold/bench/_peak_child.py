"""Child process for peak-memory measurement: ``python -m bnfold.bench._peak_child ARGS_JSON``.

Prints JSON with ru_maxrss (KiB) before creating the session and after running it.
"""

from __future__ import annotations

import json
import resource
import sys


def main() -> None:
    args = json.loads(sys.argv[1])
    import numpy as np

    from bnfold.verify.session import ModelRef, make_session

    with np.load(args["inputs"]) as data:
        feeds = {k: data[k] for k in data.files}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from pathlib import Path

    session = make_session(
        ModelRef("model", path=Path(args["model"])),
        provider=args["provider"],
        opt_level=args["opt_level"],
        threads=args["threads"],
    )
    for _ in range(args["runs"]):
        session.run(None, feeds)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_kib": before, "peak_kib": after}))


if __name__ == "__main__":
    main()
