# runstream: the two commands are `make demo` and `make test`; both go through `make install`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Debian packages the tests use: fiu-utils (fiu-run, real I/O error injection), strace (fsync EIO
# injection), util-linux (mount for the small full-disk tmpfs), chromium (the web UI's browser tests,
# driven by Playwright: its own browser download is not available).
DEB_PKGS := fiu-utils strace util-linux chromium

.PHONY: install demo test lint typecheck pytest bench proto clean deb vendor

install: $(STAMP)

deb:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The C extension (sdk/runstream/_ringfast*) is compiled by this editable install: an edit to its
# sources or to setup.py reinstalls, which rebuilds it.
$(STAMP): pyproject.toml setup.py $(wildcard sdk/runstream/_ringfast*.c sdk/runstream/_ringfast*.h)
	@$(MAKE) --no-print-directory deb
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@# setuptools' editable finder ranks below a plain directory on sys.path: the runstream/ folder
	@# each run leaves in its working directory would then shadow the package ("no attribute
	@# 'init'") the next time a script runs there.  Real path entries for the sources rank first.
	@printf '%s\n' "$(CURDIR)/sdk" "$(CURDIR)/ingest" > \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/runstream-sources.pth"
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
	$(BIN)/python bench/query_latency.py
	$(BIN)/python bench/context_overhead.py
	$(BIN)/python bench/file_upload.py

proto: install
	$(BIN)/python scripts/gen_proto.py

# The web UI's vendored front-end files (committed; nothing is built at install time).  Refresh
# them from the npm registry with `make vendor UPLOT_VERSION=x.y.z`.
UPLOT_VERSION ?= 1.6.32
WEB_VENDOR := ingest/runstream_ingest/server/web/vendor
vendor:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz) && \
	cp "$$tmp"/package/dist/uPlot.iife.min.js "$$tmp"/package/dist/uPlot.min.css "$$tmp"/package/LICENSE $(WEB_VENDOR)/ && \
	echo "uplot $(UPLOT_VERSION)" > $(WEB_VENDOR)/VERSION && echo "vendored uplot $(UPLOT_VERSION) into $(WEB_VENDOR)"

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
