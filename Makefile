# Two commands on a fresh machine: `make demo` (short robust training + evaluation on
# Fashion-MNIST, CPU) and `make test` (the test suite, as CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when we can install it; otherwise leanrobust downloads
# the IDX files from the official mirror (checksummed) into the user cache on first use.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] \
	   && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null 2>&1 \
	  || echo "dataset-fashion-mnist not installable here; leanrobust will download Fashion-MNIST"; \
	fi

demo: install data
	rm -rf runs/fmnist_demo
	$(BIN)/leanrobust train configs/fmnist_demo.yaml --out runs/fmnist_demo

test: install data
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
