# One way to run things. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP) mosquitto

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
