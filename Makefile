# Two commands do all the set-up: `make demo` and `make test`.
#   PYTHON       interpreter that creates the virtual environment (default: python3)
#   VENV         where the environment lives (default: .venv)
#   TORCH_SPEC   what pip installs when no torch is importable (default: torch==2.13.0, a CPU build
#                that lies on this machine's disk; use e.g. "torch --index-url ..." for a CUDA build)
#   DEMO_DIR     where `make demo` writes (default: runs/demo)
# If $(PYTHON) can already import torch (say a CUDA build), the environment sees it through
# --system-site-packages and leaves it alone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.monai_oct-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	  echo "torch found in $(PYTHON): reusing it"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else $(PYTHON) -m venv $(VENV); fi
	@$(VPY) -c "import torch" >/dev/null 2>&1 || $(VPY) -m pip install -q $(TORCH_SPEC)
	$(VPY) -m pip install -q -e ".[dev]"
	@$(VPY) -c "import torch, monai; print('torch', torch.__version__, '| monai', monai.__version__)"
	@touch $(STAMP)

demo: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 \
	  $(VENV)/bin/monai-oct demo --out $(DEMO_DIR)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
