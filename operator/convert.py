"""Join the rows of every sheet into one MLTrainingJob per Strategy row, and write them as YAML.

Linking rules: a row on any sheet but Strategy names its strategy in Strategy
Name, and a row on Parameters and Thresholds names its indicator.  A blank
Strategy Name applies the row to every strategy.  On the one-row-per-strategy sheets
(Models, Features, Portfolio, Risk) a row naming the strategy wins over a
blank one; on Indicators and Allocation a strategy takes its own rows plus the
blank ones.  Rules across fields (``rule_violations``) report field paths,
which are mapped back to the cell that holds the field.

Output is deterministic (no timestamps, fixed key order) so that re-running
the conversion on unchanged workbooks gives byte-identical files, and nothing
is written unless every workbook is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quanttrain.operator.api import MLTrainingJobSpec, build_resource, kubernetes_name
from quanttrain.operator.excel_reader import Problem, Reading, Row, read_workbooks, show
from quanttrain.operator.workbook import Link, normalize_header, sheet
from quanttrain.trainer.config import Violation, rule_violations, violations_from_validation_error

STRATEGY_ANNOTATION = "quanttrain.io/strategy-name"
SOURCE_ANNOTATION = "quanttrain.io/source"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "quanttrain"
# Wide enough that no generated line is folded, so diffs stay one line per change.
YAML_WIDTH = 1 << 20

Path_ = tuple[str | int, ...]
CellMap = dict[Path_, tuple[Row, str]]


@dataclasses.dataclass
class StrategyJob:
    """One converted strategy: its Kubernetes name, its spec and its Strategy row."""

    name: str
    spec: MLTrainingJobSpec
    row: Row


def spec_rule_violations(spec: MLTrainingJobSpec) -> list[Violation]:
    """Check the trainer's cross-field rules plus those involving the Kubernetes fields."""
    found = rule_violations(spec)
    if spec.training.gpu_enabled and spec.resources.gpus_per_node < 1:
        found.append(Violation(
            ("resources", "gpusPerNode"), spec.resources.gpus_per_node,
            "GPU Enabled (training.gpuEnabled) is TRUE, so GPUs Per Node (resources.gpusPerNode) "
            "must be at least 1; raise it or set GPU Enabled to FALSE",
        ))
    return found


# --- joining rows ------------------------------------------------------------------


