"""The model registry: versioned models in a folder, with metadata and aliases.

Layout::

    <root>/<strategy>/aliases.json          {"production": "2", ...}
    <root>/<strategy>/<version>/model.*     the model (see below)
    <root>/<strategy>/<version>/metadata.json
    <root>/<strategy>/<version>/result.json and *.png

``<strategy>`` is the strategy's Kubernetes name and versions count up from 1.
A version folder is claimed with ``os.mkdir``, which fails when it exists, so
two trainers saving at once get different versions and nothing is ever
overwritten.  ``metadata.json`` is written last and atomically: a folder
without it is an unfinished save and is ignored.

Models are stored in formats whose loading runs no code from the file:

* scikit-learn pipelines (RANDOM_FOREST, SVM): ``model.skops``, loaded by
  ``skops.io`` with the explicit :data:`TRUSTED_TYPES`, and rewritten after
  saving so that the same model always gives the same bytes and sha256;
* XGBoost: ``model.ubj`` (XGBoost's own UBJSON format), plus the
  preprocessing steps and the wrapper settings in ``model.json``;
* LSTM: ``model.pt``, a ``torch.save`` of tensors and plain values read with
  ``weights_only=True``, plus the preprocessing steps and the constructor
  parameters in ``model.json``.

Preprocessing steps are stored in ``preprocess.json`` (parameters and fitted
arrays of the scaler classes in ``_JSON_STEP_CLASSES``), or in
``preprocess.skops`` when a step is of another class.

The sha256 of every file is recorded in ``metadata.json`` at save time and
checked before loading, so a changed model file is rejected with its name.
NOTE: ``metadata.json`` itself is not signed, so a writer who can change both
files defeats the check.  Even then the safe formats above run no code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quanttrain.trainer.summary import ModelReference

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
RESULT_FILE = "result.json"
ALIASES_FILE = "aliases.json"
SKOPS_FILE = "model.skops"
PREPROCESS_FILE = "preprocess.skops"
PREPROCESS_JSON_FILE = "preprocess.json"
XGBOOST_FILE = "model.ubj"
TORCH_FILE = "model.pt"
MODEL_JSON_FILE = "model.json"

# Types that skops does not trust by default but that these pipelines contain.
# Each is a plain data holder or a class of this project with no custom loading.
TRUSTED_TYPES = frozenset({
    "sklearn.tree._tree.Tree",
    # The SVM's probability calibration: an SVC and one fitted sigmoid per class.
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "quanttrain.trainer.features.FeatureScaler",
})

# An MLTrainingJob name (DNS-1123 subdomain), which also keeps the folder name free of "/" and "..".
_STRATEGY_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_LIBRARIES = ("numpy", "pandas", "scikit-learn", "xgboost", "torch", "skops", "ta-lib", "quanttrain")


class RegistryError(Exception):
    """A registry request that cannot be served: unknown strategy, version or alias, or a bad file."""


class GateFailedError(RegistryError):
    """A promotion of a version that failed the performance gate, requested without ``force``."""


class TamperedArtifactError(RegistryError):
    """A model file whose sha256 differs from the one recorded when it was saved."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model read back from the registry, with its metadata."""

    model: Any
    strategy: str
    version: str
    path: Path
    metadata: dict[str, Any]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of Python and the libraries that shape a model, as installed here."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _write_json_atomically(path: Path, payload: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class DraftVersion:
    """A claimed version folder being filled; :meth:`commit` makes it visible."""

    def __init__(self, registry: ModelRegistry, strategy: str, version: str, path: Path) -> None:
        self.registry = registry
        self.strategy = strategy
        self.version = version
        self.path = path
        self.model_files: list[str] = []
        self.model_format: str | None = None

    @property
    def uri(self) -> str:
        return self.path.resolve().as_uri()

    def save_model(self, model) -> ModelReference:
        """Write ``model`` in its safe format and return its reference."""
        self.model_format, self.model_files = _save_model(model, self.path)
        return self.reference()

    def reference(self) -> ModelReference:
        return ModelReference(uri=self.uri, version=self.version, sha256=self.model_digest())

    def model_digest(self) -> str:
        """Hash the model files as ``sha256sum`` lists them (``<sha256>  <name>`` lines, sorted by name)."""
        lines = "".join(f"{sha256_file(self.path / name)}  {name}\n" for name in sorted(self.model_files))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.path / name
        _write_json_atomically(path, payload)
        return path

    def commit(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Hash every file of the version and write ``metadata.json``, which completes the save."""
        if not self.model_files:
            raise RegistryError(f"{self.path}: no model was saved in this version")
        artifacts = {
            item.name: {"sha256": sha256_file(item), "bytes": item.stat().st_size}
            for item in sorted(self.path.iterdir())
            if item.is_file() and item.name != METADATA_FILE and not item.name.startswith(".")
        }
        full = {
            **metadata,
            "strategy": self.strategy,
            "version": self.version,
            "createdAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "libraryVersions": library_versions(),
            "modelFormat": self.model_format,
            "modelFiles": sorted(self.model_files),
            "modelSha256": self.model_digest(),
            "artifacts": artifacts,
        }
        _write_json_atomically(self.path / METADATA_FILE, full)
        logger.info("registered %s version %s at %s", self.strategy, self.version, self.path)
        return full


class ModelRegistry:
    """Versioned models under one root folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------

    @contextlib.contextmanager
    def new_version(self, strategy: str) -> Iterator[DraftVersion]:
        """Claim the next version of ``strategy``; the folder is removed again when the block fails."""
        _check_strategy(strategy)
        folder = self.root / strategy
        folder.mkdir(parents=True, exist_ok=True)
        number = max((int(item.name) for item in folder.iterdir() if item.name.isdigit()), default=0) + 1
        while True:
            try:
                os.mkdir(folder / str(number))
                break
            except FileExistsError:
                number += 1  # another trainer claimed it first
        draft = DraftVersion(self, strategy, str(number), folder / str(number))
        try:
            yield draft
        except BaseException:
            shutil.rmtree(draft.path, ignore_errors=True)
            raise

    def save(self, strategy: str, model, *, metadata: dict[str, Any], result: dict[str, Any] | None = None) -> ModelReference:
        """Save ``model`` as a new version of ``strategy`` in one step."""
        with self.new_version(strategy) as draft:
            reference = draft.save_model(model)
            if result is not None:
                draft.write_json(RESULT_FILE, result)
            draft.commit(metadata)
        return reference

    def promote(self, strategy: str, version: str, alias: str, *, force: bool = False) -> dict[str, str]:
        """Point ``alias`` at ``version`` of ``strategy``; return the strategy's aliases.

        Raises:
            GateFailedError: the version failed the performance gate and ``force`` is false.
            RegistryError: the alias is invalid or the version does not exist.
        """
        if not _ALIAS_PATTERN.match(alias):
            raise RegistryError(
                f"invalid alias {alias!r}: use lower-case letters, digits and hyphens, starting with a letter "
                "(for example production or staging)"
            )
        gate = self._metadata(self._version_path(strategy, str(version))).get("gate", {})
        if gate.get("passed") is False and not force:
            reasons = "; ".join(gate.get("reasons", [])) or "no reason recorded"
            raise GateFailedError(
                f"version {version} of {strategy!r} failed the performance gate ({reasons}); "
                f"alias {alias!r} not set (use --force to promote it anyway)"
            )
        if gate.get("passed") is False:
            logger.warning("promoting version %s of %s, which failed the performance gate", version, strategy)
        folder = self.root / strategy
        with open(folder / f".{ALIASES_FILE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            aliases = self.aliases(strategy)
            aliases[alias] = str(version)
            _write_json_atomically(folder / ALIASES_FILE, dict(sorted(aliases.items())))
        logger.info("alias %s of %s now points at version %s", alias, strategy, version)
        return aliases

    # -- reading -------------------------------------------------------------

    def strategies(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(item.name for item in self.root.iterdir() if item.is_dir() and self.versions(item.name))

    def versions(self, strategy: str) -> list[str]:
        """Return the finished versions of ``strategy``, oldest first."""
        folder = self.root / strategy
        if not folder.is_dir():
            return []
        found = [item.name for item in folder.iterdir() if item.name.isdigit() and (item / METADATA_FILE).is_file()]
        return sorted(found, key=int)

    def aliases(self, strategy: str) -> dict[str, str]:
        path = self.root / strategy / ALIASES_FILE
        if not path.is_file():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def resolve(self, strategy: str, version: str | None = None, alias: str | None = None) -> str:
        """Return the version that ``version``, ``alias`` or (neither) the latest version names."""
        if version is not None and alias is not None:
            raise RegistryError("give a version or an alias, not both")
        versions = self.versions(strategy)
        if not versions:
            known = ", ".join(self.strategies()) or "none"
            raise RegistryError(f"no model of strategy {strategy!r} in {self.root} (registered strategies: {known})")
        if alias is not None:
            aliases = self.aliases(strategy)
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise RegistryError(f"strategy {strategy!r} has no alias {alias!r} (its aliases: {known})")
            return aliases[alias]
        if version is None:
            return versions[-1]
        if str(version) not in versions:
            raise RegistryError(
                f"strategy {strategy!r} has no version {version!r} (its versions: {', '.join(versions)})"
            )
        return str(version)

    def show(self, strategy: str, version: str | None = None, alias: str | None = None) -> dict[str, Any]:
        """Return the metadata of one version, with the aliases that point at it."""
        resolved = self.resolve(strategy, version, alias)
        metadata = self._metadata(self._version_path(strategy, resolved))
        metadata["aliases"] = sorted(name for name, target in self.aliases(strategy).items() if target == resolved)
        return metadata

    def list(self) -> list[dict[str, Any]]:
        """Return one row per finished version of every strategy, oldest first."""
        rows = []
        for strategy in self.strategies():
            aliases = self.aliases(strategy)
            for version in self.versions(strategy):
                metadata = self._metadata(self.root / strategy / version)
                rows.append({
                    "strategy": strategy,
                    "version": version,
                    "createdAt": metadata.get("createdAt"),
                    "modelType": metadata.get("modelType"),
                    "accuracy": metadata.get("metrics", {}).get("accuracy"),
                    "gatePassed": metadata.get("gate", {}).get("passed"),
                    "aliases": sorted(name for name, target in aliases.items() if target == version),
                })
        return rows

    def load(self, strategy: str, version: str | None = None, alias: str | None = None) -> LoadedModel:
        """Load a model after checking the sha256 of each of its files."""
        resolved = self.resolve(strategy, version, alias)
        path = self._version_path(strategy, resolved)
        metadata = self._metadata(path)
        verify_artifacts(path, metadata)
        model = _load_model(path, metadata["modelFormat"])
        return LoadedModel(model, strategy, resolved, path, metadata)

    def _version_path(self, strategy: str, version: str) -> Path:
        _check_strategy(strategy)
        path = self.root / strategy / str(version)
        if not (path / METADATA_FILE).is_file():
            versions = ", ".join(self.versions(strategy)) or "none"
            raise RegistryError(f"strategy {strategy!r} has no version {version!r} in {self.root} (its versions: {versions})")
        return path

    @staticmethod
    def _metadata(path: Path) -> dict[str, Any]:
        return json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))


def verify_artifacts(path: Path, metadata: dict[str, Any]) -> None:
    """Raise TamperedArtifactError unless every model file matches its recorded sha256."""
    recorded = metadata.get("artifacts", {})
    for name in metadata.get("modelFiles", []):
        file = path / name
        expected = recorded.get(name, {}).get("sha256")
        if expected is None:
            raise TamperedArtifactError(f"{file}: no sha256 recorded in {path / METADATA_FILE}; refusing to load it")
        if not file.is_file():
            raise TamperedArtifactError(f"{file}: model file missing; the version is incomplete")
        actual = sha256_file(file)
        if actual != expected:
            raise TamperedArtifactError(
                f"{file}: sha256 {actual} differs from {expected} recorded at save time; the file was changed "
                "after it was registered, so it is not loaded (train and register the model again)"
            )


def _check_strategy(strategy: str) -> None:
    if not _STRATEGY_PATTERN.match(strategy or ""):
        raise RegistryError(
            f"invalid strategy name {strategy!r} in the registry: use the strategy's Kubernetes name "
            "(lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )


# -- model formats -------------------------------------------------------------


def _save_model(model, folder: Path) -> tuple[str, list[str]]:
    """Write ``model`` to ``folder``; return its format and the files written."""
    from sklearn.pipeline import Pipeline

    from quanttrain.trainer.models import HoldoutEarlyStopping, final_estimator

    steps = model.steps if isinstance(model, Pipeline) else [("model", model)]
    last = steps[-1][1]
    estimator = final_estimator(model)
    if hasattr(estimator, "get_booster"):
        _dump_preprocessing(steps[:-1], folder)
        estimator.save_model(folder / XGBOOST_FILE)
        description = {"stepName": steps[-1][0], "classes": _plain(getattr(last, "classes_", None))}
        if isinstance(last, HoldoutEarlyStopping):
            description["holdoutEarlyStopping"] = {
                "validationFraction": last.validation_fraction, "validationGap": last.validation_gap,
                "nFeaturesIn": int(last.n_features_in_),
            }
        _write_json_atomically(folder / MODEL_JSON_FILE, description)
        return "xgboost", _existing(folder, PREPROCESS_FILE, PREPROCESS_JSON_FILE, XGBOOST_FILE, MODEL_JSON_FILE)
    if hasattr(estimator, "state_dict") and hasattr(estimator, "model_"):
        _dump_preprocessing(steps[:-1], folder)
        estimator.save(folder / TORCH_FILE)
        _write_json_atomically(folder / MODEL_JSON_FILE, {
            "stepName": steps[-1][0], "class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "params": _plain(estimator.get_params()),
        })
        return "torch", _existing(folder, PREPROCESS_FILE, PREPROCESS_JSON_FILE, TORCH_FILE, MODEL_JSON_FILE)
    _dump_skops(model, folder / SKOPS_FILE)
    return "skops", [SKOPS_FILE]


def _existing(folder: Path, *names: str) -> list[str]:
    return [name for name in names if (folder / name).is_file()]


def _plain(value: Any) -> Any:
    """Convert numpy values to JSON types."""
    return json.loads(json.dumps(value, default=lambda item: item.tolist() if hasattr(item, "tolist") else str(item)))


def _dump_skops(obj, path: Path) -> None:
    if obj is None:
        return
    import skops.io

    skops.io.dump(obj, path)
    _make_skops_deterministic(path)
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - TRUSTED_TYPES)
    if untrusted:
        path.unlink()
        raise RegistryError(
            f"the model contains types that the registry does not trust to load: {', '.join(untrusted)}; "
            "add a type to TRUSTED_TYPES in quanttrain.trainer.registry only after checking that loading it "
            "runs no code"
        )


# The zip entries' timestamp: the earliest a zip file can record.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _make_skops_deterministic(path: Path) -> None:
    """Rewrite a skops file so that the same model always gives the same bytes.

    skops names each array file and marks each object (``__id__``) with the
    object's ``id()``, which differs between runs, and stamps every entry with
    the current time.  The ids are renumbered in the order they first appear
    in ``schema.json``, so objects that shared an id still share one, and the
    entries are written in name order with a fixed time.
    """
    import zipfile

    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
        contents = {info.filename: (archive.read(info), info.compress_type) for info in archive.infolist()}
    numbers: dict[int, int] = {}

    def renumber(identity: int) -> int:
        return numbers.setdefault(identity, len(numbers) + 1)

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        rewritten = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int):
                value = renumber(value)
            elif key == "file" and isinstance(value, str) and value.split(".")[0].isdigit():
                stem, _, suffix = value.partition(".")
                value = f"{renumber(int(stem))}.{suffix}"
            rewritten[key] = rewrite(value)
        return rewritten

    schema = rewrite(schema)
    renamed = {"schema.json": (json.dumps(schema, indent=2).encode("utf-8"), contents["schema.json"][1])}
    for name, (data, compression) in contents.items():
        stem, _, suffix = name.partition(".")
        if name != "schema.json":
            renamed[f"{renumber(int(stem))}.{suffix}" if stem.isdigit() else name] = (data, compression)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(temporary, "w") as archive:
        for name in sorted(renamed):
            data, compression = renamed[name]
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_EPOCH), data, compress_type=compression)
    os.replace(temporary, path)


