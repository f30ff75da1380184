# Set-up and common tasks. `make train` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine use e.g. `make install TORCH_SPEC=torch==2.13.0`
# with your CUDA wheel index configured in pip, or preinstall torch in the venv.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast lint notebooks benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" -e '.[dev,sweep]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

## Train the default model (digits, cosine, learned-range variance, hybrid loss).
train: $(STAMP)
	$(BIN)/python -m iddpm_pl.train $(ARGS)

## Run the whole test suite (slow tests included); exits non-zero on any failure.
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q --durations=15 $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

## Execute the notebooks with full settings; the executed copies (with outputs) go to
## logs/notebooks/. NB_CKPT=<run>/checkpoints/last.ckpt analyses a trained run; without it
## each notebook first trains a tiny model of its own.
notebooks: $(STAMP)
	mkdir -p logs/notebooks
	cp notebooks/*.ipynb logs/notebooks/
	cd logs/notebooks && for nb in *.ipynb; do \
		IDDPM_NB_CKPT="$(abspath $(NB_CKPT))" IDDPM_NB_OUT=runs \
		$(abspath $(BIN))/jupyter-execute --inplace --timeout=-1 $$nb || exit 1; \
	done

clean:
	rm -rf logs multirun outputs .pytest_cache
