"""Refuse graphs onnxruntime could never run: bad topology, BatchNormalization parameters of the
wrong shape. Shapes only: no tensor data is read.

``validate_graph`` walks the main graph, every subgraph (If/Loop/Scan bodies, at any depth) and
every model-local function, and raises BadInputError for:

- a cycle (a node that depends, directly, through other nodes or through a subgraph that reads
  an outer value, on its own output);
- a node input or graph output that nothing defines (not a node output, graph input or
  initializer of this graph or an enclosing one);
- a value (graph input or output, node output, ``value_info``) whose tensor type has no element
  type (onnxruntime: "Invalid tensor data type 0"); a default-domain opset outside what onnx
  knows, in the model or a function;
- a name defined twice in one graph (two graph inputs, or a node output that repeats an input,
  an initializer or another node's output);
- a default-domain node whose operator the opset does not define, or whose attributes the
  operator's schema does not accept: an unknown name, the wrong type (``epsilon`` as an int, an
  attribute with no type), a required one missing, a ``Constant`` without exactly one value;
  or too few or too many inputs or outputs, or a required input left empty. onnxruntime
  refuses all of these at load ("This is an invalid model"), and the folds rely on them;
- a MatMul or Gemm whose operand shapes (where constants or main-graph inputs declare them)
  cannot multiply: Gemm operands not of rank 2, inner dimensions that differ (onnxruntime:
  "Incompatible dimensions for matrix multiplication");
- a Conv or ConvTranspose bias that is not a vector of one value per output channel (where the
  weight's shape says how many): onnxruntime fails when it runs ("bias must be a 1D tensor of
  size output_channels");
- a BatchNormalization whose input has rank below 2 where that is known (a main-graph input, a
  constant, a MatMul of a vector): onnxruntime fails to load it;
- a BatchNormalization (spatial, opset 6 and later) whose scale, B, mean or var is not a vector,
  whose lengths disagree with each other, or disagree with the channels of its input where they
  are known: the weight of the Conv (dim 0), ConvTranspose (dim 1 x group) or Gemm (N) that
  produces it, or dim 1 of a main-graph input it reads directly.

What onnxruntime 1.32 does with such BatchNormalization nodes (``ORT_DISABLE_ALL``), which these
rules follow:

- a ``(1,)`` scale for 4 channels, or all four parameters ``(1,)``: the session fails to load
  ("Dimension mismatch in unification between 1 and 4"). A one-value parameter is never
  broadcast, so it is refused here, not folded;
- parameters of rank 0 or 2 (``()``, ``(1, 4)``): load fails ("expected to have rank 1");
- lengths that disagree with each other (3 and 4): load fails;
- channels unknown at load (a symbolic dim 1): the run fails ("Invalid input scale: 0th
  dimension != 4"), so disagreeing lengths are refused without knowing the channels;
- opset 7/8 with ``spatial=0``: parameters of shape (C, D1, ...) load and run; not checked here;
- a stale ``value_info`` on an intermediate value (dim 1 says 5, the Conv makes 4): onnxruntime
  warns, merges leniently and uses the inferred 4. Annotations on intermediate values are
  therefore not trusted as the channel count; only producer weights and main-graph inputs are.

Constant parameters are resolved through initializers, ``Constant`` nodes and ``Identity``
chains, reading their declared shapes only.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

import onnx
import onnx_ir as ir

from bnfold.errors import BadInputError, PathLabel

_BN_PARAMS = ("scale", "B", "mean", "var")
_MAX_IDENTITY_CHAIN = 64


def validate_graph(model: ir.Model, path: str | os.PathLike | None = None) -> None:
    """Raise BadInputError (naming ``path``) if any graph or function of ``model`` is invalid."""
    main_inputs = {id(v) for v in model.graph.inputs}
    for function in model.functions.values():
        _check_opsets(function.opset_imports, f"function '{function.name}'", path)
    for graph, chain, where in _scopes(model):
        _check_opsets(graph.opset_imports, f"{where}graph", path)
        _check_types(graph, where, path)
        _check_names(graph, where, path)
        _check_defined(graph, chain, where, path)
        _check_acyclic(graph, where, path)
        for node in graph:
            _check_node(node, where, path)
            if node.domain not in ("", "ai.onnx"):
                continue
            opset = _opset(node, graph, model)
            if opset < 1:
                raise BadInputError(
                    path,
                    f"{where}{_node_text(node)} is an ONNX operator but no default-domain "
                    "opset is imported",
                )
            _check_schema(node, opset, where, path)
            if node.op_type == "BatchNormalization":
                _check_batchnorm(node, opset, main_inputs, where, path)
            elif node.op_type in ("Conv", "ConvTranspose"):
                _check_conv_bias(node, main_inputs, where, path)
            elif node.op_type in ("MatMul", "Gemm"):
                _check_matmul(node, main_inputs, where, path)


def _scopes(model: ir.Model) -> Iterator[tuple[ir.Graph, tuple[ir.Graph, ...], str]]:
    """Every graph with the chain of graphs whose values it may read, and a label for messages."""
    roots: list[tuple[ir.Graph, str]] = [(model.graph, "")]
    for function in model.functions.values():
        roots.append((function.graph, f"function '{function.name}': "))
    for root, label in roots:
        stack: list[tuple[ir.Graph, tuple[ir.Graph, ...], str]] = [(root, (root,), label)]
        while stack:  # explicit stack: nesting depth comes from the file
            graph, chain, where = stack.pop()
            yield graph, chain, where
            for node in graph:
                for sub in _subgraphs(node):
                    stack.append((sub, (*chain, sub), f"{where}{_node_text(node)} subgraph: "))


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.is_ref():  # a function attribute: its value is the caller's
            continue
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def _node_text(node: ir.Node) -> str:
    return f"{node.op_type} node '{node.name}'" if node.name else f"unnamed {node.op_type} node"


def _check_opsets(imports: dict[str, int], what: str, path: PathLabel) -> None:
    for domain in ("", "ai.onnx"):
        version = imports.get(domain)
        if version is not None and not 1 <= version <= onnx.defs.onnx_opset_version():
            raise BadInputError(
                path,
                f"{what} imports default-domain opset {version} (this onnx supports 1 to "
                f"{onnx.defs.onnx_opset_version()})",
            )


def _check_types(graph: ir.Graph, where: str, path: PathLabel) -> None:
    values = [*graph.inputs, *graph.outputs, *(v for n in graph for v in n.outputs)]
    for value in values:
        kind = value.type
        while kind is not None and not isinstance(kind, ir.TensorType):
            kind = getattr(kind, "elem_type", None)  # sequence / optional of a tensor
        if kind is not None and kind.dtype in (None, ir.DataType.UNDEFINED):
            raise BadInputError(
                path, f"{where}value '{value.name}' has a tensor type with no element type"
            )


def _check_names(graph: ir.Graph, where: str, path: PathLabel) -> None:
    seen: dict[str, ir.Value] = {}

    def define(value: ir.Value, by: str) -> None:
        if not value.name:
            return
        other = seen.setdefault(value.name, value)
        if other is not value:
            raise BadInputError(path, f"{where}the name '{value.name}' is defined twice ({by})")

    for value in graph.inputs:
        define(value, "graph inputs")
    for value in graph.initializers.values():
        define(value, "initializers")
    for node in graph:
        for value in node.outputs:
            define(value, f"output of {_node_text(node)}")


def _defined_in(value: ir.Value, chain: Sequence[ir.Graph]) -> bool:
    producer = value.producer()
    if producer is not None:
        return any(producer.graph is g for g in chain)
    if value.is_graph_input() or value.is_initializer():
        return any(value.graph is g for g in chain)
    return False


def _check_defined(graph: ir.Graph, chain: Sequence[ir.Graph], where: str, path: PathLabel) -> None:
    for node in graph:
        for value in node.inputs:
            if value is not None and not _defined_in(value, chain):
                raise BadInputError(
                    path,
                    f"{where}{_node_text(node)} reads '{value.name}', which no node, "
                    "graph input or initializer defines",
                )
    for value in graph.outputs:
        if not _defined_in(value, chain):
            raise BadInputError(
                path, f"{where}graph output '{value.name}' is not produced by any node"
            )


def _outer_reads(node: ir.Node) -> Iterator[ir.Value]:
    """Values the node's subgraphs (at any depth) read."""
    stack = list(_subgraphs(node))
    while stack:
        sub = stack.pop()
        for inner in sub:
            yield from (v for v in inner.inputs if v is not None)
            stack.extend(_subgraphs(inner))
        yield from sub.outputs


