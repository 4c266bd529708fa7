"""The generated CRD: up to date, structural, and enforcing the models' enums and ranges."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from operator_fixtures import job_spec, resource
from quanttrain.operator import crd
from quanttrain.operator.cli import main as cli_main

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_WORKBOOK = PROJECT_ROOT / "examples" / "ML_CONFIG_STRATEGY_1.0.0.xlsx"
# Keys of JSON Schema that apiextensions.k8s.io/v1 rejects or that structural schemas forbid.
FORBIDDEN_KEYS = {"$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "not", "title", "const",
                  "additionalItems", "patternProperties", "dependencies", "$schema", "id"}
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return crd.build_crd()


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def openapi(document: dict[str, Any]) -> dict[str, Any]:
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", crd.CRD_PATHS, ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_checked_in_crd_matches_generation(path: Path):
    assert path.read_text(encoding="utf-8") == crd.render_crd(), (
        f"{path} is stale; run `python -m quanttrain.operator.crd --write`"
    )


def test_crd_names_and_version(generated):
    spec = generated["spec"]
    assert generated["metadata"]["name"] == "mltrainingjobs.quanttrain.io"
    assert spec["names"]["kind"] == "MLTrainingJob"
    assert spec["names"]["shortNames"] == ["mltj"]
    assert spec["names"]["categories"] == ["quanttrain"]
    assert spec["versions"][0]["name"] == "v1alpha1"
    assert spec["versions"][0]["storage"] is True
    assert spec["versions"][0]["subresources"] == {"status": {}}


def test_printer_columns_show_model_phase_accuracy_f1_age(generated):
    columns = {column["name"]: column for column in generated["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Model", "Phase", "Accuracy", "F1", "Age"]
    assert columns["Model"]["jsonPath"] == ".spec.strategy.modelType"
    assert columns["Accuracy"]["jsonPath"] == ".status.evaluation.accuracy"
    assert columns["Accuracy"]["type"] == "number"
    assert columns["F1"]["jsonPath"] == ".status.evaluation.f1Score"


def test_crd_is_a_valid_kubernetes_object(generated):
    kubernetes_validate.validate(generated, KUBERNETES_VERSION, strict=True)


def test_schema_nodes_all_typed(generated):
    untyped = [
        path for path, node in schema_nodes(openapi(generated))
        if "type" not in node and not node.get(crd.PRESERVE)
    ]
    assert untyped == []


def test_schema_has_no_forbidden_keys(generated):
    found = [
        (path, sorted(FORBIDDEN_KEYS & set(node)))
        for path, node in schema_nodes(openapi(generated)) if FORBIDDEN_KEYS & set(node)
    ]
    assert found == []


def test_schema_drops_additional_properties_false(generated):
    assert all(node.get("additionalProperties") is not False for _, node in schema_nodes(openapi(generated)))


def test_schema_keeps_enums_ranges_and_descriptions(generated):
    spec = openapi(generated)["properties"]["spec"]["properties"]
    strategy = spec["strategy"]["properties"]
    assert strategy["modelType"]["enum"] == ["RANDOM_FOREST", "XGB", "LSTM", "SVM"]
    assert strategy["confidenceThreshold"]["minimum"] == 0.5
    assert strategy["confidenceThreshold"]["maximum"] == 0.99
    assert strategy["name"]["maxLength"] == 50
    assert "description" in strategy["trainingWindowDays"]


def test_schema_keeps_scalar_defaults(generated):
    training = openapi(generated)["properties"]["spec"]["properties"]["training"]["properties"]
    assert training["cvFolds"]["default"] == 5
    assert training["hyperparameterOptimization"]["default"] == "NONE"
    assert "default" not in openapi(generated)["properties"]["spec"]["properties"]["image"]


def test_exclusive_bounds_become_openapi_flags(generated):
    ratio = openapi(generated)["properties"]["spec"]["properties"]["features"]["properties"]["trainSplitRatio"]
    assert ratio["minimum"] == 0.0
    assert ratio["exclusiveMinimum"] is True
    assert ratio["exclusiveMaximum"] is True


def test_non_structural_unions_preserve_unknown_fields(generated):
    training = openapi(generated)["properties"]["spec"]["properties"]["training"]["properties"]
    assert training["searchSpace"]["additionalProperties"] == {crd.PRESERVE: True}
    assert training["modelParameters"][crd.PRESERVE] is True


def test_optional_fields_are_nullable(generated):
    image = openapi(generated)["properties"]["spec"]["properties"]["image"]
    assert image == {"type": "string", "description": image["description"], "nullable": True}


def test_conditions_merge_by_type(generated):
    conditions = openapi(generated)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_valid_resource_passes_the_schema():
    assert crd.resource_errors(resource("rf")) == []


def test_resource_with_status_passes_the_schema():
    document = resource("rf")
    document["status"] = {
        "phase": "Succeeded", "observedGeneration": 1, "message": "done",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "TrainingSucceeded", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "evaluation": {"accuracy": 0.6, "precision": 0.6, "recall": 0.6, "f1Score": 0.6, "confusionMatrix": [[1]],
                       "classes": ["UP"], "testRows": 1},
    }
    assert crd.resource_errors(document) == []


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("strategy", "modelType", "GBM", "is not one of"),
        ("strategy", "confidenceThreshold", 1.2, "maximum"),
        ("strategy", "trainingWindowDays", 10, "minimum"),
        ("features", "trainSplitRatio", 1.0, "maximum"),
        ("strategy", "name", "x" * 51, "too long"),
    ],
)
def test_bad_values_fail_the_schema(section, field, value, expected):
    spec = job_spec()
    spec[section] = {**spec[section], field: value}
    errors = crd.resource_errors(resource("rf", spec))
    assert len(errors) == 1
    assert errors[0].startswith(f"spec.{section}.{field}: ")
    assert expected in errors[0]


def test_unknown_field_fails_the_schema():
    spec = copy.deepcopy(job_spec())
    spec["strategy"]["modelTyp"] = "XGB"
    assert crd.resource_errors(resource("rf", spec)) == [
        "spec.strategy: Additional properties are not allowed ('modelTyp' was unexpected)"
    ]


def test_search_space_accepts_lists_and_ranges():
    spec = job_spec(training={"hyperparameterOptimization": "RANDOM_SEARCH",
                              "searchSpace": {"n_estimators": [100, 300], "max_depth": {"low": 2, "high": 8}}})
    assert crd.resource_errors(resource("rf", spec)) == []


@pytest.mark.skipif(not EXAMPLE_WORKBOOK.exists(), reason="the example workbooks are not written yet")
def test_converted_examples_validate_against_the_crd(tmp_path: Path):
    workbooks = sorted(str(path) for path in (PROJECT_ROOT / "examples").glob("ML_CONFIG_*.xlsx"))
    assert cli_main(["convert", *workbooks, "--output-dir", str(tmp_path)]) == 0
    documents = sorted(tmp_path.glob("*.yaml"))
    assert documents, "convert wrote no YAML"
    for path in documents:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert crd.resource_errors(document) == [], path.name