def _load_skops(path: Path):
    import skops.io

    untrusted = set(skops.io.get_untrusted_types(file=path))
    unknown = sorted(untrusted - TRUSTED_TYPES)
    if unknown:
        raise TamperedArtifactError(f"{path}: contains types that are not trusted: {', '.join(unknown)}; not loaded")
    return skops.io.load(path, trusted=sorted(untrusted))


def _load_model(folder: Path, model_format: str):
    if model_format == "skops":
        return _load_skops(folder / SKOPS_FILE)
    description = json.loads((folder / MODEL_JSON_FILE).read_text(encoding="utf-8"))
    if model_format == "xgboost":
        final = _load_xgboost(folder, description)
    elif model_format == "torch":
        from quanttrain.trainer.lstm import LSTMClassifier

        final = LSTMClassifier.load(folder / TORCH_FILE, device="auto")
    else:
        raise RegistryError(f"{folder / METADATA_FILE}: unknown model format {model_format!r}")
    return _with_preprocessing(folder, description["stepName"], final)


def _with_preprocessing(folder: Path, step_name: str, final):
    from sklearn.pipeline import Pipeline

    if (folder / PREPROCESS_JSON_FILE).is_file():
        steps = _load_preprocessing_json(folder / PREPROCESS_JSON_FILE)
    elif (folder / PREPROCESS_FILE).is_file():
        steps = _load_skops(folder / PREPROCESS_FILE).steps
    else:
        return final
    return Pipeline([*steps, (step_name, final)])


