"""Job configuration: ranges on fields, rules across fields, paths in errors."""

import copy

import pytest

from quanttrain.trainer.config import (
    ConfigError,
    ParameterRange,
    TrainingJobConfig,
    load_job_config,
    spec_from_resource,
)

VALID = {
    "strategy": {
        "name": "Momentum RF",
        "modelType": "RANDOM_FOREST",
        "predictionTarget": "PRICE_DIRECTION",
        "trainingDataset": "data/sp500_daily.csv",
        "modelPath": "momentum-rf",
        "confidenceThreshold": 0.6,
        "trainingWindowDays": 365,
        "predictionHorizonMinutes": 1440,
    },
    "features": {
        "targetVariable": "direction",
        "featureColumns": ["rsi", "close"],
        "trainSplitRatio": 0.7,
        "validationSplitRatio": 0.15,
    },
    "indicators": [
        {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "parameters": {"timeperiod": 14}},
    ],
}


def with_changes(**paths):
    data = copy.deepcopy(VALID)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return data


def paths_of(error: ConfigError) -> list[str]:
    return [violation.dotted_path() for violation in error.violations]


def test_valid_config_loads_with_defaults():
    config = load_job_config(VALID)
    assert config.training.cv_folds == 5
    assert config.strategy.feature_configuration.return_lags == [1, 5, 10]


def test_spec_round_trips_through_camel_case():
    config = load_job_config(VALID)
    assert TrainingJobConfig.model_validate(config.to_spec()) == config


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"strategy__confidenceThreshold": 1.2}, "strategy.confidenceThreshold"),
        ({"strategy__trainingWindowDays": 29}, "strategy.trainingWindowDays"),
        ({"strategy__predictionHorizonMinutes": 1441}, "strategy.predictionHorizonMinutes"),
        ({"strategy__modelType": "GBM"}, "strategy.modelType"),
        ({"strategy__name": "x" * 51}, "strategy.name"),
    ],
)
def test_field_range_error_names_path(change, path):
    with pytest.raises(ConfigError) as caught:
        load_job_config(with_changes(**change))
    assert paths_of(caught.value) == [path]


def test_split_outside_range_is_rejected():
    with pytest.raises(ConfigError) as caught:
        load_job_config(with_changes(features__trainSplitRatio=0.5))
    assert paths_of(caught.value) == ["features.trainSplitRatio"]
    assert "between 0.8 and 1.0" in str(caught.value)


def test_split_using_all_rows_needs_test_dataset():
    with pytest.raises(ConfigError) as caught:
        load_job_config(with_changes(features__trainSplitRatio=0.8, features__validationSplitRatio=0.2))
    assert paths_of(caught.value) == ["features.validationSplitRatio"]


def test_empty_feature_columns_are_rejected():
    with pytest.raises(ConfigError) as caught:
        load_job_config(with_changes(features__featureColumns=[]))
    assert paths_of(caught.value) == ["features.featureColumns"]


def test_all_rule_violations_are_reported_together():
    data = with_changes(features__featureColumns=["rsi", "macd"], indicators__0__calculationMethod="NOPE")
    data["training"] = {"hyperparameterOptimization": "GRID_SEARCH"}
    with pytest.raises(ConfigError) as caught:
        load_job_config(data)
    assert paths_of(caught.value) == [
        "features.featureColumns[1]",
        "indicators[0].calculationMethod",
        "training.searchSpace",
    ]


def test_unknown_indicator_parameter_lists_valid_ones():
    data = with_changes(indicators__0__parameters={"period": 14})
    with pytest.raises(ConfigError) as caught:
        load_job_config(data)
    assert "its parameters are: timeperiod" in str(caught.value)


def test_grid_search_rejects_ranges():
    data = copy.deepcopy(VALID)
    data["training"] = {"hyperparameterOptimization": "GRID_SEARCH", "searchSpace": {"max_depth": {"low": 2, "high": 8}}}
    with pytest.raises(ConfigError) as caught:
        load_job_config(data)
    assert paths_of(caught.value) == ["training.searchSpace.max_depth"]


def test_parameter_range_keeps_integers():
    assert ParameterRange(low=2, high=8).is_integer
    assert not ParameterRange(low=0.01, high=1.0, log=True).is_integer


def test_log_range_needs_positive_low():
    with pytest.raises(ValueError, match="low > 0"):
        ParameterRange(low=0, high=1, log=True)


def test_kubernetes_fields_are_ignored_by_the_trainer():
    resource = {"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob",
                "spec": {**VALID, "image": "trainer:1", "runPolicy": {"suspend": True}}}
    config = load_job_config(spec_from_resource(resource))
    assert config.strategy.name == "Momentum RF"


def test_unknown_spec_key_is_an_error():
    with pytest.raises(ConfigError) as caught:
        load_job_config({**VALID, "strategyy": {}})
    assert "strategyy" in paths_of(caught.value)


def test_trainer_ignores_exactly_the_kubernetes_fields():
    from quanttrain.operator.api import MLTrainingJobSpec
    from quanttrain.trainer.config import _KUBERNETES_ONLY_KEYS

    resource_keys = {field.alias for field in MLTrainingJobSpec.model_fields.values()}
    config_keys = {field.alias for field in TrainingJobConfig.model_fields.values()}
    assert resource_keys - config_keys == set(_KUBERNETES_ONLY_KEYS)
