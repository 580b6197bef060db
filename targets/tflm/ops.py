"""The ops of a .tflite file and the ``MicroMutableOpResolver`` call that registers each one.

``RESOLVER_METHODS`` is every ``Add*`` method of TFLM's ``tensorflow/lite/micro/micro_mutable_op_resolver.h``
(tensorflow/tflite-micro, 2025 revision, the one with ``TFLMRegistration``); ``BUILTIN_ADD`` maps each builtin
op to its method and ``CUSTOM_ADD`` each custom op name (``ethos-u`` is the op vela writes). A test checks the
table against both lists: keys are builtin names of the schema shipped with the tflite-micro wheel, values
are methods of the header.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

#: Every registration method of MicroMutableOpResolver<N> (besides AddCustom), as the header spells them.
RESOLVER_METHODS = frozenset({
    "AddAbs", "AddAdd", "AddAddN", "AddArgMax", "AddArgMin", "AddAssignVariable", "AddAveragePool2D",
    "AddBatchMatMul", "AddBatchToSpaceNd", "AddBroadcastArgs", "AddBroadcastTo", "AddCallOnce", "AddCast",
    "AddCeil", "AddCircularBuffer", "AddConcatenation", "AddConv2D", "AddCos", "AddCumSum", "AddDelay",
    "AddDepthToSpace", "AddDepthwiseConv2D", "AddDequantize", "AddDetectionPostprocess", "AddDiv",
    "AddEmbeddingLookup", "AddEnergy", "AddElu", "AddEqual", "AddEthosU", "AddExp", "AddExpandDims",
    "AddFftAutoScale", "AddFill", "AddFilterBank", "AddFilterBankLog", "AddFilterBankSquareRoot",
    "AddFilterBankSpectralSubtraction", "AddFloor", "AddFloorDiv", "AddFloorMod", "AddFramer",
    "AddFullyConnected", "AddGather", "AddGatherNd", "AddGreater", "AddGreaterEqual", "AddHardSwish", "AddIf",
    "AddIrfft", "AddL2Normalization", "AddL2Pool2D", "AddLeakyRelu", "AddLess", "AddLessEqual", "AddLog",
    "AddLogicalAnd", "AddLogicalNot", "AddLogicalOr", "AddLogistic", "AddLogSoftmax", "AddMaximum",
    "AddMaxPool2D", "AddMirrorPad", "AddMean", "AddMinimum", "AddMul", "AddNeg", "AddNotEqual", "AddOverlapAdd",
    "AddPack", "AddPad", "AddPadV2", "AddPCAN", "AddPrelu", "AddQuantize", "AddReadVariable", "AddReduceMax",
    "AddReduceMin", "AddRelu", "AddRelu6", "AddReshape", "AddResizeBilinear", "AddResizeNearestNeighbor",
    "AddReverseV2", "AddRfft", "AddRound", "AddRsqrt", "AddSelectV2", "AddShape", "AddSin", "AddSlice",
    "AddSoftmax", "AddSpaceToBatchNd", "AddSpaceToDepth", "AddSplit", "AddSplitV", "AddSqueeze", "AddSqrt",
    "AddSquare", "AddSquaredDifference", "AddStridedSlice", "AddStacker", "AddSub", "AddSum", "AddSvdf",
    "AddTanh", "AddTransposeConv", "AddTranspose", "AddUnpack", "AddUnidirectionalSequenceLSTM",
    "AddVarHandle", "AddWhile", "AddWindow", "AddZerosLike",
})

#: Builtin op (the schema's BuiltinOperator name) -> its registration method.
BUILTIN_ADD: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D", "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack",
    "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2", "ROUND": "AddRound",
    "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference", "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv",
    "TRANSPOSE": "AddTranspose", "UNPACK": "AddUnpack",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

#: Custom op name (as stored in the .tflite) -> its registration method.
CUSTOM_ADD: dict[str, str] = {
    "ethos-u": "AddEthosU",
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "SignalDelay": "AddDelay", "SignalEnergy": "AddEnergy", "SignalFftAutoScale": "AddFftAutoScale",
    "SignalFilterBank": "AddFilterBank", "SignalFilterBankLog": "AddFilterBankLog",
    "SignalFilterBankSquareRoot": "AddFilterBankSquareRoot",
    "SignalFilterBankSpectralSubtraction": "AddFilterBankSpectralSubtraction", "SignalFramer": "AddFramer",
    "SignalIrfft": "AddIrfft", "SignalOverlapAdd": "AddOverlapAdd", "SignalPCAN": "AddPCAN",
    "SignalRfft": "AddRfft", "SignalStacker": "AddStacker", "SignalWindow": "AddWindow",
}

ETHOS_U = "ethos-u"

#: Builtin ops whose TFLM reference kernels take int16 activations with int8 weights (TFLite's 16x8), the
#: higher precision the accuracy fallback keeps a layer in on a microcontroller (and vela places on Ethos-U).
INT16_KERNELS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "LOGISTIC",
    "MAX_POOL_2D", "MEAN", "MUL", "PAD", "RESHAPE", "SOFTMAX", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE",
})

# TensorType values of the TFLite schema that hold floating point.
_FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64", 16: "bfloat16"}


def schema() -> Any:
    """The TFLite flatbuffer schema module shipped with tflite-micro."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@functools.lru_cache(maxsize=1)