def _load_xgboost(folder: Path, description: dict[str, Any]):
    import numpy as np
    from sklearn.preprocessing import LabelEncoder
    from xgboost import XGBClassifier

    from quanttrain.trainer.models import HoldoutEarlyStopping

    booster = XGBClassifier()
    booster.load_model(folder / XGBOOST_FILE)
    holdout = description.get("holdoutEarlyStopping")
    if holdout is None:
        return booster
    # Rebuild the fitted wrapper around the loaded booster without refitting.
    wrapper = HoldoutEarlyStopping(XGBClassifier(), holdout["validationFraction"], holdout["validationGap"])
    wrapper.estimator_ = booster
    wrapper.label_encoder_ = LabelEncoder()
    wrapper.label_encoder_.classes_ = np.asarray(description["classes"])
    wrapper.classes_ = wrapper.label_encoder_.classes_
    wrapper.n_features_in_ = holdout["nFeaturesIn"]
    return wrapper


# -- preprocessing steps as JSON -------------------------------------------------
#
# The steps before an XGBoost or LSTM model are usually these scalers.  Their
# fitted state is a few arrays, which JSON stores exactly because Python writes
# floats that read back bit for bit.  Saving and loading then skip importing
# skops, which imports every scikit-learn module (a second or more here).
# Other steps fall back to skops.

