# Two commands for a new user: `make demo` and `make test`. Both install first when needed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_WORKDIR ?= fusc-work/demo

.PHONY: install system-deps demo test bench-ingest bench-quality bench-serve lint clean

install: $(STAMP)

# pip (not uv): it takes torch 2.14.1 / torchvision 0.29.1 from this machine's wheel cache.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(MAKE) --no-print-directory system-deps
	touch $(STAMP)

# Debian packages: tesseract-ocr (the second OCR engine; EasyOCR, the default, needs nothing
# more), chromium + chromium-driver (the headless browser the report tests open pages in).
SYSTEM_PACKAGES := tesseract-ocr chromium chromium-driver
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] || (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1)) || \
	  echo "note: could not install$$missing (apt-get install$$missing): --ocr-engine tesseract and the report browser tests need them"

demo: install
	$(BIN)/fusc run examples/scans --clusters 4 --workdir $(DEMO_WORKDIR)
	$(BIN)/fusc report --workdir $(DEMO_WORKDIR)

test: install
	$(BIN)/pytest -q

bench-ingest: install
	$(BIN)/python -m bench.ingest

bench-quality: install
	$(BIN)/python -m bench.quality --dataset african-planes --clusters 4 --seeds 0 1 2

bench-serve: install
	$(BIN)/python -m bench.serve

lint: install
	$(BIN)/ruff check fusc_lib jobs services schemas tests bench

clean:
	rm -rf fusc-work .pytest_cache
