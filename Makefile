# fargpu developer entry points. `make demo` and `make test` each set up what they need first.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv demo test regen clean

# The build (CMake for the stub, replay engine and simulated device) takes about a minute: pip shows its progress.
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(shell find client_stub server protocol fargpu pool_manager -name '*.c' -o -name '*.h' -o -name '*.py' 2>/dev/null)
	@echo "== [1/3] creating the virtual environment $(VENV)"
	test -x $(VPY) || $(PY) -m venv $(VENV)
	@echo "== [2/3] upgrading pip"
	$(VPY) -m pip install -q --upgrade pip
	@echo "== [3/3] building and installing fargpu with its dev tools (about a minute: CMake builds the native parts)"
	bash -o pipefail -c '$(VPY) -m pip install --progress-bar off ".[dev]" 2>&1 | tee $(VENV)/pip.log | { grep -E --line-buffered "^(Processing|Collecting|  Building|Building|Successfully)" || true; }' || { tail -40 $(VENV)/pip.log; exit 1; }
	test -x $(VENV)/bin/fargpu
	touch $@

venv: $(VENV)/.installed

demo: venv
	cd /tmp && $(CURDIR)/$(VENV)/bin/fargpu demo

test: venv
	bash scripts/test.sh

regen: venv
	$(VPY) -m codegen

clean:
	rm -rf build $(VENV)
