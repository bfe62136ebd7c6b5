"""int8 for folded models: fold what is safe, quantize with onnxruntime, prove it on real data.

``quantize_file(model, output, QuantizeOptions(...)) -> QuantizeResult`` is the flow behind
``bnfold quantize``; :mod:`bnfold.int8` holds the per-channel int8 arithmetic the
forward folds use to judge themselves (numpy only). Importing this package does not import
onnxruntime's quantizer (it is imported when used) nor torch.
"""

from bnfold.int8 import (
    ForwardFoldEffect,
    QuantizedWeights,
    forward_fold_effect,
    int8_forward_refusal,
    quantize_per_channel,
    scale_spread,
    zero_share,
)
from bnfold.quantize.activations import BnChannels, bn_channels
from bnfold.quantize.channels import DEAD_RTOL, ChannelRange, dead_channels
from bnfold.quantize.data import (
    CALIBRATION_SAMPLES,
    LABELS,
    Batch,
    Dataset,
    digits_dataset,
    is_digits_model,
    load_dataset,
    resolve_dataset,
)
from bnfold.quantize.float_ops import FloatOp, FloatOps, float_ops, float_ops_in_graph
from bnfold.quantize.prove import MIN_AGREEMENT, OutputProof, Proof, ProofThresholds, prove_int8
from bnfold.quantize.quantize import (
    CALIBRATION_METHODS,
    FORWARD_MODES,
    QuantizeOptions,
    QuantizeResult,
    fold_for_int8,
    model_inputs,
    ort_quantize,
    quantize_file,
)
from bnfold.quantize.types import QuantTypes, recommended_types

__all__ = [
    "CALIBRATION_METHODS",
    "CALIBRATION_SAMPLES",
    "DEAD_RTOL",
    "FORWARD_MODES",
    "LABELS",
    "MIN_AGREEMENT",
    "Batch",
    "BnChannels",
    "ChannelRange",
    "Dataset",
    "FloatOp",
    "FloatOps",
    "ForwardFoldEffect",
    "OutputProof",
    "Proof",
    "ProofThresholds",
    "QuantTypes",
    "QuantizeOptions",
    "QuantizeResult",
    "QuantizedWeights",
    "bn_channels",
    "dead_channels",
    "digits_dataset",
    "float_ops",
    "float_ops_in_graph",
    "fold_for_int8",
    "forward_fold_effect",
    "int8_forward_refusal",
    "is_digits_model",
    "load_dataset",
    "model_inputs",
    "ort_quantize",
    "prove_int8",
    "quantize_file",
    "quantize_per_channel",
    "recommended_types",
    "resolve_dataset",
    "scale_spread",
    "zero_share",
]