# Classes whose parameters and fitted arrays fully describe them.
_JSON_STEP_CLASSES = {
    "quanttrain.trainer.features.FeatureScaler": ("quanttrain.trainer.features", "FeatureScaler"),
    "sklearn.preprocessing.StandardScaler": ("sklearn.preprocessing", "StandardScaler"),
}
_JSON_DTYPES = frozenset({"float64", "float32", "int64", "int32", "bool", "object"})


def _class_key(step) -> str:
    return f"{type(step).__module__.split('._')[0]}.{type(step).__name__}"


def _dump_preprocessing(steps: list[tuple[str, Any]], folder: Path) -> None:
    """Write the preprocessing steps as JSON when every step allows it, else with skops."""
    from sklearn.pipeline import Pipeline

    if not steps:
        return
    if not all(step == "passthrough" or _class_key(step) in _JSON_STEP_CLASSES for _, step in steps):
        _dump_skops(Pipeline(steps), folder / PREPROCESS_FILE)
        return
    described = [
        {"name": name, "passthrough": True} if step == "passthrough" else {
            "name": name, "class": _class_key(step), "params": _plain(step.get_params(deep=False)),
            "state": {key: _encode(value) for key, value in vars(step).items() if key.endswith("_")},
        }
        for name, step in steps
    ]
    _write_json_atomically(folder / PREPROCESS_JSON_FILE, {"steps": described})


