# normbench: `make train` (install + a first training), `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NB := $(PY) -m normbench
# The CPU build of torch; a machine with a GPU can use e.g. TORCH_SPEC='torch==2.13.0' with
# PyPI's CUDA wheels, or any torch >= 2.4 already installed.
TORCH_SPEC ?= torch==2.13.0
SHARED ?= ../shared
WIKITEXT_FILES := $(abspath $(SHARED)/data/wikitext-2)
ARGS ?=

.PHONY: install train test test-slow lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,optuna]'
	touch $@

install: $(VENV)/.installed

# The first run. Where torch sees no GPU it is the CPU quick start (experiment=quickstart,
# a few minutes on 2 cores), which its first line names; with a GPU (or QUICK= set empty,
# or an experiment=... in ARGS) the full default. It trains on WikiText-2 from the hub; where
# the hub cannot be reached and ../shared has the WikiText-2 split files, on those instead,
# and says so.
QUICK ?= auto
train: install
	@quick="$(QUICK)"; \
	case "$(ARGS)" in *experiment=*) quick="";; esac; \
	if [ "$$quick" = auto ]; then \
	  quick=$$($(PY) -c 'import torch; gpu = torch.cuda.is_available() or torch.backends.mps.is_available(); print("" if gpu else "experiment=quickstart")'); \
	  if [ -n "$$quick" ]; then \
	    echo "make train: no GPU here, so the CPU quick start ($$quick: configs/experiment/quickstart.yaml, a few minutes); on a GPU, or with QUICK=, the full default" >&2; \
	  fi; \
	fi; \
	if $(NB) prepare $$quick $(ARGS); then \
	  $(NB) train $$quick $(ARGS); \
	elif [ -f "$(WIKITEXT_FILES)/wiki.valid.tokens" ]; then \
	  echo "make train: using the local split files in $(WIKITEXT_FILES) (data=wikitext2_files: trains on the validation split, evaluates on the test split)" >&2; \
	  $(NB) train data=wikitext2_files data.dir=$(WIKITEXT_FILES) $$quick $(ARGS); \
	else exit 2; fi

# The tests run on every core (pytest-xdist, one worker per core; see tests/conftest.py).
test: install
	$(PY) -m pytest -q -n auto

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m normbench.bench $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