class _Join:
    """Link the rows of a reading to its strategies, collecting every problem on the way."""

    def __init__(self, reading: Reading) -> None:
        self.reading = reading
        self.problems: list[Problem] = []
        self.reported_cells = {(problem.file, problem.sheet, problem.cell) for problem in reading.problems}
        # Rule problems on rows shared by several strategies, with the strategies they break.
        self.shared: dict[tuple[str, str, str, str], tuple[Problem, list[str]]] = {}

    def is_usable(self, row: Row, key: str) -> bool:
        """Tell whether a cell was read and validated without a problem."""
        return key in row.values and (row.file, row.title, row.ref(key)) not in self.reported_cells

    def add_shared(self, problem: Problem, strategy: str) -> None:
        key = (problem.file, problem.sheet, problem.cell, problem.message)
        if key not in self.shared:
            self.shared[key] = (problem, [])
            self.problems.append(problem)  # a placeholder, replaced in all_problems()
        self.shared[key][1].append(strategy)

    def all_problems(self, strategy_count: int) -> list[Problem]:
        """Return every problem; a shared row's rule problem names the strategies it breaks, unless all."""
        named = {}
        for problem, strategies in self.shared.values():
            if len(strategies) == strategy_count:
                continue
            noun = "strategy" if len(strategies) == 1 else "strategies"
            names = ", ".join(show(name) for name in strategies)
            named[id(problem)] = dataclasses.replace(problem, message=f"{problem.message} (for {noun} {names})")
        return _unique([named.get(id(problem), problem) for problem in self.problems])

    def strategies(self) -> dict[str, Row]:
        """Return Strategy rows by normalised name; report duplicate names and Kubernetes names."""
        by_key: dict[str, Row] = {}
        by_kubernetes_name: dict[str, Row] = {}
        for row in self.reading.rows("strategy"):
            name = row.values.get("strategy name")
            if not isinstance(name, str):
                continue
            key = normalize_header(name)
            if key in by_key:
                first = by_key[key]
                self.problems.append(row.problem("strategy name", (
                    f"Strategy Name {show(name)} is already used at {first.title}!{first.ref('strategy name')}; "
                    "strategy names must be unique (case is ignored)")))
                continue
            derived = kubernetes_name(name)
            if derived in by_kubernetes_name:
                first = by_kubernetes_name[derived]
                self.problems.append(row.problem("strategy name", (
                    f"Strategy Name {show(name)} gives the Kubernetes name {derived!r}, as does "
                    f"{show(first.values['strategy name'])} at {first.title}!{first.ref('strategy name')}; "
                    "rename one of them")))
                continue
            by_key[key] = row
            by_kubernetes_name[derived] = row
        return by_key

    def check_links(self, strategy_keys: set[str]) -> None:
        """Report every row that names a strategy with no Strategy row."""
        # A repeated name is reported on its own row, so it is listed once, as first written.
        first_names: dict[str, str] = {}
        for row in self.reading.rows("strategy"):
            name = row.values.get("strategy name")
            if isinstance(name, str):
                first_names.setdefault(normalize_header(name), name)
        names = ", ".join(repr(name) for name in first_names.values())
        for sheet_ in (s for s in self.reading.sheets.values() if s.sheet.link is Link.STRATEGY):
            for row in sheet_.rows:
                if row.link() and row.link() not in strategy_keys:
                    self.problems.append(row.problem("strategy name", (
                        f"Strategy Name {show(row.raw['strategy name'])} matches no Strategy row; "
                        f"use one of: {names or 'none (the Strategy sheet has no rows)'}, or leave it blank "
                        "to apply the row to every strategy")))

    def single_rows(self, sheet_key: str, keys: Sequence[str]) -> dict[str, Row | None]:
        """Pick each strategy's row of a one-row-per-strategy sheet: its own, else the blank one."""
        link_key = sheet(sheet_key).columns[0].key
        specific: dict[str, Row] = {}
        shared: Row | None = None
        for row in self.reading.rows(sheet_key):
            link = row.link()
            first = specific.get(link) if link else shared
            if first is not None:
                whose = f"strategy {show(row.raw[link_key])}" if link else "every strategy (blank Strategy Name)"
                self.problems.append(row.problem(link_key, (
                    f"a second {row.sheet.name} row for {whose}; the first is row {first.number}; "
                    "keep one row per strategy")))
            elif link:
                specific[link] = row
            else:
                shared = row
        return {key: specific.get(key, shared) for key in keys}

    def multiple_rows(self, sheet_key: str, key: str) -> list[Row]:
        return [row for row in self.reading.rows(sheet_key) if row.link() in ("", key)]


def _indicator_key(row: Row) -> str:
    name = row.values.get("indicator name")
    return normalize_header(name) if isinstance(name, str) else ""


@dataclasses.dataclass
class _IndicatorExtras:
    """Parameters and Thresholds rows by normalised indicator name."""

    parameters: dict[str, list[Row]]
    thresholds: dict[str, Row | None]


def _indicator_extras(join: _Join) -> _IndicatorExtras:
    known = {_indicator_key(row) for row in join.reading.rows("indicators")}
    listed = ", ".join(sorted({repr(row.values["indicator name"]) for row in join.reading.rows("indicators")
                               if "indicator name" in row.values})) or "none"
    extras = _IndicatorExtras(parameters={}, thresholds={})
    seen_parameters: dict[tuple[str, str], Row] = {}
    for row in join.reading.rows("parameters") + join.reading.rows("thresholds"):
        key = _indicator_key(row)
        if key and key not in known:
            join.problems.append(row.problem("indicator name", (
                f"Indicator Name {show(row.raw['indicator name'])} matches no Indicators row; use one of: {listed}")))
            continue
        if row.sheet.key == "thresholds":
            if key in extras.thresholds:
                join.problems.append(row.problem("indicator name", (
                    f"a second Thresholds row for indicator {show(row.raw['indicator name'])}; "
                    f"the first is row {extras.thresholds[key].number}; keep one")))
                continue
            extras.thresholds[key] = row
            continue
        parameter = str(row.values.get("parameter", ""))
        first = seen_parameters.get((key, parameter))
        if first is not None:
            join.problems.append(row.problem("parameter", (
                f"parameter {parameter!r} of indicator {show(row.raw['indicator name'])} is already set on "
                f"row {first.number}; keep one")))
            continue
        seen_parameters[(key, parameter)] = row
        extras.parameters.setdefault(key, []).append(row)
    return extras


