"""The built wheel works as installed, run from the project root.

An editable install imports the standard ``operator`` module at start-up and
so hides the fault this guards against: a regular package named ``operator``
in the project root would shadow it in a plain install.
"""

import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    wheel = next((work / "dist").glob("quanttrain-*.whl"))

    env_dir = work / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    # Dependencies come from the development environment through a plain path
    # entry, so its editable-install hooks stay inactive in the fresh one.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(purelib, "dev-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def run_from_root(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_wheel_has_no_operator_init(installed_wheel):
    listing = run_from_root(
        str(installed_wheel / "bin" / "python"), "-c",
        "import quanttrain.operator.cli as m, quanttrain.trainer as t; print(m.__file__); print(t.__file__)",
    )
    assert listing.returncode == 0, listing.stderr
    assert str(installed_wheel) in listing.stdout


def test_console_script_runs_from_project_root(installed_wheel):
    result = run_from_root(str(installed_wheel / "bin" / "quanttrain"), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: quanttrain" in result.stdout


def test_trainer_module_runs_from_project_root(installed_wheel):
    result = run_from_root(str(installed_wheel / "bin" / "python"), "-m", "quanttrain.trainer", "--help")
    assert result.returncode == 0, result.stderr
    assert "--spec" in result.stdout


def test_wheel_ships_indicator_catalog(installed_wheel):
    result = run_from_root(
        str(installed_wheel / "bin" / "python"), "-c",
        "from quanttrain.trainer.indicator_catalog import lookup; print(lookup('rsi').name)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RSI"