def builtin_names() -> dict[int, str]:
    """BuiltinOperator code -> name, from the schema."""
    ops = schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def _model(path_or_bytes: Path | bytes) -> Any:
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    fb = schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))


def _op_name(code: Any) -> str:
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if code.customCode is not None and builtin == schema().BuiltinOperator.CUSTOM:
        return code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
    return builtin_names().get(builtin, f"BUILTIN_{builtin}")


def model_ops(path_or_bytes: Path | bytes) -> list[str]:
    """Every op a model runs, in execution order with repeats (builtin names; custom ops by their name)."""
    model = _model(path_or_bytes)
    names = [_op_name(c) for c in model.operatorCodes or []]
    return [names[op.opcodeIndex] for sg in model.subgraphs or [] for op in sg.operators or []]


def unique_ops(ops: list[str]) -> list[str]:
    return list(dict.fromkeys(ops))


def resolver_method(op: str) -> str | None:
    """The MicroMutableOpResolver method registering ``op``; None when TFLM has none."""
    return BUILTIN_ADD.get(op) or CUSTOM_ADD.get(op)


def float_ops(path_or_bytes: Path | bytes) -> list[str]:
    """Ops that read or write a floating-point tensor other than a constant (what full-integer forbids)."""
    model = _model(path_or_bytes)
    names = [_op_name(c) for c in model.operatorCodes or []]
    found = []
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            tensors = [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]
            for idx in tensors:
                if idx < 0:
                    continue
                t = sg.tensors[idx]
                if t.type in _FLOAT_TYPES and not _constant(model, t):
                    found.append(names[op.opcodeIndex])
                    break
    return found


def _constant(model: Any, tensor: Any) -> bool:
    """Whether a tensor's data is in the file (weights), as opposed to computed at run time."""
    buf = model.buffers[tensor.buffer] if model.buffers is not None else None
    if buf is None:
        return False
    return (buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "size", 0))


def offline_arena_extent(path_or_bytes: Path | bytes) -> int | None:
    """Bytes of arena the tensors vela placed offline span (its ``OfflineMemoryAllocation`` metadata), or None.

    The metadata is ``[version, subgraphs, tensors, offset_0, ...]`` with -1 for tensors TFLM plans itself.
    """
    import numpy as np

    model = _model(path_or_bytes)
    for md in model.metadata or []:
        name = md.name.decode() if isinstance(md.name, bytes) else md.name
        if name != "OfflineMemoryAllocation":
            continue
        raw = np.asarray(model.buffers[md.buffer].data, dtype=np.uint8).tobytes()
        words = np.frombuffer(raw, dtype="<i4")
        offsets = words[3:]
        sg = model.subgraphs[0]
        extent = 0
        for idx, off in enumerate(offsets[: len(sg.tensors)]):
            if off >= 0:
                extent = max(extent, int(off) + tensor_bytes(sg.tensors[idx]))
        return extent
    return None


_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 2}


def tensor_bytes(t: Any) -> int:
    n = 1
    for d in (t.shape if t.shape is not None else []):
        n *= int(d)
    return n * _TYPE_BYTES.get(t.type, 4)