# --- building one strategy ---------------------------------------------------------


def _map_cells(cells: CellMap, prefix: Path_, row: Row) -> None:
    for column in row.sheet.columns:
        if column.field is not None and column.key in row.cells:
            cells[prefix + column.path] = (row, column.key)


# Valid values for the required fields of each sheet's model.  They stand in for cells
# with problems, so that the cross-field rules can still check the other cells; a rule
# that reads a stand-in is not reported.
_STAND_INS: dict[str, dict[str, Any]] = {
    "StrategySettings": {
        "name": "stand-in", "model_type": "RANDOM_FOREST", "prediction_target": "PRICE_DIRECTION",
        "training_dataset": "-", "model_path": "-", "confidence_threshold": 0.5,
        "training_window_days": 30, "prediction_horizon_minutes": 1,
    },
    "FeatureSettings": {"target_variable": "direction", "feature_columns": ["close"],
                        "train_split_ratio": 0.7, "validation_split_ratio": 0.15},
    "PortfolioSettings": {"name": "stand-in"},
    "AllocationEntry": {"symbol": "-", "weight": 0.0},
    "IndicatorSettings": {"name": "stand-in", "type": "TECHNICAL", "calculation_method": "RSI"},
}


def _rule_inputs(path: Path_, spec: MLTrainingJobSpec) -> list[Path_] | None:
    """Return the fields that the cross-field rule behind a violation at ``path`` reads.

    None means the rule is not listed here, so it is trusted only when every
    field of the strategy came from a valid cell.
    """
    # NOTE: mirrors the rules of trainer.config.rule_violations and spec_rule_violations; a rule
    # added there stays silent beside invalid cells until it is listed here.
    names: list[Path_] = [("indicators", index, "name") for index in range(len(spec.indicators))]
    match path:
        case ("features", "trainSplitRatio" | "validationSplitRatio"):
            return [("features", "trainSplitRatio"), ("features", "validationSplitRatio"),
                    ("features", "testDataset")]
        case ("features", "featureColumns", *_):
            return [("features", "featureColumns"), *names]
        case ("indicators", int(), "name"):
            return names
        case ("indicators", int() as index, "calculationMethod"):
            return [("indicators", index, "calculationMethod")]
        case ("indicators", int() as index, "parameters" | "output" as field, *_):
            return [("indicators", index, "calculationMethod"), ("indicators", index, field)]
        case ("training", "searchSpace", *_):
            return [("training", "hyperparameterOptimization"), ("training", "searchSpace")]
        case ("portfolio", "allocation"):
            return [("portfolio", "allocation")]
        case ("resources", "gpusPerNode"):
            return [("training", "gpuEnabled"), ("resources", "gpusPerNode")]
    return None


def _overlaps(first: Path_, second: Path_) -> bool:
    shorter = min(len(first), len(second))
    return first[:shorter] == second[:shorter]


