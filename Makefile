# runstream: the two commands are `make demo` and `make test`; both go through `make install`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Every package the venv holds, pip, setuptools and wheel included, at an exact version (pip
# constraints): a fresh clone installs what the last `make lock` chose, not whatever the package
# index serves today, so a new release cannot turn CI red.  `make lock` refreshes it on purpose.
LOCK    := constraints.txt
# Debian packages the tests use: fiu-utils (fiu-run, real I/O error injection), strace (fsync EIO
# injection), util-linux (mount for the small full-disk tmpfs), chromium (the web UI's browser tests,
# driven by Playwright: its own browser download is not available).
DEB_PKGS := fiu-utils strace util-linux chromium

.PHONY: install demo test lint typecheck pytest bench proto clean deb vendor lock lock-add

install: $(STAMP)

deb:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The C extension (sdk/runstream/_ringfast*) is compiled by this editable install: an edit to its
# sources or to setup.py reinstalls, which rebuilds it.  So does a new lock.
$(STAMP): pyproject.toml setup.py $(LOCK) $(wildcard sdk/runstream/_ringfast*.c sdk/runstream/_ringfast*.h)
	@$(MAKE) --no-print-directory deb
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# The locked pip, setuptools and wheel first: the editable build then uses these
	@# (--no-build-isolation) instead of fetching the newest setuptools into a throwaway build env.
	$(BIN)/python -m pip install -q -c $(LOCK) pip setuptools wheel
	$(BIN)/python -m pip install -q -c $(LOCK) --no-build-isolation -e '.[test]'
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

# The edit-test loop: no lint, and none of the slow, root-only or browser tests (`make test` runs
# them all).
.PHONY: test-fast
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not root and not browser"

bench: install
	$(BIN)/python bench/log_latency.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/campaign.py
	$(BIN)/python bench/query_latency.py
	$(BIN)/python bench/context_overhead.py
	$(BIN)/python bench/file_upload.py
	$(BIN)/python bench/media.py
	$(BIN)/python bench/watch.py

proto: install
	$(BIN)/python scripts/gen_proto.py

# Re-resolve every dependency in a fresh temporary venv and rewrite $(LOCK) with what it got (see
# scripts/lock.py); review the diff, then `make install` (the stamp depends on the lock).
# `make lock-add` resolves only requirements new to pyproject.toml and keeps every other pin.
lock:
	$(PY) scripts/lock.py
lock-add:
	$(PY) scripts/lock.py --keep

# The web UI's vendored front-end files (committed; nothing is built at install time).  Refresh
# them from the npm registry with `make vendor UPLOT_VERSION=x.y.z`.
UPLOT_VERSION ?= 1.6.32
WEB_VENDOR := ingest/runstream_ingest/server/web/static/vendor
vendor:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz) && \
	cp "$$tmp"/package/dist/uPlot.iife.min.js "$$tmp"/package/dist/uPlot.min.css "$$tmp"/package/LICENSE $(WEB_VENDOR)/ && \
	echo "uplot $(UPLOT_VERSION)" > $(WEB_VENDOR)/VERSION && echo "vendored uplot $(UPLOT_VERSION) into $(WEB_VENDOR)"

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
