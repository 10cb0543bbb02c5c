"""Write a TFLite flatbuffer with the schema object API that ai-edge-litert ships (build host only).

`ModelBuilder` collects tensors, constant buffers and operators of one subgraph and serializes
them; `read_model` lists the operators and tensors of any .tflite file for the reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import require

_TENSOR_TYPES = {"float32": "FLOAT32", "float16": "FLOAT16", "int32": "INT32", "int64": "INT64",
                 "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
SCHEMA_VERSION = 3


def schema():
    """The TFLite schema module (object API) of ai-edge-litert."""
    require("ai_edge_litert", "writing .tflite files", "tflite")
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@dataclass(frozen=True)
class QParams:
    """Affine int8 quantization: real = scale * (q - zero_point); per channel along `axis` when
    scale has more than one element."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @classmethod
    def of(cls, scale, zero_point, axis: int = 0) -> "QParams":
        scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
        zero = np.broadcast_to(np.atleast_1d(np.asarray(zero_point, dtype=np.int64)), scale.shape)
        return cls(tuple(float(s) for s in scale), tuple(int(z) for z in zero), axis)

    @property
    def per_tensor(self) -> bool:
        return len(self.scale) == 1

    def to_json(self) -> dict:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point)}


@dataclass
class OpRecord:
    """One emitted operator, for reports: builtin name, version, tensor indices, ONNX origin node."""

    code: str
    version: int
    inputs: list[int]
    outputs: list[int]
    origin: str


class ModelBuilder:
    """One TFLite subgraph under construction."""

    def __init__(self) -> None:
        self.fb = schema()
        self.tensors: list = []
        self.buffers = [self.fb.BufferT()]  # buffer 0: the empty buffer every activation points at
        self.codes: dict[tuple[str, int], int] = {}
        self.operators: list = []
        self.records: list[OpRecord] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._names: set[str] = set()

    def tensor(self, name: str, shape: list[int], dtype: str, quant: QParams | None = None,
               data: np.ndarray | None = None) -> int:
        """Add a tensor (a constant when data is given); returns its index."""
        t = self.fb.TensorT()
        t.name = self._unique(name)
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = getattr(self.fb.TensorType, _TENSOR_TYPES[dtype])
        t.buffer = 0
        if data is not None:
            buf = self.fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data.astype(dtype)).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = self.fb.QuantizationParametersT()
            q.scale = np.asarray(quant.scale, dtype=np.float32)
            q.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64)
            q.quantizedDimension = quant.axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, array: np.ndarray, quant: QParams | None = None) -> int:
        """Add a constant tensor holding array (its dtype decides the tensor type)."""
        array = np.asarray(array)
        return self.tensor(name, list(array.shape), str(array.dtype), quant, array)

    def op(self, code: str, inputs: list[int], outputs: list[int], options=None, version: int = 1,
           origin: str = "") -> None:
        """Append an operator; options is a `*OptionsT` object of the schema (or None)."""
        key = (code, version)
        if key not in self.codes:
            self.codes[key] = len(self.codes)
        o = self.fb.OperatorT()
        o.opcodeIndex = self.codes[key]
        o.inputs = np.asarray(inputs, dtype=np.int32)
        o.outputs = np.asarray(outputs, dtype=np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(self.fb.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)
        self.records.append(OpRecord(code, version, list(inputs), list(outputs), origin))

    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.tensors[index].shape]

    def quant(self, index: int) -> QParams | None:
        q = self.tensors[index].quantization
        return None if q is None else QParams.of(q.scale, q.zeroPoint, q.quantizedDimension)

    def dtype(self, index: int) -> str:
        names = {getattr(self.fb.TensorType, v): k for k, v in _TENSOR_TYPES.items()}
        return names[self.tensors[index].type]

    def reorder(self, order: list[int]) -> None:
        """Put the operators in another (topological) order."""
        self.operators = [self.operators[i] for i in order]
        self.records = [self.records[i] for i in order]

    def view(self) -> tuple[list["ModelOp"], list["ModelTensor"]]:
        """The operators and tensors as read_model gives them for a finished file."""
        ops = [ModelOp(r.code, r.version, r.inputs, r.outputs, o.builtinOptions)
               for r, o in zip(self.records, self.operators)]
        tensors = []
        for i, t in enumerate(self.tensors):
            raw = self.buffers[t.buffer].data if t.buffer else None
            dtype = self.dtype(i)
            data = None if raw is None else np.frombuffer(raw.tobytes(), dtype=dtype).reshape(self.shape(i))
            tensors.append(ModelTensor(t.name, self.shape(i), dtype, data, self.quant(i)))
        return ops, tensors

    def serialize(self, description: str) -> bytes:
        """The finished model as .tflite bytes."""
        import flatbuffers

        fb = self.fb
        graph = fb.SubGraphT()
        graph.tensors, graph.operators, graph.name = self.tensors, self.operators, "main"
        graph.inputs = np.asarray(self.inputs, dtype=np.int32)
        graph.outputs = np.asarray(self.outputs, dtype=np.int32)
        model = fb.ModelT()
        model.version = SCHEMA_VERSION
        model.description = description
        model.subgraphs = [graph]
        model.buffers = self.buffers
        model.operatorCodes = []
        for (code, version), _ in sorted(self.codes.items(), key=lambda kv: kv[1]):
            oc = fb.OperatorCodeT()
            oc.builtinCode = getattr(fb.BuiltinOperator, code)
            oc.deprecatedBuiltinCode = min(oc.builtinCode, 127)
            oc.version = version
            model.operatorCodes.append(oc)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self._names:
            n += 1
            name = f"{base}:{n}"
        self._names.add(name)
        return name


@dataclass
class ModelOp:
    """One operator of a .tflite file: builtin name, version, tensor indices, options object."""

    code: str
    version: int
    inputs: list[int]
    outputs: list[int]
    options: object


@dataclass
class ModelTensor:
    """One tensor of a .tflite file."""

    name: str
    shape: list[int]
    dtype: str
    data: np.ndarray | None  # constants only
    quant: QParams | None = None

    @property
    def constant(self) -> bool:
        return self.data is not None


def read_model(data: bytes) -> tuple[list[ModelOp], list[ModelTensor]]:
    """The operators (in execution order) and tensors of a .tflite file's main subgraph."""
    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {getattr(fb.TensorType, v): k for k, v in _TENSOR_TYPES.items()}
    codes = [(names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM"), c.version)
             for c in model.operatorCodes]
    graph = model.subgraphs[0]
    ops = [ModelOp(*codes[o.opcodeIndex], [int(i) for i in o.inputs], [int(i) for i in o.outputs],
                   o.builtinOptions) for o in graph.operators]
    tensors = []
    for t in graph.tensors:
        shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        dtype = types.get(t.type, "other")
        raw = model.buffers[t.buffer].data if t.buffer > 0 else None
        data = None
        if raw is not None and len(raw):
            data = np.frombuffer(bytes(bytearray(raw)), dtype=dtype if dtype != "other" else np.uint8)
            data = data.reshape(shape) if dtype != "other" else data
        q = t.quantization
        quant = QParams.of(q.scale, q.zeroPoint, q.quantizedDimension) if q is not None and q.scale is not None \
            and len(q.scale) else None
        tensors.append(ModelTensor(t.name.decode() if isinstance(t.name, bytes) else t.name, shape, dtype, data, quant))
    return ops, tensors