class _Builder:
    """Assemble one strategy's spec from its rows, remembering which cell fills which field."""

    def __init__(self, join: _Join, extras: _IndicatorExtras, strategy_row: Row) -> None:
        self.join = join
        self.extras = extras
        self.strategy_row = strategy_row
        self.cells: CellMap = {(): (strategy_row, "strategy name")}
        self.rows: list[Row] = [strategy_row]
        # Fields filled by a stand-in or a default because their cell has a problem.
        self.stand_ins: set[Path_] = set()

    def dump(self, row: Row, prefix: Path_, section: tuple[str, ...] = ()) -> dict[str, Any]:
        """Return a row's validated model as a dict, with stand-ins for the cells that have problems."""
        model = row.models.get(section)
        if model is not None:
            return model.model_dump()
        columns = [column for column in row.sheet.columns if column.model is not None and column.section == section]
        model_type = columns[0].model
        stand_in = _STAND_INS.get(model_type.__name__, {})
        usable = {column.field: row.values[column.key] for column in columns if self.join.is_usable(row, column.key)}
        self.stand_ins.update(prefix + column.path for column in columns if column.field not in usable)
        try:
            return model_type.model_validate({**stand_in, **usable}).model_dump()
        except ValidationError:
            # The cells are fine one by one but not together, so none of them is trusted.
            self.stand_ins.update(prefix + column.path for column in columns)
            return model_type.model_validate(stand_in).model_dump()

    def trusts(self, violation: Violation, spec: MLTrainingJobSpec) -> bool:
        """Tell whether a violation comes from cells without problems, so it is new to the user."""
        if not self.stand_ins:
            return True
        inputs = _rule_inputs(violation.path, spec)
        if inputs is None:
            return False
        return not any(_overlaps(field, stand_in) for field in inputs for stand_in in self.stand_ins)

    def indicators(self, rows: list[Row]) -> list[dict[str, Any]]:
        built = []
        for index, row in enumerate(rows):
            prefix: Path_ = ("indicators", index)
            _map_cells(self.cells, prefix, row)
            self.rows.append(row)
            indicator = self.dump(row, prefix)
            if not _indicator_key(row):
                # Without a readable name, no Parameters or Thresholds row can be matched to it.
                self.stand_ins.update({prefix + ("parameters",), prefix + ("thresholds",)})
                built.append(indicator)
                continue
            indicator["parameters"] = self._parameters(row, prefix, dict(indicator["parameters"]))
            threshold_row = self.extras.thresholds.get(_indicator_key(row))
            if threshold_row is not None:
                self.rows.append(threshold_row)
                _map_cells(self.cells, prefix + ("thresholds",), threshold_row)
                indicator["thresholds"] = self.dump(threshold_row, prefix + ("thresholds",))
            built.append(indicator)
        return built

    def _parameters(self, row: Row, prefix: Path_, merged: dict[str, Any]) -> dict[str, Any]:
        for parameter_row in self.extras.parameters.get(_indicator_key(row), []):
            self.rows.append(parameter_row)
            if not all(self.join.is_usable(parameter_row, key) for key in ("parameter", "value")):
                self.stand_ins.add(prefix + ("parameters",))
                continue
            name = str(parameter_row.values.get("parameter"))
            if name in merged:
                self.join.problems.append(parameter_row.problem("parameter", (
                    f"parameter {name!r} is also set in the Parameters cell {row.title}!{row.ref('parameters')}; "
                    "set it in one place")))
            merged[name] = parameter_row.values.get("value")
            self.cells[prefix + ("parameters", name)] = (parameter_row, "parameter")
        return merged

    def portfolio(self, row: Row | None, risk: Row | None, allocation: list[Row]) -> dict[str, Any] | None:
        if row is None:
            orphan = risk or (allocation[0] if allocation else None)
            if orphan is not None:
                self.join.problems.append(orphan.problem("strategy name", (
                    f"this {orphan.sheet.name} row applies to strategy {show(self.name)}, which has no Portfolio "
                    "row; add a Portfolio row for it")))
            return None
        self.rows.append(row)
        _map_cells(self.cells, ("portfolio",), row)
        portfolio = self.dump(row, ("portfolio",))
        if risk is not None:
            self.rows.append(risk)
            _map_cells(self.cells, ("portfolio", "risk"), risk)
            portfolio["risk"] = self.dump(risk, ("portfolio", "risk"))
        portfolio["allocation"] = []
        for index, entry in enumerate(allocation):
            self.rows.append(entry)
            _map_cells(self.cells, ("portfolio", "allocation", index), entry)
            self.cells.setdefault(("portfolio", "allocation"), (entry, "weight"))
            portfolio["allocation"].append(self.dump(entry, ("portfolio", "allocation", index)))
        return portfolio

    @property
    def name(self) -> str:
        return self.strategy_row.values["strategy name"]

    def report(self, violation: Violation) -> None:
        """Report a field-path violation at the cell that fills the field (or its nearest parent)."""
        path = violation.path
        for length in range(len(path), -1, -1):
            if path[:length] in self.cells:
                row, key = self.cells[path[:length]]
                break
        column = row.sheet.column(key)
        shown = show(row.raw[key]) if key in row.raw else "(blank)"
        problem = row.problem(key, f"{column.header} {shown}: {violation.message}")
        # A row without a Strategy Name can break the rules for some strategies only.
        if row is not self.strategy_row and not row.link():
            self.join.add_shared(problem, self.name)
        else:
            self.join.problems.append(problem)


