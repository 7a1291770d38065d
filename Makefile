# make serve: start the node on the embedded default (SQLite under ./data)
# make test:  install what the tests need, then run them
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench system-deps ohif clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m node --config config.toml serve

system-deps:
	./scripts/install-system-deps.sh

# the stock OHIF viewer for tests/test_dicomweb_ohif.py (needs npm; without it that test skips)
ohif:
	-./scripts/fetch-ohif.sh

test: $(STAMP) system-deps ohif
	$(BIN)/python -m pytest -q

bench: $(STAMP) system-deps
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) data
