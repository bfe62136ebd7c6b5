"""The training side (needs the ``train`` extra: torch): a reference BatchNorm written from
Ioffe & Szegedy (2015), a model zoo, training on the bundled digits, export to ONNX with
BatchNorm kept, and the end-to-end demo (train -> export -> fold -> check -> bench)."""

from bnfold.train.batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormFunction,
    batch_norm_train,
)
from bnfold.train.checkpoint import load_checkpoint, save_checkpoint
from bnfold.train.compare import CompareOptions, CompareResult, CompareRun, run_compare
from bnfold.train.data import DigitsSplit, load_digits, split_digits
from bnfold.train.export import (
    DEFAULT_OPSET,
    ExportError,
    ExportResult,
    export_checkpoint,
    export_model,
)
from bnfold.train.outputs import (
    COMPARE_NAMES,
    CompareFiles,
    TrainFiles,
    compare_to_dir,
    train_paths,
    train_to_dir,
)
from bnfold.train.plots import write_compare_plot, write_training_curve
from bnfold.train.training import EpochStats, TrainConfig, TrainResult, evaluate, train
from bnfold.train.zoo import MODEL_NAMES, build_model, count_batchnorms

__all__ = [
    "COMPARE_NAMES",
    "DEFAULT_OPSET",
    "MODEL_NAMES",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "CompareFiles",
    "CompareOptions",
    "CompareResult",
    "CompareRun",
    "DigitsSplit",
    "EpochStats",
    "ExportError",
    "ExportResult",
    "TrainConfig",
    "TrainFiles",
    "TrainResult",
    "batch_norm_train",
    "build_model",
    "compare_to_dir",
    "count_batchnorms",
    "evaluate",
    "export_checkpoint",
    "export_model",
    "load_checkpoint",
    "load_digits",
    "run_compare",
    "save_checkpoint",
    "split_digits",
    "train",
    "train_paths",
    "train_to_dir",
    "write_compare_plot",
    "write_training_curve",
]
