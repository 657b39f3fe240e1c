"""Loads only the signatures a batch job calls from a SavedModel, in tens of milliseconds.

`tf.saved_model.load` rebuilds every function of the export as a Python graph (19 of them
for ours: generate, generate_batch, log_likelihood's loops, the checkpoint functions...),
which takes 0.2-0.35 s here: as long as encoding 40,000 images. A batch job needs one or
three signatures. `load_signatures` registers just those functions (and the functions they
call) with the eager runtime from `saved_model.pb`, restores just the variables they
capture from the checkpoint, and calls them by name, with no Python graph built. It
answers bit for bit what the loaded signatures answer (tested).

It reads the SavedModel format (`saved_object_graph.proto`, the checkpoint's object
graph), a stable on-disk format. Exports it does not understand (a signature capturing
something other than variables and constants, such as a lookup table; a function it
cannot find) give None, and the caller falls back to `tf.saved_model.load`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.core.protobuf import meta_graph_pb2, trackable_object_graph_pb2
from tensorflow.python.eager import context

log = logging.getLogger(__name__)

SignatureCall = Callable[..., dict[str, tf.Tensor]]  # keyword tensors -> outputs by key
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_VALUE = "VARIABLE_VALUE"
_LOADS = itertools.count()  # makes each load's function names unique in the process


def _child(node, name: str) -> int | None:
    return next((c.node_id for c in node.children if c.local_name == name), None)


def _callees(function) -> list[str]:
    """The names of the functions a FunctionDef's nodes call (as ops, or in attributes)."""
    names = []
    for node in function.node_def:
        names.append(node.op)
        for attr in node.attr.values():
            names += [attr.func.name] if attr.HasField("func") else []
            names += [f.name for f in attr.list.func]
    return names


def _closure(library: dict, root: str) -> list[str]:
    """`root` and every function of `library` it calls."""
    found: list[str] = []
    pending = [root]
    while pending:
        name = pending.pop()
        if name not in found:
            found.append(name)
            pending += [callee for callee in _callees(library[name]) if callee in library]
    return found


def _renamed(function, renames: dict[str, str]) -> function_pb2.FunctionDef:
    """A copy of `function` under its new name, calling the functions in `renames` by theirs."""
    copy = function_pb2.FunctionDef()
    copy.CopyFrom(function)
    copy.signature.name = renames[function.signature.name]
    for node in copy.node_def:
        node.op = renames.get(node.op, node.op)
        for attr in node.attr.values():
            if attr.HasField("func"):
                attr.func.name = renames.get(attr.func.name, attr.func.name)
            for f in attr.list.func:
                f.name = renames.get(f.name, f.name)
    return copy


def _keys(structure) -> list[str] | None:
    """The sorted keys of a dict in a signature's StructuredValue (its flattening order)."""
    return sorted(structure.dict_value.fields) if structure.HasField("dict_value") else None


def load_signatures(
    version_dir: str, names: Sequence[str], graph: meta_graph_pb2.MetaGraphDef
) -> dict[str, SignatureCall] | None:
    """The signatures `names` of the SavedModel at `version_dir`, each called as
    `fn(images=tensor)` -> {output key: tensor}; None when this export needs the full loader.

    Args:
        version_dir: the folder holding `saved_model.pb` and `variables/`.
        names: signature keys, each in `graph.signature_def`.
        graph: the MetaGraph read from `saved_model.pb`.
    """
    try:
        return _load(version_dir, names, graph)
    except (AttributeError, KeyError, IndexError, ValueError, StopIteration, tf.errors.OpError) as err:
        log.debug("signatures-only load of %s failed (%s); loading the whole SavedModel", version_dir, err)
        return None


def _load(version_dir: str, names: Sequence[str], graph) -> dict[str, SignatureCall] | None:
    runtime = context.context()
    if not all(hasattr(runtime, m) for m in ("add_function_def", "call_function")):
        return None  # a TensorFlow without these eager runtime calls
    objects = graph.object_graph_def
    signature_map = _child(objects.nodes[0], "signatures")
    if signature_map is None:
        return None
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    plans = {}
    for name in names:
        node_id = _child(objects.nodes[signature_map], name)
        if node_id is None or objects.nodes[node_id].WhichOneof("kind") != "bare_concrete_function":
            return None
        function_name = objects.nodes[node_id].bare_concrete_function.concrete_function_name
        saved = objects.concrete_functions[function_name]
        positional, keywords = saved.canonicalized_input_signature.tuple_value.values
        inputs = _keys(keywords) if not positional.tuple_value.values else None
        outputs = _keys(saved.output_signature)
        captured = list(saved.bound_inputs)
        if inputs is None or outputs is None:
            return None
        arguments = library[function_name].signature
        if ([a.name for a in arguments.input_arg[:len(inputs)]] != inputs
                or len(arguments.input_arg) != len(inputs) + len(captured)
                or len(arguments.output_arg) != len(outputs)
                or any(objects.nodes[i].WhichOneof("kind") not in ("variable", "constant") for i in captured)):
            return None
        plans[name] = (function_name, inputs, outputs, captured)

    captures = _captures(version_dir, graph, sorted({i for p in plans.values() for i in p[3]}))
    # Names unique in this process: two exports may each hold a different
    # `__inference_encode_1249` (tf.saved_model.load renames too).
    suffix = f"_encode_job_{next(_LOADS)}"
    renames = {f: f + suffix for p in plans.values() for f in _closure(library, p[0])}
    for old in renames:  # all before any call: a function's callees must be known when it runs
        runtime.add_function_def(_renamed(library[old], renames))
    return {name: _caller(runtime, renames[function_name], inputs, outputs, [captures[i] for i in captured])
            for name, (function_name, inputs, outputs, captured) in plans.items()}


def _captures(version_dir: str, graph, node_ids: list[int]) -> dict[int, tf.Variable | tf.Tensor]:
    """The captured objects `node_ids` of the object graph: variables read from the export's
    checkpoint, constants from the MetaGraph's graph."""
    objects = graph.object_graph_def
    variables = [i for i in node_ids if objects.nodes[i].WhichOneof("kind") == "variable"]
    captures: dict[int, tf.Variable | tf.Tensor] = {}
    if variables:
        prefix = tf.io.gfile.join(version_dir, "variables", "variables")
        checkpoint_graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            tf.train.load_checkpoint(prefix).get_tensor(_OBJECT_GRAPH_KEY))
        keys = [next(a.checkpoint_key for a in checkpoint_graph.nodes[i].attributes if a.name == _VARIABLE_VALUE)
                for i in variables]  # StopIteration: a variable without a value (caught by the caller)
        values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                                      dtypes=[objects.nodes[i].variable.dtype for i in variables])
        captures |= {i: tf.Variable(value, trainable=False) for i, value in zip(variables, values)}
    operations = {node.name: node for node in graph.graph_def.node}
    for i in set(node_ids) - set(variables):
        value = operations[objects.nodes[i].constant.operation].attr["value"].tensor
        captures[i] = tf.constant(tf.make_ndarray(value))
    return captures


def _caller(runtime, function_name: str, inputs: list[str], outputs: list[str],
            captured: list[tf.Variable | tf.Tensor]) -> SignatureCall:
    encoded = function_name.encode()
    handles = [c.handle if isinstance(c, tf.Variable) else c for c in captured]

    def call(**tensors) -> dict[str, tf.Tensor]:
        flat = [tf.convert_to_tensor(tensors[key]) for key in inputs]
        return dict(zip(outputs, runtime.call_function(encoded, flat + handles, len(outputs))))

    call.captured = captured  # a variable's resource is freed with its last Variable: keep them alive
    return call
