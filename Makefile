# Everything runs from the project's own virtual environment in .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip --disable-pip-version-check --quiet

.PHONY: venv test demo clean

venv: $(STAMP)

# torch==2.13.0 is installed first, on its own, so that the project's looser
# torch requirement is already met and pip downloads no other build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[trainer,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info examples/data examples/out
