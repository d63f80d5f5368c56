# One way to run things. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench lint clean browser vendor

setup: $(STAMP) mosquitto browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto with apt"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
	@# Debian's package enables a system service; the project runs its own broker processes.
	@(systemctl disable --now mosquitto >/dev/null 2>&1 || true)

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

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/edgespec bench --json bench.json

lint: setup
	$(BIN)/python -m ruff check . || true

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