def _build_strategy(join: _Join, extras: _IndicatorExtras, key: str, strategy_row: Row,
                    picks: dict[str, dict[str, Row | None]]) -> StrategyJob | None:
    builder = _Builder(join, extras, strategy_row)
    models, features = picks["models"][key], picks["features"][key]
    for sheet_name, found in (("Models", models), ("Features", features)):
        if found is None:
            join.problems.append(strategy_row.problem("strategy name", (
                f"strategy {show(builder.name)} has no {sheet_name} row; add one with this Strategy Name "
                "or with a blank Strategy Name")))
    if models is None or features is None:
        return None

    builder.rows += [models, features]
    _map_cells(builder.cells, (), models)
    builder.cells.setdefault(("resources", "gpusPerNode"), (models, "gpu enabled"))
    _map_cells(builder.cells, ("features",), features)
    data = {
        "strategy": builder.dump(strategy_row, ()),
        "training": builder.dump(models, (), ("training",)),
        "resources": builder.dump(models, (), ("resources",)),
        "distributed": builder.dump(models, (), ("distributed",)),
        "features": builder.dump(features, ("features",)),
        "indicators": builder.indicators(join.multiple_rows("indicators", key)),
        "portfolio": builder.portfolio(picks["portfolio"][key], picks["risk"][key],
                                       join.multiple_rows("allocation", key)),
    }
    # Cells with problems are reported already and hold stand-ins here, so the rules
    # still check every other cell.  A rule that reads a stand-in is left out.
    try:
        spec = MLTrainingJobSpec.model_validate(data)
    except ValidationError as error:
        if not builder.stand_ins:
            for violation in violations_from_validation_error(error):
                builder.report(violation)
        return None
    violations = spec_rule_violations(spec)
    for violation in violations:
        if builder.trusts(violation, spec):
            builder.report(violation)
    if violations or any(not row.valid for row in builder.rows):
        return None
    return StrategyJob(kubernetes_name(builder.name), spec, strategy_row)


def build_jobs(reading: Reading) -> tuple[list[StrategyJob], list[Problem]]:
    """Join a reading into one job per valid strategy; return the jobs and every problem found."""
    join = _Join(reading)
    join.problems.extend(reading.problems)
    if "strategy" not in reading.sheets:
        return [], _unique(join.problems)

    strategies = join.strategies()
    if not reading.rows("strategy"):
        data = reading.sheets["strategy"]
        join.problems.append(Problem(data.file, data.title, "A2", None,
                                     "the Strategy sheet has no strategy rows; add one row per strategy"))
    join.check_links(set(strategies))
    keys = list(strategies)
    picks = {name: join.single_rows(name, keys) for name in ("models", "features", "portfolio", "risk")}
    extras = _indicator_extras(join)
    jobs = []
    for key, row in strategies.items():
        job = _build_strategy(join, extras, key, row, picks)
        if job is not None:
            jobs.append(job)
    return jobs, join.all_problems(len(strategies))


