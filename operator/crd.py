"""Generate the MLTrainingJob CustomResourceDefinition from the pydantic models.

pydantic writes JSON Schema (draft 2020-12); the API server wants a
*structural* OpenAPI v3 schema.  :func:`structural` converts one into the
other:

* ``$ref`` is inlined, titles are dropped;
* ``anyOf`` with ``null`` becomes ``nullable: true``; ``int | float`` becomes
  ``number``; any other union (the search space's list-or-range, mixed-type
  parameters) and ``dict[str, Any]`` become ``x-kubernetes-preserve-unknown-fields``;
* ``exclusiveMinimum: x`` becomes ``minimum: x`` with ``exclusiveMinimum: true``;
* ``additionalProperties: false`` is dropped, because the API server prunes
  unknown fields of a structural schema instead (and ``kubectl apply`` rejects
  them with its default strict field validation).

Run ``python -m quanttrain.operator.crd --write`` after changing a model; a test
fails while the checked-in files are stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from quanttrain.operator import api
from quanttrain.operator.status import MLTrainingJobStatus

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"
# The generator writes the same document to both places: crds/ for kubectl, the chart for helm.
CRD_PATHS = (PROJECT_ROOT / "crds" / CRD_FILE, PROJECT_ROOT / "helm" / "quanttrain" / "crds" / CRD_FILE)

PRESERVE = "x-kubernetes-preserve-unknown-fields"
# JSON Schema keywords that a CRD schema may keep as they are.
_KEPT_KEYS = (
    "type", "format", "description", "enum", "minimum", "maximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "required", "nullable", "default",
)

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.strategy.modelType", "description": "Model family."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pending, Running, Succeeded or Failed."},
    {"name": "Accuracy", "type": "number", "jsonPath": ".status.evaluation.accuracy", "description": "Test-set accuracy."},
    {"name": "F1", "type": "number", "jsonPath": ".status.evaluation.f1Score", "description": "Class-weighted F1 score."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON Schema (with ``$defs``) into a structural OpenAPI v3 schema."""
    definitions = schema.get("$defs", {})
    root = {key: value for key, value in schema.items() if key != "$defs"}
    return _convert(root, definitions)


def _convert(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = _inline(node, definitions)
    if "anyOf" in node:
        return _convert_union(node, definitions)

    result = {key: copy.deepcopy(node[key]) for key in _KEPT_KEYS if key in node}
    if result.get("default") is None:
        result.pop("default", None)
    _convert_exclusive_bounds(node, result)

    kind = node.get("type")
    if kind == "object":
        _convert_object(node, result, definitions)
    elif kind == "array":
        items = node.get("items") or {}
        result["items"] = _convert(items, definitions) if items else {PRESERVE: True}
    elif kind is None and "enum" not in node:
        # Any value at all (``Any``): keep whatever arrives.
        result[PRESERVE] = True
    return result


def _inline(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Replace a ``$ref`` by its definition; the referring node's description and default win."""
    while "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        node = {**target, **siblings}
    return node


def _convert_union(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    options = [_inline(option, definitions) for option in node["anyOf"]]
    non_null = [option for option in options if option.get("type") != "null"]
    outer = {key: value for key, value in node.items() if key in ("description", "default", "format")}

    if len(non_null) == 1:
        merged = _convert({**non_null[0], **outer}, definitions)
        if len(non_null) < len(options):
            merged["nullable"] = True
        return merged
    if {option.get("type") for option in non_null} == {"integer", "number"}:
        return _convert({**_merge_numbers(non_null), **outer}, definitions)

    # Not structural: the trainer's own validation checks these values.
    result = {key: value for key, value in outer.items() if key == "description"}
    result[PRESERVE] = True
    return result


def _merge_numbers(options: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"type": "number"}
    for option in options:
        merged.update({key: value for key, value in option.items() if key != "type"})
    return merged


def _convert_exclusive_bounds(node: dict[str, Any], result: dict[str, Any]) -> None:
    # OpenAPI v3.0 spells an exclusive bound as a flag beside minimum or maximum.
    if "exclusiveMinimum" in node:
        result["minimum"] = node["exclusiveMinimum"]
        result["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        result["maximum"] = node["exclusiveMaximum"]
        result["exclusiveMaximum"] = True


def _convert_object(node: dict[str, Any], result: dict[str, Any], definitions: dict[str, Any]) -> None:
    properties = node.get("properties")
    extra = node.get("additionalProperties")
    if properties:
        result["properties"] = {name: _convert(value, definitions) for name, value in properties.items()}
    elif isinstance(extra, dict) and extra:
        result["additionalProperties"] = _convert(extra, definitions)
    else:
        # dict[str, Any] and empty models: any keys and values.
        result[PRESERVE] = True


def status_schema() -> dict[str, Any]:
    schema = structural(MLTrainingJobStatus.model_json_schema(by_alias=True))
    conditions = schema["properties"]["conditions"]
    # One condition per type, so `kubectl patch` and server-side apply can merge them.
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = sorted(set(conditions["items"].get("required", [])) | {"type", "status"})
    return schema


def spec_schema() -> dict[str, Any]:
    return structural(api.MLTrainingJobSpec.model_json_schema(by_alias=True))


def build_crd() -> dict[str, Any]:
    """Return the CustomResourceDefinition document."""
    schema = {
        "type": "object",
        "description": "An ML indicator strategy to train: the job configuration and how to run it.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "quanttrain", "app.kubernetes.io/part-of": "quanttrain"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m quanttrain.operator.crd --write`; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, allow_unicode=True, width=120)


# -- validation of custom resources against the CRD's schema ------------------


def validation_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """Turn a CRD's structural schema into a JSON Schema (draft 4) for ``jsonschema``.

    ``nullable`` becomes a ``null`` type, and objects with declared properties
    reject unknown fields, as ``kubectl apply`` does with strict field validation.
    """
    node = {key: value for key, value in openapi.items() if not key.startswith("x-kubernetes-")}
    if openapi.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    node.pop("nullable", None)
    if "properties" in openapi:
        node["properties"] = {name: validation_schema(value) for name, value in openapi["properties"].items()}
        if not openapi.get(PRESERVE):
            node["additionalProperties"] = False
    if isinstance(openapi.get("additionalProperties"), dict):
        node["additionalProperties"] = validation_schema(openapi["additionalProperties"])
    if "items" in openapi:
        node["items"] = validation_schema(openapi["items"])
    return node


def resource_errors(resource: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Validate an MLTrainingJob against the CRD's schema; return one line per problem (path: message)."""
    import jsonschema

    crd = crd or build_crd()
    openapi = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(validation_schema(openapi))
    errors = sorted(validator.iter_errors(resource), key=lambda error: list(map(str, error.absolute_path)))
    return [f"{_json_path(error.absolute_path)}: {error.message}" for error in errors]


def _json_path(parts) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "(root)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quanttrain.operator.crd", description="Print or write the MLTrainingJob CRD."
    )
    parser.add_argument("--write", action="store_true", help="write crds/ and the Helm chart's copy instead of printing")
    args = parser.parse_args(argv)
    text = render_crd()
    if not args.write:
        sys.stdout.write(text)
        return 0
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
