"""The Open Inference Protocol (KServe v2) for a sharkrec artifact: metadata, and infer tensors ↔ JSON rows.

One input tensor per schema field (sparse and dense; labels are not inputs), each of shape ``[N]``
(``[N, 1]`` is accepted) holding one value per row, row-major in ``data``:

- a sparse field with string keys is ``BYTES`` (strings); one with integer keys is ``INT64``
  (``INT32`` accepted); a multi-hot field takes per row a list of values or one string joined with
  the field's separator (``"t1|t3"``);
- a dense field is ``FP32`` (``FP64``, ``INT64``, ``INT32`` accepted: numbers are numbers);
- ``null`` is a missing value; an input left out is missing in every row.

One output per task, ``FP32``, shape ``[N]``: the task's probability per row. A request's columns
become the rows ``/predict`` takes, so both routes share the batching queue, the encoder and the
scores. A bad tensor (unknown name, wrong datatype, shape that does not match ``data``, inputs of
different lengths) is a :class:`~sharkrec.errors.DataError`, which the server answers with 400 and
``{"error": ...}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sharkrec.data.schema import FieldKind
from sharkrec.errors import DataError

if TYPE_CHECKING:
    from sharkrec.export.engine import ServingModel

#: datatypes each declared input datatype also accepts
_ACCEPTED = {"BYTES": ("BYTES",), "INT64": ("INT64", "INT32"), "FP32": ("FP32", "FP64", "INT64", "INT32")}


def input_datatypes(model: ServingModel) -> dict[str, str]:
    """The declared v2 datatype of every input field (schema order: sparse, then dense)."""
    datatypes = {}
    for spec in model.schema.fields:
        if spec.kind is FieldKind.SPARSE:
            vocabulary = model.vocabularies.get(spec.name)
            datatypes[spec.name] = "INT64" if vocabulary is not None and vocabulary.key_kind == "int" else "BYTES"
        elif spec.kind is FieldKind.DENSE:
            datatypes[spec.name] = "FP32"
    return datatypes


def model_metadata(model: ServingModel, name: str, version: str | None) -> dict[str, Any]:
    """The v2 model metadata response of ``model`` served as ``name``."""
    inputs = [{"name": field, "datatype": datatype, "shape": [-1]}
              for field, datatype in input_datatypes(model).items()]
    outputs = [{"name": task, "datatype": "FP32", "shape": [-1]} for task in model.task_names]
    return {"name": name, "versions": [version] if version else [], "platform": "sharkrec",
            "inputs": inputs, "outputs": outputs}


def _element_ok(value: Any, datatype: str, multi_hot: bool) -> bool:
    if value is None:
        return True
    if multi_hot and isinstance(value, list):
        return all(v is not None and _element_ok(v, datatype, False) for v in value)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype.startswith("INT"):
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def request_rows(model: ServingModel, body: Any, max_rows: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON rows of a v2 infer request ``body`` and the output (task) names it asks for, in order.

    Raises :class:`DataError` naming the bad tensor and the fix.
    """
    if not isinstance(body, dict):
        raise DataError("the infer request must be a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise DataError("the infer request needs a non-empty 'inputs' list of tensors "
                        "({'name', 'shape', 'datatype', 'data'})")
    declared = input_datatypes(model)
    multi_hot = {spec.name for spec in model.schema.fields if spec.is_multi_hot}
    columns: dict[str, list[Any]] = {}
    rows = None
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise DataError(f"input {position} is not a tensor object; send {{'name', 'shape', 'datatype', 'data'}}")
        name = tensor.get("name")
        if name not in declared:
            raise DataError(f"input {name!r} is not an input of this model; inputs: {', '.join(declared)}")
        if name in columns:
            raise DataError(f"input {name!r} is given twice; send each input once")
        datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
        if datatype not in _ACCEPTED[declared[name]]:
            raise DataError(f"input {name!r} has datatype {datatype!r}; send {declared[name]} "
                            f"(accepted: {', '.join(_ACCEPTED[declared[name]])})")
        if (not isinstance(shape, list) or len(shape) not in (1, 2) or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
                or (len(shape) == 2 and shape[1] != 1)):
            raise DataError(f"input {name!r} has shape {shape!r}; send [N] (or [N, 1]), one value per row")
        if not isinstance(data, list) or len(data) != shape[0]:
            count = len(data) if isinstance(data, list) else "no list of"
            raise DataError(f"input {name!r} has shape {shape} but {count} values in 'data'; "
                            f"send shape[0] values, flat and row-major")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise DataError(f"input {name!r} has {shape[0]} rows but the inputs before it have {rows}; "
                            "send the same number of rows in every input")
        for row, value in enumerate(data):
            if not _element_ok(value, datatype, name in multi_hot):
                raise DataError(f"input {name!r} value {row} ({value!r}) is not a {datatype} element")
        columns[name] = data
    if rows is None or rows < 1 or rows > max_rows:
        raise DataError(f"the request has {rows} rows; send between 1 and {max_rows} per request")
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)], _outputs(model, body)


def _outputs(model: ServingModel, body: dict[str, Any]) -> list[str]:
    tasks = list(model.task_names)
    wanted = body.get("outputs")
    if wanted is None:
        return tasks
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
        raise DataError("'outputs' must be a list of {'name': task}; leave it out for every task")
    names = [o["name"] for o in wanted]
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise DataError(f"output {unknown[0]!r} is not an output of this model; outputs: {', '.join(tasks)}")
    return names