def _encode(value: Any) -> dict[str, Any]:
    import numpy as np

    array = np.asarray(value)
    if array.dtype.name not in _JSON_DTYPES:
        raise RegistryError(f"cannot store a preprocessing attribute of dtype {array.dtype} as JSON")
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.ravel().tolist()}


def _decode(encoded: dict[str, Any]):
    import numpy as np

    if encoded.get("dtype") not in _JSON_DTYPES:
        raise TamperedArtifactError(f"preprocessing attribute of unknown dtype {encoded.get('dtype')!r}")
    array = np.asarray(encoded["data"], dtype=encoded["dtype"]).reshape(encoded["shape"])
    if encoded["dtype"] == "object" and not all(isinstance(item, str) for item in array.ravel()):
        raise TamperedArtifactError("invalid preprocessing attribute: a text array contains values that are not strings")
    return array if array.shape else array.item()


def _load_preprocessing_json(path: Path) -> list[tuple[str, Any]]:
    import importlib

    steps = []
    for described in json.loads(path.read_text(encoding="utf-8"))["steps"]:
        if described.get("passthrough"):
            steps.append((described["name"], "passthrough"))
            continue
        location = _JSON_STEP_CLASSES.get(described.get("class"))
        if location is None:
            raise TamperedArtifactError(f"{path}: step class {described.get('class')!r} is not trusted; not loaded")
        cls = getattr(importlib.import_module(location[0]), location[1])
        step = cls(**described["params"])
        for key, encoded in described["state"].items():
            if not key.endswith("_"):
                raise TamperedArtifactError(f"{path}: {key!r} is not a fitted attribute; not loaded")
            setattr(step, key, _decode(encoded))
        steps.append((described["name"], step))
    return steps
