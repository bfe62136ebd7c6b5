"""Regenerate the sample zoo exports in this folder (deterministic: same bytes on every run).

Each model trains for one epoch on the bundled digits (seed 0, one torch thread), so its
BatchNorm statistics are real rather than identity, then exports in eval mode with BatchNorm kept
as BatchNormalization nodes and a symbolic batch axis (input ``input``: (batch, 1, 8, 8)).

    python models/zoo/make_zoo.py [--check]

``--check`` regenerates into a temporary folder and fails if any file differs from the one here.
Runs on one machine agree byte for byte; torch's CPU kernels round differently on other
processors, so the weights of a run elsewhere can differ in their last bits.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from bnfold.train import TrainConfig, export_model, train

HERE = Path(__file__).resolve().parent
SAMPLES = {
    "digits_cnn": TrainConfig(model="digits_cnn"),
    "mlp": TrainConfig(model="mlp"),
    "mlp_bn_after_act": TrainConfig(model="mlp", bn_position="after"),
    "resnet": TrainConfig(model="resnet"),
    "mobilenet": TrainConfig(model="mobilenet"),
    "autoencoder": TrainConfig(model="autoencoder"),
}


def make(out_dir: Path) -> list[Path]:
    torch.use_deterministic_algorithms(True)
    written = []
    for name, config in SAMPLES.items():
        result = train(dataclasses.replace(config, epochs=1, seed=0), threads=1)
        path = out_dir / f"{name}.onnx"
        info = export_model(result.model, path, dynamic_batch=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(
            f"{path.name:<24} {path.stat().st_size / 1024:7.1f} KiB  {info.bn_nodes:2d} BN  {digest}"
        )
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="Compare a fresh build with these files."
    )
    args = parser.parse_args()
    if not args.check:
        make(HERE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = make(Path(tmp))
        differ = [p.name for p in fresh if not filecmp.cmp(p, HERE / p.name, shallow=False)]
    if differ:
        print(f"differ from the committed samples: {', '.join(differ)}", file=sys.stderr)
        return 1
    print("all samples reproduce byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
