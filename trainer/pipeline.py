"""The training pipeline that pods and ``quanttrain train`` run for one strategy.

Steps, in order:

1. load the bars (relative paths resolve against ``base_dir``, else the
   working directory) and build the feature rows and labels;
2. split them chronologically into train, validation and test segments, with
   the target's look-ahead purged between segments;
3. cross-validate on the training segment with walk-forward folds (gap of at
   least the look-ahead, training rows capped by Training Window) and search
   the hyperparameters within Max Training Time;
4. fit the final model with the best parameters on the newest Training Window
   rows that end the look-ahead before the test period (so it trains on the
   validation rows), and a second, overfitting-check model on the Training
   Window rows before the validation period;
5. evaluate the final model on the test segment (the overfitting-check model's
   predictions of the validation segment serve the overfitting check,
   permutation importance and the Kelly hit rate) and backtest the final
   model's signals;
6. apply the performance gate (Min Accuracy Threshold, Overfitting
   Detection);
7. register the model with its metadata, plots and full result, and write the
   result JSON to ``output_path``.

A model that fails the gate is still registered, with the gate's outcome in
its metadata, so that its metrics and plots can be inspected.  Training never
sets an alias, so such a model reaches ``production`` only when a user
promotes it.  The caller turns the failed gate into exit code 3.

A separate Validation Dataset or Test Dataset replaces that segment of the
split: its rows are featurised on their own and must come after the training
rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from quanttrain.trainer.checkpoint import remove_checkpoints
from quanttrain.trainer.config import ModelType, PredictionTarget, TrainingJobConfig
from quanttrain.trainer.summary import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    CrossValidation,
    Gate,
    ModelReference,
    TrainingSummary,
)

logger = logging.getLogger(__name__)


# Training accuracy for the overfitting check is measured on at most this many
# of the newest fit rows: its standard error stays below 0.002, and predicting
# half a million rows again would cost about a second.
TRAIN_ACCURACY_MAX_ROWS = 100_000


class JobInputError(Exception):
    """The job cannot run with this input (data, features, split or parameters); retrying will not help."""


@dataclasses.dataclass
class TrainingOutcome:
    """Outputs of one training run: summary, full result, baselines and where the model went."""

    summary: TrainingSummary
    result: dict[str, Any]
    baselines: dict[str, dict[str, float]]
    model: ModelReference | None
    version_path: Path | None
    result_path: Path | None

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.summary.gate.passed else EXIT_GATE_FAILED


class Progress:
    """Report each long step with its duration: on stderr with the elapsed time, or as log lines."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @contextlib.contextmanager
    def step(self, text: str):
        began = time.perf_counter()
        self._report(f"{text} ...")
        yield
        self._report(f"{text}: done in {time.perf_counter() - began:.1f} s")

    def _report(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.elapsed():7.1f} s] {text}", file=self.stream, flush=True)
        else:
            logger.info("%s", text)


@dataclasses.dataclass
class _Segment:
    """Rows of one role (fit, validation or test) with their bars."""

    X: Any
    y: np.ndarray
    rows: np.ndarray  # positions in the dataset the segment came from
    dataset: Any
    bars: Any


def resolve_path(path: str, base_dir: str | Path | None) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or base_dir is None:
        return candidate
    return Path(base_dir) / candidate


def config_sha256(config: TrainingJobConfig) -> str:
    """Hash the trainer's configuration (Kubernetes-only fields excluded) as canonical JSON."""
    payload = config.model_dump(mode="json", by_alias=True, exclude_none=True,
                                include=set(TrainingJobConfig.model_fields))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_job(
    config: TrainingJobConfig,
    *,
    registry_dir: str | Path,
    output_path: str | Path | None = None,
    base_dir: str | Path | None = None,
    progress: bool = True,
    strategy_key: str | None = None,
    write_results: bool = True,
) -> TrainingOutcome:
    """Train, evaluate, gate and register one strategy; see the module docstring for the steps.

    ``strategy_key`` names the strategy's folder in the registry (the
    MLTrainingJob's name); it defaults to the strategy name made a valid
    Kubernetes name.  With ``write_results`` false (ranks other than 0 of a
    distributed job) nothing is registered or written.

    Raises:
        JobInputError: the data, features, split or model parameters are
            invalid (the message names the file or the field path).
    """
    from quanttrain.operator.api import kubernetes_name

    run = _Run(config, Progress(progress), strategy_key or kubernetes_name(config.strategy.name), base_dir)
    # Every rank computes the folder, because all ranks must agree on whether to resume.
    run.checkpoint_dir = run.checkpoint_folder(Path(registry_dir))
    if not write_results:
        return run.execute(None, None)
    return run.execute(Path(registry_dir), Path(output_path) if output_path is not None else None)


