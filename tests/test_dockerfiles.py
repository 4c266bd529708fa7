"""Static checks of Dockerfile.trainer and Dockerfile.operator (no Docker engine runs here)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "Dockerfile.trainer"
OPERATOR = ROOT / "Dockerfile.operator"
DEPLOYMENT_TEMPLATE = ROOT / "helm" / "quanttrain" / "templates" / "deployment.yaml"

# name:tag@sha256:digest, whose tag contains a version number.
PINNED_IMAGE = re.compile(r"^(?P<name>[a-z0-9./_-]+):(?P<tag>[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*)@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = (
    "gcc", "g++", "clang", "build-essential", "make", "cmake", "ninja-build", "python3-dev",
    "python3.12-dev", "libpython3", "git", "curl", "wget",
)
TRAINING_LIBRARIES = (
    "torch", "xgboost", "scikit-learn", "sklearn", "scikit-optimize", "skopt", "pandas", "numpy",
    "pyarrow", "ta-lib", "matplotlib", "arch",
)


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Split a Dockerfile into stages, joining continued lines and resolving global ARGs in FROM."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, argument = line.strip().partition(" ")
        instruction, argument = instruction.upper(), " ".join(argument.split())
        if instruction == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda match: global_args[match.group(1)], argument).split()
            words = [word for word in words if not word.startswith("--platform")]
            stages.append(Stage(base=words[0], name=words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        elif instruction == "ARG" and not stages:
            key, _, value = argument.partition("=")
            global_args[key] = value
        elif stages:
            stages[-1].instructions.append((instruction, argument))
    return stages


def pip_requirements(stage: Stage) -> list[str]:
    """Return the requirement arguments of every `pip install` in a stage."""
    requirements = []
    for command in stage.arguments("RUN"):
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                after = words[words.index("install") + 1:]
                requirements += [word for word in after if not word.startswith("-")]
    return requirements


def environment(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for argument in stage.arguments("ENV"):
        for word in shlex.split(argument):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def final_stage(path: Path) -> Stage:
    return parse_dockerfile(path)[-1]


@pytest.fixture(params=[TRAINER, OPERATOR], ids=["trainer", "operator"])
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_dockerfile_is_multi_stage(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2
    assert all(stage.name for stage in stages)


def test_base_images_are_pinned_by_version_and_digest(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    stage_names = {stage.name for stage in stages}
    for stage in stages:
        if stage.base in stage_names:
            continue
        match = PINNED_IMAGE.match(stage.base)
        assert match, f"{dockerfile.name}: base image {stage.base!r} is not pinned as name:version@sha256:digest"
        assert match.group("tag") != "latest"


def test_final_user_is_numeric_non_root(dockerfile: Path) -> None:
    users = final_stage(dockerfile).arguments("USER")
    assert users, f"{dockerfile.name}: the final stage sets no USER"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{dockerfile.name}: USER {user!r} is not numeric"
    assert int(user.split(":")[0]) != 0
    assert all(int(part) != 0 for part in user.split(":"))


def test_final_user_matches_chart_uid(dockerfile: Path) -> None:
    values = yaml.safe_load((ROOT / "helm" / "quanttrain" / "values.yaml").read_text())
    uid = int(final_stage(dockerfile).arguments("USER")[-1].split(":")[0])
    assert uid == values["operator"]["podSecurityContext"]["runAsUser"]


def test_final_stage_has_no_build_tools(dockerfile: Path) -> None:
    for command in final_stage(dockerfile).arguments("RUN"):
        words = set(re.split(r"[\s;&|]+", command))
        found = sorted(words & set(BUILD_TOOLS))
        assert not found, f"{dockerfile.name}: the final stage installs or runs {found}"
        assert "pip" not in words, f"{dockerfile.name}: the final stage runs pip: {command}"


def test_final_stage_copies_only_the_built_environment(dockerfile: Path) -> None:
    copies = final_stage(dockerfile).arguments("COPY")
    assert copies
    assert all(copy.startswith("--from=builder ") for copy in copies), copies


def test_apt_lists_are_removed_in_the_installing_layer(dockerfile: Path) -> None:
    for stage in parse_dockerfile(dockerfile):
        for command in stage.arguments("RUN"):
            if "apt-get install" in command:
                assert "--no-install-recommends" in command
                assert "rm -rf /var/lib/apt/lists/*" in command


def test_pip_keeps_no_cache(dockerfile: Path) -> None:
    for stage in parse_dockerfile(dockerfile):
        if pip_requirements(stage):
            assert environment(stage).get("PIP_NO_CACHE_DIR") == "1", f"{dockerfile.name}: stage {stage.name}"


def test_third_party_packages_are_pinned_exactly(dockerfile: Path) -> None:
    for stage in parse_dockerfile(dockerfile):
        for requirement in pip_requirements(stage):
            if "quanttrain-" in requirement or requirement.startswith("/"):
                continue
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+]*", requirement), (
                f"{dockerfile.name}: {requirement!r} is not pinned with =="
            )


def test_pinned_versions_agree_between_the_images() -> None:
    def pins(path: Path) -> dict[str, str]:
        requirements = [r for stage in parse_dockerfile(path) for r in pip_requirements(stage) if "==" in r]
        return dict(requirement.split("==") for requirement in requirements)

    trainer, operator = pins(TRAINER), pins(OPERATOR)
    shared = set(trainer) & set(operator)
    assert shared
    assert {name: trainer[name] for name in shared} == {name: operator[name] for name in shared}


def test_trainer_entrypoint_runs_the_trainer_module() -> None:
    entrypoints = final_stage(TRAINER).arguments("ENTRYPOINT")
    assert [json.loads(entry) for entry in entrypoints] == [["python", "-m", "quanttrain.trainer"]]
    assert (ROOT / "trainer" / "__main__.py").exists(), "`python -m quanttrain.trainer` needs trainer/__main__.py"


def test_trainer_image_has_torchrun_on_path() -> None:
    requirements = [r for stage in parse_dockerfile(TRAINER) for r in pip_requirements(stage)]
    assert any(requirement.startswith("torch==") for requirement in requirements)
    assert any(requirement.startswith("xgboost==") for requirement in requirements)
    assert environment(final_stage(TRAINER))["PATH"].startswith("/opt/venv/bin:")
    assert "/opt/venv" in final_stage(TRAINER).arguments("COPY")[0]


def test_operator_pods_run_the_trainer_entrypoint() -> None:
    from quanttrain.operator import manifests
    from quanttrain.operator.convert import jobs_from_workbooks
    from quanttrain.operator.settings import OperatorSettings

    workbooks = sorted(str(path) for path in (ROOT / "examples").glob("ML_CONFIG_*_1.0.0.xlsx"))
    jobs, problems = jobs_from_workbooks(workbooks)
    assert jobs and not problems
    spec = jobs[0].spec
    distributed = spec.model_copy(update={"distributed": spec.distributed.model_copy(update={"enabled": True, "nodes": 2})})
    job = manifests.JobIdentity(name="momentum", namespace="research", uid="0f6c1c3e-4b8e-4c55-9d59-1b2f3a4c5d6e")
    entrypoint = json.loads(final_stage(TRAINER).arguments("ENTRYPOINT")[-1])

    single_node = manifests.trainer_command(job, spec, OperatorSettings(), "/registry")
    assert single_node[: len(entrypoint)] == entrypoint
    under_torchrun = manifests.trainer_command(job, distributed, OperatorSettings(), "/registry")
    launcher = [*entrypoint[:-1], manifests.TRAINER_LAUNCHER_MODULE]
    assert under_torchrun[: len(launcher)] == launcher
    assert (ROOT / "trainer" / "launcher.py").exists(), f"`python -m {launcher[-1]}` needs trainer/launcher.py"
    assert under_torchrun[under_torchrun.index("-m", len(launcher)) + 1] == entrypoint[-1]


def test_operator_pods_run_as_the_image_user() -> None:
    from quanttrain.operator import manifests

    assert int(final_stage(TRAINER).arguments("USER")[-1].split(":")[0]) == manifests.TRAINER_UID


def test_trainer_image_installs_the_trainer_extra() -> None:
    requirements = [r for stage in parse_dockerfile(TRAINER) for r in pip_requirements(stage)]
    assert any(requirement.endswith("[trainer]") for requirement in requirements)


def test_trainer_base_is_a_cuda_image() -> None:
    assert final_stage(TRAINER).base.startswith("nvidia/cuda:")


def test_operator_entrypoint_matches_the_chart_command() -> None:
    entrypoints = [json.loads(entry) for entry in final_stage(OPERATOR).arguments("ENTRYPOINT")]
    chart_command = re.search(r"^\s*command: (\[.*\])$", DEPLOYMENT_TEMPLATE.read_text(), re.MULTILINE)
    assert chart_command, "the chart's Deployment sets no command"
    assert entrypoints == [json.loads(chart_command.group(1))] == [["quanttrain", "operator"]]


def test_operator_image_installs_no_training_libraries() -> None:
    for requirement in [r for stage in parse_dockerfile(OPERATOR) for r in pip_requirements(stage)]:
        name = re.split(r"[=<>\[ ]", requirement)[0].lower()
        assert name not in TRAINING_LIBRARIES, f"the operator image installs {requirement}"
        assert "[trainer" not in requirement, f"the operator image installs the trainer extra: {requirement}"


def test_build_context_keeps_what_the_images_copy(dockerfile: Path) -> None:
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in parse_dockerfile(dockerfile):
        for copy in stage.arguments("COPY"):
            if copy.startswith("--from="):
                continue
            sources = copy.split()[:-1]
            for source in sources:
                assert source.rstrip("/") in kept, f"{dockerfile.name} copies {source}, which .dockerignore excludes"
                assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
