# gridminer: `make run` runs the main job, `make test` runs the test suite.
# Both create or update the local virtual environment first, so a fresh clone needs
# nothing but Python >= 3.11 and Node.js + npm (for the pinned regtest node).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench clean

# Debian/Ubuntu ship venv separately (python3-venv); install it when we may.
$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  echo "python3 -m venv failed: installing the python3-venv package"; \
	  pkg="python3-venv python$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$pkg || true; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-run
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# The regtest node is installed by `miner run` itself (npm ci into ~/.cache) on first use.
run: $(VENV)/.installed-run
	$(BIN)/miner run $(ARGS)

bench: $(VENV)/.installed-run
	$(BIN)/miner bench $(ARGS)

# pytest exits 5 when it collected no tests: that is not a failure of the suite.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