class _Run:
    """One training run; each method is one step of the module docstring."""

    def __init__(self, config: TrainingJobConfig, progress: Progress, strategy_key: str, base_dir) -> None:
        self.config = config
        self.progress = progress
        self.strategy_key = strategy_key
        self.base_dir = base_dir
        self.started = time.perf_counter()
        self.checkpoint_dir: Path | None = None
        self.validation_probabilities: np.ndarray | None = None
        self.deadline = time.time() + config.training.max_training_time_minutes * 60

    def execute(self, registry_dir: Path | None, output_path: Path | None) -> TrainingOutcome | None:
        strategy = self.config.strategy
        logger.info("training %s (%s, %s) as %s", strategy.name, strategy.model_type.value,
                    strategy.prediction_target.value, self.strategy_key)
        if registry_dir is not None:
            # matplotlib takes about half a second to import.  The search and the fit release the
            # GIL for most of their time, so importing it in a thread hides that cost behind them.
            threading.Thread(target=_import_plotting, name="import-matplotlib", daemon=True).start()
        dataset, bars, data_facts = self.load()
        train, check, fit, validation, test, split_facts = self.split(dataset, bars)
        search = self.search(train, dataset, split_facts["trainingWindowRows"])
        model = self.fit(fit, search.best_params, dataset, "the final model", self.checkpoint_dir)
        if model is None:
            return None  # a torchrun rank other than 0 whose part ended with the search
        check_model = None
        if len(validation.y):
            check_dir = self.checkpoint_dir / "overfitting-check" if self.checkpoint_dir is not None else None
            check_model = self.fit(check, search.best_params, dataset, "the overfitting-check model", check_dir)
        report, test_probabilities = self.evaluate(model, check_model, fit, check, validation, test, search)
        backtest = self.backtest(model, validation, test, test_probabilities)
        if backtest is not None:
            report.evaluation.strategy_metrics = backtest.metrics
        gate = self.gate(report)
        if registry_dir is None:
            summary = self.summary(report, search, None, gate)
            result = self.result(summary, report, search, backtest, model, None, data_facts, split_facts)
            return TrainingOutcome(summary, result, report.baselines, None, None, None)

        from quanttrain.trainer.registry import ModelRegistry

        with self.progress.step(f"registering the model in {registry_dir}"):
            with ModelRegistry(registry_dir).new_version(self.strategy_key) as draft:
                reference = draft.save_model(model)
                # The folder holds only the model files here, so its size is the model's size on disk.
                summary = self.summary(report, search, reference, gate)
                result = self.result(summary, report, search, backtest, model, draft.path, data_facts, split_facts)
                self.plot(draft.path, report, test, test_probabilities, backtest)
                draft.write_json("result.json", _json_safe(result))
                draft.commit(self.metadata(report, search, gate, data_facts, dataset))
        if self.checkpoint_dir is not None:
            remove_checkpoints(self.checkpoint_dir)  # the model is registered; a new job must not resume
        result_path = self.write_output(output_path, result)
        return TrainingOutcome(summary, result, report.baselines, reference, draft.path, result_path)

    # -- 1. data ----------------------------------------------------------------

    def load(self):
        from quanttrain.trainer.data import DataError, file_sha256, load_bars

        path = resolve_path(self.config.strategy.training_dataset, self.base_dir)
        with self.progress.step(f"loading bars from {path}"):
            try:
                bars = load_bars(path)
                digest = file_sha256(path)
            except DataError as error:
                raise JobInputError(f"strategy.trainingDataset: {error}") from error
        with self.progress.step(f"computing features and the {self.config.strategy.prediction_target.value} target"):
            dataset = self._build(bars, "strategy.trainingDataset", path)
        facts = {
            "path": str(path), "sha256": digest, "bars": len(bars), "rows": len(dataset),
            "firstTimestamp": str(dataset.timestamps[0]), "lastTimestamp": str(dataset.timestamps[-1]),
            "intervalMinutes": dataset.interval_minutes, "horizonBars": dataset.horizon,
            "features": dataset.feature_names, "classes": dataset.classes,
        }
        return dataset, bars, facts

    def _build(self, bars, field: str, path: Path):
        from quanttrain.trainer.dataset import build_dataset
        from quanttrain.trainer.features import FeatureError
        from quanttrain.trainer.targets import TargetError

        try:
            return build_dataset(bars, self.config)
        except (FeatureError, TargetError) as error:
            raise JobInputError(f"{field} ({path}): {error}") from error

    # -- 2. split ---------------------------------------------------------------

    def split(self, dataset, bars):
        from quanttrain.trainer.splits import SplitError, chronological_split, max_train_rows

        features = self.config.features
        try:
            indices = chronological_split(len(dataset), features.train_split_ratio,
                                          features.validation_split_ratio, gap=dataset.horizon)
        except SplitError as error:
            raise JobInputError(f"features.trainSplitRatio: {error}") from error

        window = max_train_rows(dataset.timestamps[indices.train], self.config.strategy.training_window_days)
        check = self._segment(dataset, bars, indices.train[-window:])
        validation = self._separate_or(features.validation_dataset, "features.validationDataset",
                                       self._segment(dataset, bars, indices.validation), check)
        # The final model trains on the newest Training Window before the test period. Its last
        # label ends before the first test bar, or at the end of the training file when the test
        # rows come from a file of their own.
        separate_test = bool(features.test_dataset)
        end = len(dataset) if separate_test or not indices.test.size else int(indices.test[0]) - dataset.horizon
        fit = self._segment(dataset, bars, np.arange(max(0, end - window), end))
        test = self._separate_or(features.test_dataset, "features.testDataset",
                                 self._segment(dataset, bars, indices.test), fit)
        if len(test.y) == 0:
            raise JobInputError("features.validationSplitRatio: no test rows are left; lower a ratio or set Test Dataset")
        facts = {
            "gapRows": dataset.horizon, "trainingWindowRows": int(window), "trainRows": int(indices.train.size),
            "fitRows": len(fit.y), "overfittingCheckRows": len(check.y), "validationRows": len(validation.y),
            "testRows": len(test.y), "fitPeriod": _period(fit), "overfittingCheckPeriod": _period(check),
            "validationPeriod": _period(validation), "testPeriod": _period(test),
        }
        logger.info("split: %s", facts)
        return self._segment(dataset, bars, indices.train), check, fit, validation, test, facts

    @staticmethod
    def _segment(dataset, bars, rows: np.ndarray) -> _Segment:
        return _Segment(dataset.X.iloc[rows], dataset.y[rows], rows, dataset, bars)

    def _separate_or(self, path_text: str | None, field: str, default: _Segment, fit: _Segment) -> _Segment:
        """Load a separate Validation or Test Dataset when one is set; it must start after the ``fit`` rows."""
        from quanttrain.trainer.data import DataError, load_bars

        if not path_text:
            return default
        path = resolve_path(path_text, self.base_dir)
        try:
            bars = load_bars(path)
        except DataError as error:
            raise JobInputError(f"{field}: {error}") from error
        dataset = self._build(bars, field, path)
        if dataset.timestamps[0] <= fit.dataset.timestamps[fit.rows[-1]]:
            raise JobInputError(
                f"{field}: {path} starts at {dataset.timestamps[0]}, before the last training row "
                f"({fit.dataset.timestamps[fit.rows[-1]]}); its rows must come after the training data"
            )
        return self._segment(dataset, bars, np.arange(len(dataset)))

    # -- 3. search --------------------------------------------------------------

    def estimator_factory(self, dataset):
        from quanttrain.trainer.features import make_feature_scaler
        from quanttrain.trainer.models import make_estimator

        def build(params: dict[str, Any] | None = None):
            # Early stopping drops the label look-ahead between its training and evaluation rows.
            return make_estimator(self.config, params, n_classes=len(dataset.classes),
                                  preprocessor=make_feature_scaler(self.config, dataset.feature_names),
                                  validation_gap=dataset.horizon)

        return build

    def search(self, train: _Segment, dataset, window_rows: int):
        from quanttrain.trainer.distributed_search import run_distributed_search
        from quanttrain.trainer.search import SearchError
        from quanttrain.trainer.splits import SplitError, WalkForwardSplit

        training = self.config.training
        factory = self.estimator_factory(dataset)
        try:
            factory()  # checks Model Parameters before any trial runs
        except ValueError as error:
            raise JobInputError(str(error)) from error
        # Each fold, like the final fit, trains on at most Training Window of history.
        cv = WalkForwardSplit(training.cv_folds, gap=dataset.horizon, max_train_size=window_rows)
        label = f"{training.hyperparameter_optimization.value} search with {training.cv_folds} walk-forward folds"
        with self.progress.step(label):
            try:
                # Outside torchrun this is run_search; under torchrun the trials spread over the ranks.
                return run_distributed_search(self.config, train.X, train.y, cv=cv, estimator_factory=factory,
                                              deadline=self.deadline)
            except SplitError as error:
                raise JobInputError(f"training.cvFolds: {error}") from error
            except (SearchError, ValueError) as error:
                message = str(error)
                # Most search errors already name their field (training.searchSpace.C: ...).
                raise JobInputError(message if message.startswith("training.") else
                                    f"training.searchSpace: {message}") from error

    # -- 4. fit -----------------------------------------------------------------

    def fit(self, fit: _Segment, params: dict[str, Any], dataset, role: str, checkpoint_dir: Path | None):
        """Fit ``role`` (the final or the overfitting-check model) on the ``fit`` rows; None on ranks without a part."""
        from quanttrain.trainer import distributed

        estimator = self.estimator_factory(dataset)(params)
        # ddp_lstm imports torch (a second or more), which only the LSTM and torchrun jobs need;
        # for any other model outside torchrun prepare_final_fit returns the pipeline unchanged.
        if self.config.strategy.model_type is ModelType.LSTM or distributed.current_context().is_distributed:
            from quanttrain.trainer.ddp_lstm import prepare_final_fit

            estimator = prepare_final_fit(estimator, checkpoint_dir)
        if estimator is None:
            return None  # under torchrun, models other than the LSTM train on rank 0 alone
        first, last = _period(fit)
        label = (f"fitting {role} on {len(fit.y)} rows from {first} to {last} "
                 f"with {params or 'default parameters'}")
        with self.progress.step(label):
            return estimator.fit(fit.X, fit.y)

    def checkpoint_folder(self, registry_dir: Path) -> Path | None:
        """Return the LSTM's checkpoint folder on the registry volume when Checkpoint is on, else None."""
        if not self.config.training.checkpoint:
            return None
        from quanttrain.trainer.ddp_lstm import checkpoint_directory

        return checkpoint_directory(registry_dir, self.strategy_key, config_sha256(self.config))

    # -- 5. evaluation and backtest ----------------------------------------------

    def evaluate(self, model, check_model, fit: _Segment, check: _Segment, validation: _Segment, test: _Segment,
                 search):
        from quanttrain.trainer.evaluation import evaluate, persistence_labels

        strategy = self.config.strategy
        # Without validation rows there is no overfitting-check model, and the final model's own fit rows
        # give the training accuracy.
        check_rows = check if check_model is not None else fit
        with self.progress.step(f"evaluating on {len(test.y)} test rows"):
            probabilities = self.predict(model, test)
            # Kept for the backtest's Kelly hit rate, so the validation rows are predicted once.
            self.validation_probabilities = self.predict(check_model, validation) if check_model is not None else None
            report = evaluate(
                model, test.X, test.y, test.dataset.classes,
                confidence_threshold=strategy.confidence_threshold,
                # The newest label known at row t is that of row t - lookahead (20 bars for VOLATILITY).
                known_labels=persistence_labels(test.dataset.y, test.rows, test.dataset.horizon),
                train_data=(check_rows.X.iloc[-TRAIN_ACCURACY_MAX_ROWS:], check_rows.y[-TRAIN_ACCURACY_MAX_ROWS:]),
                majority_labels=fit.y,
                validation_data=(validation.X, validation.y) if len(validation.y) else None,
                overfitting_detection=self.config.training.overfitting_detection,
                feature_names=fit.dataset.feature_names,
                cross_validation=_cross_validation(search),
                random_seed=self.config.training.random_seed,
                probabilities=probabilities,
                validation_probabilities=self.validation_probabilities,
                check_estimator=check_model,
            )
        return report, probabilities

    def predict(self, model, segment: _Segment) -> np.ndarray:
        """Predict a segment's rows; a sequence model also gets the rows before them as history."""
        from quanttrain.trainer.evaluation import predict_probabilities

        context = 0
        if self.config.strategy.model_type is ModelType.LSTM:
            context = self.config.strategy.feature_configuration.sequence_length - 1
        first = max(0, int(segment.rows[0]) - context) if len(segment.rows) else 0
        rows = np.arange(first, int(segment.rows[-1]) + 1) if len(segment.rows) else segment.rows
        probabilities = predict_probabilities(model, segment.dataset.X.iloc[rows], len(segment.dataset.classes))
        return probabilities[len(rows) - len(segment.rows):]

    def backtest(self, model, validation: _Segment, test: _Segment, probabilities: np.ndarray):
        from quanttrain.trainer import backtest

        portfolio = self.config.portfolio
        target = self.config.strategy.prediction_target
        if portfolio is None or target is PredictionTarget.VOLATILITY:
            logger.info("no strategy metrics: %s", "no portfolio" if portfolio is None else "a VOLATILITY target has no direction")
            return None
        threshold = self.config.strategy.confidence_threshold
        classes = test.dataset.classes
        hit_rate = None
        if self.validation_probabilities is not None:
            hit_rate = backtest.signal_hit_rate(self.validation_probabilities, validation.y, classes, target, threshold)
        direction, confidence = backtest.signals(probabilities, classes, target, threshold)
        bars = test.bars.loc[test.dataset.timestamps[test.rows]]
        path = backtest.PricePath(
            close=bars["close"].to_numpy(), high=bars["high"].to_numpy(), low=bars["low"].to_numpy(),
            open=bars["open"].to_numpy(), timestamps=bars.index.to_numpy(),
        )
        with self.progress.step(f"backtesting {portfolio.position_sizing.value} sizing over the test period"):
            return backtest.backtest(path, direction, confidence, portfolio, threshold=threshold,
                                     interval_minutes=test.dataset.interval_minutes, validation_hit_rate=hit_rate)

    # -- 6. gate ----------------------------------------------------------------

    def gate(self, report) -> Gate:
        training = self.config.training
        evaluation = report.evaluation
        reasons = []
        if evaluation.accuracy < training.min_accuracy_threshold:
            reasons.append(f"test accuracy {evaluation.accuracy:.4f} is below Min Accuracy Threshold "
                           f"{training.min_accuracy_threshold:.4f}")
        overfitting = report.overfitting
        if overfitting.failed:
            reasons.append(f"training accuracy {overfitting.train_accuracy:.4f} exceeds validation accuracy "
                           f"{overfitting.validation_accuracy:.4f} by {overfitting.gap:.4f}, more than 0.1 "
                           "(Overfitting Detection)")
        return Gate(passed=not reasons, reasons=reasons)

    # -- 7. results -------------------------------------------------------------

    def summary(self, report, search, reference: ModelReference | None, gate: Gate) -> TrainingSummary:
        evaluation = report.evaluation
        text = (f"accuracy {evaluation.accuracy:.4f} (majority baseline {evaluation.baseline_accuracy:.4f}), "
                f"F1 {evaluation.f1_score:.4f}")
        text += "; gate passed" if gate.passed else "; gate failed: " + "; ".join(gate.reasons)
        return TrainingSummary(
            strategy=self.config.strategy.name,
            model_type=self.config.strategy.model_type.value,
            evaluation=evaluation,
            best_hyperparameters=search.best_params,
            model=reference,
            gate=gate,
            duration_seconds=round(time.perf_counter() - self.started, 3),
            message=text,
        )

    def result(self, summary, report, search, backtest, model, version_path, data_facts, split_facts) -> dict:
        from quanttrain.trainer.models import model_complexity

        return {
            "strategy": self.config.strategy.name,
            "strategyKey": self.strategy_key,
            "modelType": self.config.strategy.model_type.value,
            "configSha256": config_sha256(self.config),
            "config": self.config.to_spec(),
            "data": data_facts,
            "split": split_facts,
            "search": search.to_dict(),
            **report.to_dict(),
            "complexity": model_complexity(model, version_path),
            "backtest": backtest.to_dict() if backtest is not None else None,
            "summary": summary.to_spec(),
        }

    def metadata(self, report, search, gate: Gate, data_facts, dataset) -> dict[str, Any]:
        return {
            "strategyName": self.config.strategy.name,
            "modelPath": self.config.strategy.model_path,
            "modelType": self.config.strategy.model_type.value,
            "predictionTarget": self.config.strategy.prediction_target.value,
            "configSha256": config_sha256(self.config),
            "data": {key: data_facts[key] for key in ("path", "sha256", "bars", "rows", "firstTimestamp", "lastTimestamp")},
            "features": dataset.feature_names,
            "classes": dataset.classes,
            "metrics": report.evaluation.to_spec(),
            "bestParameters": search.best_params,
            "gate": gate.to_spec(),
        }

    def plot(self, folder: Path, report, test: _Segment, probabilities, backtest) -> None:
        from quanttrain.trainer import plots

        evaluation = report.evaluation
        plots.plot_confusion_matrix(evaluation.confusion_matrix, evaluation.classes, folder / plots.CONFUSION_MATRIX_FILE)
        if len(evaluation.classes) == 2 and evaluation.roc_auc is not None:
            plots.plot_roc_curve(test.y, probabilities[:, 1], evaluation.roc_auc, folder / plots.ROC_CURVE_FILE)
        if backtest is not None:
            timestamps = test.dataset.timestamps[test.rows]
            plots.plot_equity_curve(timestamps, backtest.equity, folder / plots.EQUITY_CURVE_FILE)

    @staticmethod
    def write_output(output_path: Path | None, result: dict) -> Path | None:
        if output_path is None:
            return None
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return output_path


def _import_plotting() -> None:
    try:
        from quanttrain.trainer import plots

        plots.import_matplotlib()
    except Exception:  # noqa: BLE001 - the plots step imports it again and reports any error there
        logger.debug("importing matplotlib ahead of the plots failed", exc_info=True)


def _period(segment: _Segment) -> list[str] | None:
    if not len(segment.rows):
        return None
    stamps = segment.dataset.timestamps
    return [str(stamps[segment.rows[0]]), str(stamps[segment.rows[-1]])]


def _cross_validation(search) -> CrossValidation | None:
    """Fold scores of the best trial; folds where the metric is undefined are left out."""
    scores = [score for score in search.best_fold_scores if not math.isnan(score)]
    if not scores:
        return None
    return CrossValidation(metric=search.metric, scores=scores, mean=float(np.mean(scores)), std=float(np.std(scores)))


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None and numpy values by Python ones, for strict JSON."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