def _unique(problems: list[Problem]) -> list[Problem]:
    """Drop repeats: a shared row's problem is found once per strategy that uses it."""
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for problem in problems:
        key = (problem.file, problem.sheet, problem.cell, problem.message)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def jobs_from_workbooks(paths: Sequence[str]) -> tuple[list[StrategyJob], list[Problem]]:
    """Read and join workbooks; the jobs are only complete when the problem list is empty."""
    return build_jobs(read_workbooks(paths))


# --- documents ---------------------------------------------------------------------


def source_names(paths: Sequence[str]) -> str:
    """Return the workbook file names (not paths) that a document was converted from."""
    return ", ".join(sorted({Path(path).name for path in paths}))


def build_document(job: StrategyJob, sources: str, namespace: str | None = None) -> dict[str, Any]:
    return build_resource(
        job.name, job.spec, namespace=namespace,
        labels={MANAGED_BY_LABEL: MANAGED_BY},
        annotations={STRATEGY_ANNOTATION: job.spec.strategy.name, SOURCE_ANNOTATION: sources},
    )


def dump_yaml(document: dict[str, Any], sources: str) -> str:
    """Serialise one document deterministically, with a comment saying where it came from."""
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=YAML_WIDTH, default_flow_style=False)
    return f"# Generated by quanttrain convert from {sources}; edit the workbooks, not this file.\n{body}"


def render_documents(jobs: Sequence[StrategyJob], paths: Sequence[str],
                     namespace: str | None = None) -> dict[str, str]:
    """Return the YAML text of each job by file name (``<metadata.name>.yaml``)."""
    sources = source_names(paths)
    return {f"{job.name}.yaml": dump_yaml(build_document(job, sources, namespace), sources) for job in jobs}


def stale_files(output_dir: Path, documents: dict[str, str], paths: Sequence[str]) -> list[Path]:
    """Return YAML files in ``output_dir`` converted earlier from the same workbooks but no longer produced."""
    sources = source_names(paths)
    stale = []
    for path in sorted(output_dir.glob("*.yaml")) if output_dir.is_dir() else []:
        if path.name in documents:
            continue
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not one of ours
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if not isinstance(metadata, dict):
            continue
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and annotations.get(SOURCE_ANNOTATION) == sources:
            stale.append(path)
    return stale


def diff_documents(output_dir: Path, documents: dict[str, str], paths: Sequence[str]) -> str:
    """Return a unified diff from the files in ``output_dir`` to the documents ('' when in step)."""
    chunks = []
    for name, text in sorted(documents.items()):
        target = output_dir / name
        old = target.read_text(encoding="utf-8") if target.is_file() else None
        if old != text:
            chunks.extend(difflib.unified_diff(
                (old or "").splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=str(target) if old is not None else "/dev/null", tofile=str(target),
            ))
    for path in stale_files(output_dir, documents, paths):
        chunks.extend(difflib.unified_diff(
            path.read_text(encoding="utf-8").splitlines(keepends=True), [],
            fromfile=str(path), tofile="/dev/null",
        ))
    return "".join(chunks)


def write_documents(output_dir: Path, documents: dict[str, str], paths: Sequence[str]) -> dict[str, str]:
    """Write changed documents atomically and remove stale ones.

    Return what happened to each file by name: "wrote", "unchanged" or "removed".

    Every new file is written to a temporary file first and only then renamed,
    so a failed write leaves the earlier files as they were.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, str] = {}
    pending: list[tuple[str, Path]] = []
    try:
        for name, text in sorted(documents.items()):
            target = output_dir / name
            if target.is_file() and target.read_text(encoding="utf-8") == text:
                outcome[name] = "unchanged"
                continue
            handle, temporary = tempfile.mkstemp(dir=output_dir, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
                stream.write(text)
            pending.append((name, Path(temporary)))
    except BaseException:
        for _, temporary in pending:
            temporary.unlink(missing_ok=True)
        raise
    for name, temporary in pending:
        os.replace(temporary, output_dir / name)
        outcome[name] = "wrote"
    for path in stale_files(output_dir, documents, paths):
        path.unlink()
        outcome[path.name] = "removed"
    return outcome
