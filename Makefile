# pvenat developer entry points. Run as root: the tests build network namespaces.
#   make test    both test runs: Debian's python3-* libraries, then current PyPI releases
#   make demo    a simulated PVE host in namespaces and the flows pvenat makes work
#                (KEEP=1 leaves it up; make demo-down removes it)
#   make deps    what the tests need: apt packages and the PyPI virtualenv (.venv)

PY_DEBIAN := /usr/bin/python3
VENV := .venv
APT_PACKAGES := iptables iproute2 conntrack openssl python3 python3-venv python3-pip \
	python3-proxmoxer python3-yaml python3-structlog python3-requests python3-pytest \
	python3-hypothesis build-essential debhelper dh-python python3-all python3-setuptools \
	lintian fakeroot git ifupdown2
PYPI_PACKAGES := proxmoxer requests PyYAML structlog pytest hypothesis flake8

.PHONY: test lint test-debian test-pypi test-package deps bench demo demo-down deb

test: deps lint test-debian test-pypi test-package

lint:
	$(VENV)/bin/flake8 pvehook tests bench hookscripts

test-debian:
	@echo "== tests on Debian's libraries: $$($(PY_DEBIAN) -c 'from importlib.metadata import version as v; print(*[f"{p} {v(p)}" for p in ("proxmoxer", "structlog", "PyYAML")])')"
	$(PY_DEBIAN) -m pytest -q tests

test-pypi:
	@echo "== tests on current PyPI releases: $$($(VENV)/bin/python -c 'from importlib.metadata import version as v; print(*[f"{p} {v(p)}" for p in ("proxmoxer", "structlog", "PyYAML")])')"
	$(VENV)/bin/python -m pytest -q tests

test-package:
	@echo "== the Debian package: build, lintian, install, namespace tests, purge"
	tests/package-test

deps:
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(APT_PACKAGES) >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(APT_PACKAGES) >/dev/null; }
	test -x $(VENV)/bin/python || $(PY_DEBIAN) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade $(PYPI_PACKAGES)

# Benchmarks (issue: 1,000 guests on one node): figures on both library sets.
bench: deps
	$(PY_DEBIAN) bench/bench.py
	$(VENV)/bin/python bench/bench.py

demo: deps
	$(PY_DEBIAN) tests/lab/demo.py

demo-down:
	$(PY_DEBIAN) tests/lab/demo.py down

# The Debian package, built from the work tree into build/.
deb:
	tests/build-deb $(CURDIR)/build
