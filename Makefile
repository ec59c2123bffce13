# pvenat developer entry points. Run as root: the tests and the demo build network namespaces.
#   make demo      a simulated PVE host in namespaces and the flows pvenat makes work
#                  (KEEP=1 leaves it up; make demo-down removes it)
#   make test-lab  the namespace lab suite, on Debian's libraries
#   make test      lint; the unit and namespace tests on Debian's libraries and on PyPI's; the
#                  Debian package built and tested in Debian roots of its own (bookworm,
#                  trixie); the README's first commands in fresh Debian roots
#   make deb       build/pvenat_*_all.deb, built in a Debian root of its own
#   make bench     the benchmarks, on both library sets
#
# What they install on this machine, only where missing (tests/apt-missing: no package
# already there is upgraded, replaced or removed):
#   demo:          DEMO_PACKAGES, and Debian's ifupdown2 unpacked into $PVENAT_CACHE (not
#                  installed; .cache by default)
#   test-lab:      also LAB_PACKAGES
#   deb:           DEB_PACKAGES
#   test, bench:   all of these, TEST_PACKAGES, and PYPI_PACKAGES in the virtualenv .venv

PY_DEBIAN := /usr/bin/python3
# Downloads kept between runs (Debian roots, ifupdown2, apt's .debs) and the virtualenv;
# both may live outside the checkout, so that a new clone reuses them (.ci/run does).
export PVENAT_CACHE ?= $(CURDIR)/.cache
VENV := $(or $(PVENAT_VENV),.venv)
DEMO_PACKAGES := iptables iproute2 conntrack openssl procps dnsmasq-base python3 \
	python3-proxmoxer python3-yaml python3-structlog python3-requests
LAB_PACKAGES := python3-pytest python3-hypothesis busybox dhcpcd-base
DEB_PACKAGES := mmdebstrap
TEST_PACKAGES := python3-venv gcc git
PYPI_PACKAGES := proxmoxer requests PyYAML structlog pytest hypothesis flake8
SUITES := bookworm trixie

.PHONY: test lint test-debian test-pypi test-package test-fresh test-lab deps deps-demo \
	deps-lab deps-deb bench demo demo-down deb

test: deps lint test-debian test-pypi test-package test-fresh

lint:
	$(VENV)/bin/flake8 pvehook tests bench hookscripts tests/package-test tests/fresh-root

test-debian:
	@echo "== tests on Debian's libraries: $$($(PY_DEBIAN) -c 'from importlib.metadata import version as v; print(*[f"{p} {v(p)}" for p in ("proxmoxer", "structlog", "PyYAML")])')"
	$(PY_DEBIAN) -m pytest -q tests

test-pypi:
	@echo "== tests on current PyPI releases: $$($(VENV)/bin/python -c 'from importlib.metadata import version as v; print(*[f"{p} {v(p)}" for p in ("proxmoxer", "structlog", "PyYAML")])')"
	$(VENV)/bin/python -m pytest -q tests

test-package:
	@for suite in $(SUITES); do \
		echo "== the Debian package on $$suite: build, lintian, install, namespace tests, upgrade, remove, purge"; \
		tests/package-test $$suite || exit 1; \
	done

test-fresh:
	@for suite in $(SUITES); do \
		echo "== the README's first commands in a fresh Debian $$suite root"; \
		tests/fresh-root $$suite || exit 1; \
	done

test-lab: deps-lab
	$(PY_DEBIAN) -m pytest -q tests/lab

deps-demo:
	tests/apt-missing $(DEMO_PACKAGES)
	tests/lab/private-ifupdown2 $(PVENAT_CACHE)/ifupdown2

deps-lab: deps-demo
	tests/apt-missing $(LAB_PACKAGES)

deps-deb:
	tests/apt-missing $(DEB_PACKAGES)

deps: deps-lab deps-deb
	tests/apt-missing $(TEST_PACKAGES)
	tests/pypi-venv $(VENV) $(PYPI_PACKAGES)

bench: deps
	$(PY_DEBIAN) bench/bench.py
	$(VENV)/bin/python bench/bench.py

demo: deps-demo
	$(PY_DEBIAN) tests/lab/demo.py

demo-down:
	$(PY_DEBIAN) tests/lab/demo.py down

# The Debian package a PVE host installs, built from the work tree into build/.
deb: deps-deb
	tests/package-test --deb $(CURDIR)/build
