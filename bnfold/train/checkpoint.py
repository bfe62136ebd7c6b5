"""Save and load training checkpoints: the config that rebuilds the model, its state and metrics."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from bnfold import atomic
from bnfold.errors import BadInputError, BnfoldError
from bnfold.train.training import TrainConfig, TrainResult

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "bnfold-checkpoint/1"


def save_checkpoint(result: TrainResult, path: str | os.PathLike) -> Path:
    """Write ``result`` (config, state_dict, metrics) to ``path`` with ``torch.save``."""
    p = Path(path)
    metrics = result.to_dict()
    metrics.pop("config")
    with atomic.atomic_path(p) as tmp:
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": result.config.to_dict(),
                "state_dict": result.model.state_dict(),
                "metrics": metrics,
            },
            tmp,
        )
    return p


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig, dict]:
    """``(model in eval mode, config, metrics)`` from a checkpoint written by ``save_checkpoint``.

    Loads with ``weights_only=True``: a checkpoint cannot run code. Raises BadInputError.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(p, "no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(p, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(p, f"not a bnfold checkpoint (expected format {CHECKPOINT_FORMAT})")
    try:
        config = TrainConfig(**ckpt["config"])
        model = config.build()
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError, BnfoldError) as exc:
        raise BadInputError(p, f"checkpoint does not match its model: {exc}") from None
    model.eval()
    return model, config, ckpt.get("metrics", {})
