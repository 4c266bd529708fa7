"""Joining sheets into jobs, mapping rule violations to cells, deterministic YAML, --check, job inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import openpyxl
import pytest
import yaml

from quanttrain.operator.api import MLTrainingJobSpec
from quanttrain.operator.convert import (
    diff_documents,
    jobs_from_workbooks,
    render_documents,
    write_documents,
)
from quanttrain.operator.job_inputs import InputError, load_job_specs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KINDS = ("STRATEGY", "PORTFOLIO", "INDICATORS")
STRATEGY, PORTFOLIO, INDICATORS = range(3)


@pytest.fixture
def paths(tmp_path):
    copies = []
    for kind in KINDS:
        target = tmp_path / "workbooks" / f"ML_CONFIG_{kind}_1.0.0.xlsx"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(EXAMPLES / target.name, target)
        copies.append(str(target))
    return copies


def edit(path: str, sheet: str, cells: dict[str, object]) -> None:
    workbook = openpyxl.load_workbook(path)
    for ref, value in cells.items():
        workbook[sheet][ref] = value
    workbook.save(path)


def delete_rows(path: str, sheet: str, first: int, count: int = 1) -> None:
    workbook = openpyxl.load_workbook(path)
    workbook[sheet].delete_rows(first, count)
    workbook.save(path)


def messages_at(problems, sheet: str, cell: str) -> list[str]:
    return [problem.message for problem in problems if problem.sheet == sheet and problem.cell == cell]


def jobs_by_name(paths):
    jobs, problems = jobs_from_workbooks(paths)
    assert [str(problem) for problem in problems] == []
    return {job.name: job.spec for job in jobs}


# --- joining -----------------------------------------------------------------------


def test_examples_give_one_job_per_strategy(paths):
    jobs = jobs_by_name(paths)

    assert list(jobs) == ["sp500-momentum-rf", "sp500-trend-xgb", "sp500-volatility-svm", "sp500-signal-lstm"]


def test_first_example_is_the_demo_strategy(paths):
    spec = jobs_by_name(paths)["sp500-momentum-rf"]

    assert spec.strategy.name == "SP500 Momentum RF"
    assert spec.strategy.training_dataset == "examples/data/sp500_daily.csv"
    assert spec.strategy.prediction_horizon_minutes == 1440
    assert spec.training.model_parameters == {"n_estimators": 200, "max_depth": 5}
    assert spec.training.min_accuracy_threshold == 0.0


def test_blank_row_is_the_fallback(paths):
    jobs = jobs_by_name(paths)

    assert jobs["sp500-momentum-rf"].features.target_variable == "direction"
    assert jobs["sp500-volatility-svm"].features.target_variable == "volatility_regime"


def test_strategy_takes_its_own_and_blank_indicator_rows(paths):
    edit(paths[INDICATORS], "Indicators", {"A7": "SP500 Trend XGB", "B7": "obv", "C7": "VOLUME",
                                           "D7": "OBV"})

    jobs = jobs_by_name(paths)

    assert [i.name for i in jobs["sp500-trend-xgb"].indicators][-1] == "obv"
    assert "obv" not in [i.name for i in jobs["sp500-momentum-rf"].indicators]


def test_parameters_and_thresholds_join_their_indicator(paths):
    indicators = {i.name: i for i in jobs_by_name(paths)["sp500-momentum-rf"].indicators}

    assert indicators["rsi"].parameters == {"timeperiod": 14}
    assert indicators["macd"].parameters == {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}
    assert (indicators["rsi"].thresholds.lower, indicators["rsi"].thresholds.upper) == (30, 70)
    assert indicators["macd"].output == "macdhist"


def test_portfolio_risk_and_allocation_join(paths):
    portfolio = jobs_by_name(paths)["sp500-momentum-rf"].portfolio

    assert portfolio.name == "sp500-core"
    assert portfolio.risk.max_drawdown == 0.2
    assert [(entry.symbol, entry.weight) for entry in portfolio.allocation] == [("SPY", 1.0)]


def test_models_sheet_fills_kubernetes_fields(paths):
    spec = jobs_by_name(paths)["sp500-signal-lstm"]

    assert (spec.distributed.enabled, spec.distributed.nodes, spec.distributed.procs_per_node) == (True, 2, 1)
    assert spec.resources.gpus_per_node == 0


def test_portfolio_workbooks_are_optional(paths):
    jobs, problems = jobs_from_workbooks([paths[STRATEGY], paths[INDICATORS]])

    assert problems == []
    assert all(job.spec.portfolio is None for job in jobs)


def test_two_errors_are_both_reported(paths):
    edit(paths[STRATEGY], "Strategy", {"G2": 1.2, "B2": "GBM"})

    _, problems = jobs_from_workbooks(paths)

    assert [f"{p.sheet}!{p.cell}" for p in problems] == ["Strategy!B2", "Strategy!G2"]


def test_unknown_strategy_reference_is_an_error(paths):
    edit(paths[STRATEGY], "Models", {"A2": "SP500 Momentum"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Models", "A2")[0].startswith(
        "Strategy Name 'SP500 Momentum' matches no Strategy row; use one of: 'SP500 Momentum RF'")


def test_unknown_strategy_reference_lists_each_name_once(paths):
    edit(paths[STRATEGY], "Strategy", {"A3": "sp500 momentum RF"})
    edit(paths[STRATEGY], "Models", {"A2": "SP500 Momentum"})

    _, problems = jobs_from_workbooks(paths)

    message = messages_at(problems, "Models", "A2")[0]
    assert "use one of: 'SP500 Momentum RF', 'SP500 Volatility SVM', 'SP500 Signal LSTM', or leave" in message


def test_write_outcomes_use_one_verb(paths, tmp_path):
    jobs, _ = jobs_from_workbooks(paths)
    documents = render_documents(jobs, paths)

    first = write_documents(tmp_path / "jobs", documents, paths)
    second = write_documents(tmp_path / "jobs", documents, paths)

    assert set(first.values()) == {"wrote"}
    assert set(second.values()) == {"unchanged"}


def test_strategy_names_must_be_unique(paths):
    edit(paths[STRATEGY], "Strategy", {"A3": "sp500  MOMENTUM rf"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Strategy", "A3") == [
        "Strategy Name 'sp500  MOMENTUM rf' is already used at Strategy!A2; strategy names must be unique "
        "(case is ignored)"]


def test_kubernetes_name_collision_names_both_cells(paths):
    edit(paths[STRATEGY], "Strategy", {"A3": "SP500 Momentum-RF"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Strategy", "A3") == [
        "Strategy Name 'SP500 Momentum-RF' gives the Kubernetes name 'sp500-momentum-rf', as does "
        "'SP500 Momentum RF' at Strategy!A2; rename one of them"]


def test_strategy_without_models_row_is_an_error(paths):
    delete_rows(paths[STRATEGY], "Models", 3)  # the XGB strategy's row; no blank row to fall back on

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Strategy", "A3") == [
        "strategy 'SP500 Trend XGB' has no Models row; add one with this Strategy Name or with a blank "
        "Strategy Name"]


def test_second_row_for_a_strategy_is_an_error(paths):
    edit(paths[STRATEGY], "Models", {"A3": "SP500 Momentum RF"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Models", "A3")[0].startswith("a second Models row for strategy 'SP500 Momentum RF'")


def test_risk_without_portfolio_is_an_error(paths):
    delete_rows(paths[PORTFOLIO], "Portfolio", 2)

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Risk", "A2")[0].startswith("this Risk row applies to strategy 'SP500 Momentum RF'")


def test_parameter_set_twice_is_an_error(paths):
    edit(paths[INDICATORS], "Parameters", {"A3": "macd", "B3": "fastperiod", "C3": 10})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Parameters", "B3") == [
        "parameter 'fastperiod' is also set in the Parameters cell Indicators!E3; set it in one place"]


def test_unknown_indicator_reference_is_an_error(paths):
    edit(paths[INDICATORS], "Thresholds", {"A2": "stoch"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Thresholds", "A2")[0].startswith("Indicator Name 'stoch' matches no Indicators row")


# --- rule violations mapped back to cells ----------------------------------------------


def test_split_rule_points_at_train_split_cell(paths):
    edit(paths[STRATEGY], "Features", {"D2": 0.5})

    _, problems = jobs_from_workbooks(paths)

    messages = messages_at(problems, "Features", "D2")
    assert messages[0].startswith("Train Split Ratio 0.5: train + validation split is 0.65")
    assert messages[0].endswith("(for strategies 'SP500 Momentum RF', 'SP500 Trend XGB')")


def test_unknown_feature_points_at_feature_columns_cell(paths):
    edit(paths[STRATEGY], "Features", {"C3": "atr, rsi, momentum"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Features", "C3")[0].startswith(
        "Feature Columns 'atr, rsi, momentum': unknown feature 'momentum'")


def test_unknown_parameter_points_at_parameters_row(paths):
    edit(paths[INDICATORS], "Parameters", {"B2": "period"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Parameters", "B2") == [
        "Parameter 'period': RSI has no parameter 'period'; its parameters are: timeperiod"]


def test_unknown_output_points_at_output_cell(paths):
    edit(paths[INDICATORS], "Indicators", {"L3": "histogram"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Indicators", "L3") == [
        "Output 'histogram': MACD has outputs macd, macdsignal, macdhist"]


def test_unknown_calculation_method_points_at_its_cell(paths):
    edit(paths[INDICATORS], "Indicators", {"D6": "ATRX"})

    _, problems = jobs_from_workbooks(paths)

    assert len(messages_at(problems, "Indicators", "D6")) == 1


def test_search_method_without_space_points_at_search_space(paths):
    edit(paths[STRATEGY], "Models", {"H3": None})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Models", "H3")[0].startswith("Search Space (blank): RANDOM_SEARCH needs a search space")


def test_gpu_enabled_needs_gpus(paths):
    edit(paths[STRATEGY], "Models", {"P2": True, "Q2": 0})

    _, problems = jobs_from_workbooks(paths)

    assert len(messages_at(problems, "Models", "Q2")) == 1


def test_gpu_enabled_with_gpus_is_valid(paths):
    edit(paths[STRATEGY], "Models", {"P2": True, "Q2": 1})

    spec = jobs_by_name(paths)["sp500-momentum-rf"]

    assert (spec.training.gpu_enabled, spec.resources.gpus_per_node) == (True, 1)


def test_rules_run_when_strategy_row_is_invalid(paths):
    edit(paths[STRATEGY], "Strategy", {"G2": 1.5})
    edit(paths[STRATEGY], "Features", {"D2": 0.5})

    _, problems = jobs_from_workbooks(paths)

    assert len(messages_at(problems, "Strategy", "G2")) == 1
    assert len(messages_at(problems, "Features", "D2")) == 1


def test_rules_run_beside_invalid_cells(paths):
    edit(paths[STRATEGY], "Features", {"C2": "rsi, nosuch", "D2": "abc"})
    edit(paths[STRATEGY], "Models", {"C2": "many"})
    edit(paths[INDICATORS], "Indicators", {"D2": "RSX", "F2": "x"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Features", "C2")[0].startswith("Feature Columns 'rsi, nosuch': unknown feature 'nosuch'")
    assert messages_at(problems, "Indicators", "D2")[0].startswith("Calculation Method 'RSX': unknown calculation method")
    assert len(messages_at(problems, "Features", "D2")) == 1
    assert len(messages_at(problems, "Models", "C2")) == 1
    assert len(messages_at(problems, "Indicators", "F2")) == 1


def test_rule_on_invalid_cell_is_not_repeated(paths):
    edit(paths[STRATEGY], "Features", {"D2": "abc", "E2": 0.5})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Features", "D2") == [
        "Train Split Ratio 'abc' is not a number; write a number above 0 and below 1"]
    assert messages_at(problems, "Features", "E2") == []


def test_parameters_are_checked_beside_invalid_cells(paths):
    edit(paths[INDICATORS], "Indicators", {"F2": "x"})
    edit(paths[INDICATORS], "Parameters", {"B2": "period"})

    _, problems = jobs_from_workbooks(paths)

    assert messages_at(problems, "Parameters", "B2") == [
        "Parameter 'period': RSI has no parameter 'period'; its parameters are: timeperiod"]


def test_shared_row_problem_is_reported_once(paths):
    edit(paths[INDICATORS], "Indicators", {"F2": 999})

    _, problems = jobs_from_workbooks(paths)

    assert len(messages_at(problems, "Indicators", "F2")) == 1


# --- YAML --------------------------------------------------------------------------


def test_yaml_holds_a_valid_mltrainingjob(paths):
    jobs, _ = jobs_from_workbooks(paths)
    document = yaml.safe_load(render_documents(jobs, paths, "trading")["sp500-momentum-rf.yaml"])

    assert document["apiVersion"] == "quanttrain.io/v1alpha1"
    assert document["kind"] == "MLTrainingJob"
    assert document["metadata"]["namespace"] == "trading"
    assert document["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "quanttrain"}
    assert MLTrainingJobSpec.model_validate(document["spec"]) == jobs[0].spec


def test_yaml_annotations_keep_name_and_file_names(paths):
    jobs, _ = jobs_from_workbooks(paths)
    document = yaml.safe_load(render_documents(jobs, paths)["sp500-momentum-rf.yaml"])

    assert document["metadata"]["annotations"] == {
        "quanttrain.io/source": "ML_CONFIG_INDICATORS_1.0.0.xlsx, ML_CONFIG_PORTFOLIO_1.0.0.xlsx, "
                                "ML_CONFIG_STRATEGY_1.0.0.xlsx",
        "quanttrain.io/strategy-name": "SP500 Momentum RF",
    }


def test_reconversion_is_byte_identical(paths, tmp_path):
    jobs, _ = jobs_from_workbooks(paths)
    write_documents(tmp_path / "a", render_documents(jobs, paths), paths)
    again, _ = jobs_from_workbooks(list(reversed(paths)))
    write_documents(tmp_path / "b", render_documents(again, list(reversed(paths))), paths)

    first = {path.name: path.read_bytes() for path in (tmp_path / "a").iterdir()}
    second = {path.name: path.read_bytes() for path in (tmp_path / "b").iterdir()}
    assert first == second


def test_unicode_name_is_kept_in_yaml(paths):
    edit(paths[STRATEGY], "Strategy", {"A2": "Über Momentum"})
    edit(paths[STRATEGY], "Models", {"A2": "Über Momentum"})

    jobs, problems = jobs_from_workbooks(paths)
    text = render_documents(jobs, paths)["uber-momentum.yaml"]

    assert problems == []
    assert "quanttrain.io/strategy-name: Über Momentum" in text


# --- --check -----------------------------------------------------------------------


@pytest.fixture
def converted(paths, tmp_path):
    jobs, _ = jobs_from_workbooks(paths)
    output = tmp_path / "jobs"
    write_documents(output, render_documents(jobs, paths), paths)
    return output


def current_diff(paths, output):
    jobs, problems = jobs_from_workbooks(paths)
    assert problems == []
    return diff_documents(output, render_documents(jobs, paths), paths)


def test_check_is_clean_after_convert(paths, converted):
    assert current_diff(paths, converted) == ""


def test_check_shows_changed_value(paths, converted):
    edit(paths[STRATEGY], "Strategy", {"G2": 0.6})

    diff = current_diff(paths, converted)

    assert "-    confidenceThreshold: 0.55\n+    confidenceThreshold: 0.6\n" in diff


def test_check_shows_missing_file(paths, converted):
    (converted / "sp500-trend-xgb.yaml").unlink()

    assert "+++ " + str(converted / "sp500-trend-xgb.yaml") in current_diff(paths, converted)


def test_check_shows_stale_file(paths, converted):
    delete_rows(paths[STRATEGY], "Strategy", 3)
    delete_rows(paths[STRATEGY], "Models", 3)

    diff = current_diff(paths, converted)

    assert "--- " + str(converted / "sp500-trend-xgb.yaml") in diff
    assert "+++ /dev/null" in diff


def test_convert_removes_stale_file_and_keeps_others(paths, converted):
    (converted / "hand-written.yaml").write_text("kind: ConfigMap\n")
    delete_rows(paths[STRATEGY], "Strategy", 3)
    delete_rows(paths[STRATEGY], "Models", 3)
    jobs, _ = jobs_from_workbooks(paths)

    outcome = write_documents(converted, render_documents(jobs, paths), paths)

    assert outcome["sp500-trend-xgb.yaml"] == "removed"
    assert (converted / "hand-written.yaml").exists()


# --- job inputs --------------------------------------------------------------------


def test_job_inputs_read_workbooks_and_yaml(paths, converted):
    from_workbooks = load_job_specs(paths)
    from_yaml = load_job_specs([str(converted / "sp500-momentum-rf.yaml")])

    assert len(from_workbooks) == 4
    assert from_yaml == [from_workbooks[0]]


def test_job_inputs_report_field_paths(tmp_path, converted):
    document = yaml.safe_load((converted / "sp500-momentum-rf.yaml").read_text())
    document["spec"]["features"]["trainSplitRatio"] = 0.5
    document["spec"]["strategy"]["confidenceThreshold"] = 2
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(document))

    with pytest.raises(InputError) as caught:
        load_job_specs([str(job)])

    lines = str(caught.value).splitlines()[1:]
    assert lines[0].startswith(f"{job}: spec.strategy.confidenceThreshold: Input should be less than or equal to 0.99")
    assert len(lines) == 1  # cross-field rules wait until every field is valid


def test_job_inputs_report_rule_violations(tmp_path, converted):
    document = yaml.safe_load((converted / "sp500-momentum-rf.yaml").read_text())
    document["spec"]["features"]["trainSplitRatio"] = 0.5
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(document))

    with pytest.raises(InputError) as caught:
        load_job_specs([str(job)])

    assert [f"{p.file}: {p.cell}" for p in caught.value.problems] == [f"{job}: spec.features.trainSplitRatio"]


def test_job_inputs_collect_problems_of_every_file(paths, tmp_path):
    edit(paths[STRATEGY], "Strategy", {"G2": 1.2})
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: MLTrainingJob\nspec: [unclosed\n")

    with pytest.raises(InputError) as caught:
        load_job_specs(paths + [str(broken)])

    files = [problem.file for problem in caught.value.problems]
    assert files == [paths[STRATEGY], str(broken)]


def test_job_inputs_reject_wrong_kind(tmp_path):
    job = tmp_path / "job.json"
    job.write_text('{"apiVersion": "v1", "kind": "ConfigMap", "spec": {}}')

    with pytest.raises(InputError) as caught:
        load_job_specs([str(job)])

    assert [problem.cell for problem in caught.value.problems][:2] == ["kind", "apiVersion"]