def _check_acyclic(graph: ir.Graph, where: str, path: PathLabel) -> None:
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    users: list[set[int]] = [set() for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        deps = set()
        for value in (*(v for v in node.inputs if v is not None), *_outer_reads(node)):
            producer = value.producer()
            if producer is not None and producer.graph is graph and id(producer) in index:
                deps.add(index[id(producer)])
        for d in deps:
            users[d].add(i)
        waiting[i] = len(deps)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done < len(nodes):
        stuck = [_node_text(nodes[i]) for i, w in enumerate(waiting) if w > 0]
        more = f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
        raise BadInputError(
            path, f"{where}the graph has a cycle through {', '.join(stuck[:3])}{more}"
        )


@functools.lru_cache(maxsize=1024)
def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except (onnx.defs.SchemaError, TypeError, OverflowError):
        return None


# onnx schema attribute types -> onnx-ir's (the same names)
_ATTR_TYPES = {
    getattr(onnx.defs.OpSchema.AttrType, t.name): t
    for t in ir.AttributeType
    if hasattr(onnx.defs.OpSchema.AttrType, t.name)
}
_CONSTANT_VALUES = frozenset(
    {"value", "sparse_value", "value_float", "value_floats", "value_int", "value_ints",
     "value_string", "value_strings"}
)  # fmt: skip


def _check_node(node: ir.Node, where: str, path: PathLabel) -> None:
    """What any node needs, whatever its domain: an operator name, typed attributes."""
    if not node.op_type:
        raise BadInputError(path, f"{where}a node named '{node.name}' has no operator type")
    for name, attr in node.attributes.items():
        if attr.type == ir.AttributeType.UNDEFINED:
            raise BadInputError(path, f"{where}{_node_text(node)}: attribute '{name}' has no type")


def _check_schema(node: ir.Node, opset: int, where: str, path: PathLabel) -> None:
    schema = _schema(node.op_type, opset)
    label = f"{where}{_node_text(node)}"
    if schema is None:
        raise BadInputError(path, f"{label}: opset {opset} has no operator {node.op_type}")
    accepted = schema.attributes
    for name, attr in node.attributes.items():
        if attr.is_ref():
            continue  # a function's attribute reference: typed where the function is called
        spec = accepted.get(name)
        if spec is None:
            raise BadInputError(
                path, f"{label}: {node.op_type}-{schema.since_version} has no attribute '{name}'"
            )
        wanted = _ATTR_TYPES.get(spec.type)
        if wanted is not None and attr.type != wanted:
            raise BadInputError(
                path,
                f"{label}: attribute '{name}' is {attr.type.name}, the operator wants "
                f"{wanted.name}",
            )
    n_in, n_out = len(node.inputs), len(node.outputs)
    if not schema.min_input <= n_in <= schema.max_input:
        raise BadInputError(
            path, f"{label}: has {n_in} inputs, {node.op_type} takes {_range(schema, 'input')}"
        )
    if not schema.min_output <= n_out <= schema.max_output:
        raise BadInputError(
            path, f"{label}: has {n_out} outputs, {node.op_type} makes {_range(schema, 'output')}"
        )
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for i, (formal, value) in enumerate(zip(schema.inputs, node.inputs, strict=False)):
        if formal.option == single and value is None:
            raise BadInputError(path, f"{label}: required input {i} ({formal.name}) is empty")
    missing = [n for n, spec in accepted.items() if spec.required and n not in node.attributes]
    if missing:
        raise BadInputError(path, f"{label}: required attribute '{missing[0]}' is missing")
    if node.op_type == "Constant":
        given = [n for n in node.attributes if n in _CONSTANT_VALUES]
        if len(given) != 1:
            raise BadInputError(
                path, f"{label}: a Constant needs exactly one value attribute, it has {len(given)}"
            )


def _range(schema: onnx.defs.OpSchema, what: str) -> str:
    low, high = getattr(schema, f"min_{what}"), getattr(schema, f"max_{what}")
    if low == high:
        return str(low)
    return f"at least {low}" if high >= 2**31 - 1 else f"{low} to {high}"


def _opset(node: ir.Node, graph: ir.Graph, model: ir.Model) -> int:
    if node.version is not None:
        return node.version
    for imports in (graph.opset_imports, model.opset_imports):
        for domain in ("", "ai.onnx"):
            if domain in imports:
                return imports[domain]
    return 0


def _declared_shape(value: ir.Value | None, main_inputs: set[int]) -> tuple[int | None, ...] | None:
    """The shape of a constant (initializer, Constant, Identity chain) or a main-graph input."""
    for _ in range(_MAX_IDENTITY_CHAIN):
        if value is None:
            return None
        tensor = value.const_value
        if tensor is not None:
            return _dims(tensor.shape)
        if id(value) in main_inputs:
            return _dims(value.shape) if value.shape is not None else None
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Identity":
            value = node.inputs[0] if node.inputs else None
            continue
        if node.op_type == "Constant":
            return _constant_shape(node)
        return None
    return None


def _constant_shape(node: ir.Node) -> tuple[int | None, ...] | None:
    for name, attr in node.attributes.items():
        if attr.is_ref():  # `value = @v` in a function body: known per call
            return None
        if name in ("value", "sparse_value") and attr.type == ir.AttributeType.TENSOR:
            return _dims(attr.as_tensor().shape)
        if name in ("value_float", "value_int", "value_string"):
            return ()
        if name in ("value_floats", "value_ints", "value_strings"):
            return (len(attr.value),)
    return None


def _dims(shape: ir.ShapeProtocol) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _static_dim(shape: tuple[int | None, ...] | None, axis: int) -> int | None:
    if shape is None or len(shape) <= axis:
        return None
    dim = shape[axis]
    return dim if dim is not None and dim >= 0 else None


def _producer_channels(
    data: ir.Value, main_inputs: set[int]
) -> tuple[int, str] | tuple[None, None]:
    """The channel count of the BN's input where it is known, and what says so."""
    if id(data) in main_inputs:
        dim = _static_dim(_dims(data.shape) if data.shape is not None else None, 1)
        return (dim, f"graph input '{data.name}'") if dim is not None else (None, None)
    producer = data.producer()
    if producer is None or producer.domain not in ("", "ai.onnx") or len(producer.inputs) < 2:
        return None, None
    op = producer.op_type
    weight = _declared_shape(producer.inputs[1], main_inputs)
    channels = None
    if op in ("Conv", "ConvTranspose"):
        channels = _conv_channels(producer, main_inputs)
    elif op == "Gemm" and weight is not None and len(weight) == 2:
        trans = producer.attributes.get("transB")
        if trans is not None and trans.is_ref():
            return None, None
        channels = _static_dim(weight, 0 if trans is not None and trans.as_int() else 1)
    if channels is None:
        return None, None
    return channels, f"the {_node_text(producer)} that produces its input"


def _conv_channels(node: ir.Node, main_inputs: set[int]) -> int | None:
    """Output channels of a Conv (weight dim 0) or ConvTranspose (dim 1 x group), if known."""
    if len(node.inputs) < 2:
        return None
    weight = _declared_shape(node.inputs[1], main_inputs)
    if node.op_type == "Conv":
        return _static_dim(weight, 0)
    per_group = _static_dim(weight, 1)
    group = node.attributes.get("group")
    if group is not None and group.is_ref():
        return None  # a function attribute: known per call
    groups = int(group.as_int()) if group is not None else 1
    return per_group * groups if per_group is not None and groups > 0 else None


def _check_conv_bias(node: ir.Node, main_inputs: set[int], where: str, path: PathLabel) -> None:
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    shape = _declared_shape(bias, main_inputs)
    if shape is None:
        return
    channels = _conv_channels(node, main_inputs)
    if len(shape) != 1 or (channels is not None and shape[0] not in (None, channels)):
        want = f"({channels},)" if channels is not None else "a vector"
        raise BadInputError(
            path,
            f"{where}{_node_text(node)}: bias has shape {_text(shape)}, onnxruntime needs {want}",
        )


def _attr_int(node: ir.Node, name: str, default: int) -> int | None:
    """The attribute's value, ``default`` when absent, None when it refers to a function
    attribute."""
    attr = node.attributes.get(name)
    if attr is not None and attr.is_ref():
        return None
    return default if attr is None else int(attr.as_int())


def _check_matmul(node: ir.Node, main_inputs: set[int], where: str, path: PathLabel) -> None:
    a, b = (_declared_shape(v, main_inputs) for v in node.inputs[:2])
    label = f"{where}{_node_text(node)}"
    if node.op_type == "Gemm":
        for name, shape in (("A", a), ("B", b)):
            if shape is not None and len(shape) != 2:
                raise BadInputError(
                    path, f"{label}: {name} has shape {_text(shape)}, Gemm needs rank 2"
                )
        trans_a, trans_b = _attr_int(node, "transA", 0), _attr_int(node, "transB", 0)
        if trans_a is None or trans_b is None:
            return  # function attributes: known per call
        ka = _static_dim(a, 0 if trans_a else 1)
        kb = _static_dim(b, 1 if trans_b else 0)
    else:
        if (a is not None and len(a) == 0) or (b is not None and len(b) == 0):
            raise BadInputError(path, f"{label}: MatMul operands cannot be scalars")
        ka = _static_dim(a, len(a) - 1) if a else None
        kb = _static_dim(b, 0 if len(b) == 1 else len(b) - 2) if b else None
    if ka is not None and kb is not None and ka != kb:
        raise BadInputError(
            path,
            f"{label}: operands of shapes {_text(a or ())} and {_text(b or ())} cannot multiply "
            f"(inner dimensions {ka} and {kb})",
        )


def _rank(value: ir.Value | None, main_inputs: set[int]) -> int | None:
    """The rank of a constant, a main-graph input, or a MatMul of operands of known rank."""
    shape = _declared_shape(value, main_inputs)
    if shape is not None:
        return len(shape)
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "MatMul" or producer.domain not in ("", "ai.onnx"):
        return None
    if len(producer.inputs) < 2:
        return None
    ra, rb = (_rank(v, main_inputs) for v in producer.inputs[:2])
    if ra is None or rb is None:
        return None
    return max(0, max(ra, rb) - (ra == 1) - (rb == 1))  # a vector operand loses its axis


def _check_batchnorm(
    node: ir.Node, opset: int, main_inputs: set[int], where: str, path: PathLabel
) -> None:
    name = node.name or (node.outputs[0].name if node.outputs else "")
    label = f"{where}BatchNormalization '{name}'"
    if opset < 6:
        return  # consumed_inputs era: the fold refuses it
    spatial = node.attributes.get("spatial")
    if opset < 9 and spatial is not None and spatial.as_int() != 1:
        return  # per-activation parameters (C, D1, ...)
    present = sum(v is not None for v in node.inputs[:5])
    if present < 5:
        raise BadInputError(path, f"{label}: has {present} of the 5 inputs the operator needs")
    rank = _rank(node.inputs[0], main_inputs)
    if rank is not None and rank < 2:
        raise BadInputError(
            path, f"{label}: its input has rank {rank}; BatchNormalization needs (N, C, ...)"
        )
    lengths: dict[str, int] = {}
    for name, value in zip(_BN_PARAMS, node.inputs[1:5], strict=True):
        shape = _declared_shape(value, main_inputs)
        if shape is None:
            continue
        if len(shape) != 1:
            raise BadInputError(
                path,
                f"{label}: {name} has shape {_text(shape)}; onnxruntime needs a vector of one "
                "value per channel",
            )
        if shape[0] is not None:
            lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise BadInputError(path, f"{label}: parameter lengths disagree ({detail})")
    if not lengths:
        return
    data = node.inputs[0]
    if data is None:
        return
    channels, source = _producer_channels(data, main_inputs)
    name, length = next(iter(lengths.items()))
    if channels is not None and length != channels:
        raise BadInputError(
            path,
            f"{label}: {name} has {length} value(s) but {source} has {channels} channels",
        )


def _text(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("?" if d is None else str(d) for d in shape)
        + (",)" if len(shape) == 1 else ")")
    )
