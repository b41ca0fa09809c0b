# Two commands do all the set-up: `make demo` and `make test`.
#   PYTHON       interpreter that creates the virtual environment (default: python3)
#   VENV         where the environment lives (default: .venv)
#   TORCH_SPEC   what pip installs when no torch is importable (default: torch==2.13.0, a CPU build
#                that lies on this machine's disk; use e.g. "torch --index-url ..." for a CUDA build)
#   DEMO_DIR     where `make demo` writes (default: runs/demo)
#   TUTORIALS_DIR  where `make tutorials` renders the executed notebooks (default: docs/tutorials, git-ignored)
# If $(PYTHON) can already import torch (say a CUDA build), the environment sees it through
# --system-site-packages and leaves it alone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
TUTORIALS_DIR ?= docs/tutorials
# tests run in 2 pytest-xdist workers (most are single-threaded bundle subprocesses, so 2 workers use both cores;
# 16.8 min in one process on the 2-core machine); PYTEST_ARGS= runs them in one process
PYTEST_ARGS ?= -n 2
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.monai_oct-installed

# MONAI Label for the tests only (not a dependency of the package): `make monailabel` installs monailabel
# 0.8.5 with --no-deps into $(MONAILABEL_DIR), plus the packages its task modules import, none of which
# brings a torch or numpy; torchvision is the build made for the installed torch (its Python part only is
# used: monailabel.transform.post imports make_grid/save_image); watchdog for its LocalDatastore.
# ML_PYTHON: the interpreter whose torch it matches.
MONAILABEL_DIR ?= .monailabel
ML_PYTHON ?= $(VPY)
MONAILABEL_PKGS := monailabel==0.8.5 expiring_dict pydantic pydantic-core pydantic-settings typing-inspection \
	annotated-types python-dotenv pynrrd sortedcontainers scikit-image shapely lazy_loader imageio tifffile watchdog

.PHONY: install demo test tutorials clean monailabel

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

# every tutorials/*.ipynb executed in a fresh python3 kernel (each writes into its own temporary folder) and
# rendered as $(TUTORIALS_DIR)/<name>.md with its pictures in <name>_files/
tutorials: $(STAMP)
	$(VPY) tutorials/render.py --out $(TUTORIALS_DIR)

monailabel: $(MONAILABEL_DIR)/.installed

# reinstalled when this file changes; needs the environment only when ML_PYTHON is its interpreter
$(MONAILABEL_DIR)/.installed: Makefile $(if $(filter $(VPY),$(ML_PYTHON)),$(STAMP))
	@rm -rf $(MONAILABEL_DIR).tmp
	@TV=$$($(ML_PYTHON) -c "import torch; v = torch.__version__.split('+')[0].split('.'); print(f'0.{int(v[1]) + 15}.*')") && \
	  $(ML_PYTHON) -m pip install -q --no-deps --target $(MONAILABEL_DIR).tmp $(MONAILABEL_PKGS) "torchvision==$$TV"
	@rm -rf $(MONAILABEL_DIR) && mv $(MONAILABEL_DIR).tmp $(MONAILABEL_DIR) && touch $@
	@echo "MONAI Label 0.8.5 in $(MONAILABEL_DIR) (put it on sys.path; not installed in the environment)"

clean:
	rm -rf $(VENV) runs .pytest_cache $(MONAILABEL_DIR)
