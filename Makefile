# fargpu developer entry points. `make demo` and `make test` each set up what they need first.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv demo test regen clean

$(VENV)/.installed: pyproject.toml CMakeLists.txt $(shell find client_stub server protocol fargpu pool_manager -name '*.c' -o -name '*.h' -o -name '*.py' 2>/dev/null)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q ".[dev]"
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
