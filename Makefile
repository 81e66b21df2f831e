# runstream: the two commands are `make demo` and `make test`; both go through `make install`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Debian packages the tests use: fiu-utils (fiu-run, real I/O error injection), strace (fsync EIO
# injection), util-linux (mount for the small full-disk tmpfs).
DEB_PKGS := fiu-utils strace util-linux

.PHONY: install demo test lint typecheck pytest bench proto clean deb

install: $(STAMP)

deb:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory deb
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check sdk ingest tests bench examples scripts
	$(BIN)/ruff format --check sdk ingest tests bench examples scripts
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/log_latency.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/faults.py

proto: install
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
