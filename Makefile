# kvmctl: one YAML cockpit spec -> pinned, hugepage-backed libvirt guests.
#
#   make demo    set this host up, then run the example cockpit
#   make test    set this host up, then lint and run the whole test suite
#
# `make setup` takes a fresh Debian 12 to ready (root or sudo needed) and is quick
# when repeated: no apt/pip work when nothing changed, Ansible reports changed=0.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV     ?= .venv
export VENV
BIN      := $(VENV)/bin
PY       := $(BIN)/python
PYTEST   ?= $(BIN)/pytest
PYTEST_ARGS ?=
SPEC     ?= examples/cockpit.yaml

export ANSIBLE_CONFIG := $(CURDIR)/ansible/ansible.cfg
# Tools from the venv first (ansible-lint looks its helpers up on PATH).
export PATH := $(CURDIR)/$(BIN):$(PATH)
ANSIBLE_INVENTORY_FILE ?= ansible/inventory/localhost.ini

.NOTPARALLEL:
.PHONY: help setup venv host images demo test unit integration lint bench clean

help:
	@echo "make demo         set up this host, then run the example cockpit"
	@echo "make test         set up this host, then lint and run unit + integration tests"
	@echo "make setup        Debian packages, .venv, Ansible role kvm_host on localhost, guest images"
	@echo "make lint         ruff, mypy --strict (all of kvmctl), ansible-lint"
	@echo "make unit | integration | bench"

## setup: fresh Debian 12 -> venv, host prepared (packages, hugepages, daemons), images
setup: venv host images

venv:
	@scripts/bootstrap.sh

host: venv
	@echo "[setup] ansible-playbook ansible/site.yml on localhost"
	@$(BIN)/ansible-playbook -i $(ANSIBLE_INVENTORY_FILE) ansible/site.yml

# Guest images built from Debian packages: the test guests (kernel + busybox
# initramfs) and the debian-12 disk image (a few minutes cold, seconds warm; see
# guest-images/README.md). Needs the host packages (`make host`), not the venv.
images:
	@echo "[setup] guest-images/build.sh"
	@guest-images/build.sh

## demo: set up, then run the example cockpit
SCREENS  ?= cockpit.png

demo: setup
	$(BIN)/kvmctl doctor
	$(BIN)/kvmctl apply $(SPEC)
	$(BIN)/kvmctl status $(SPEC)
	$(BIN)/kvmctl screens $(SPEC) -o $(SCREENS)
	@echo "The cockpit's screens: $(abspath $(SCREENS))"
	@echo "The cockpit keeps running. Remove it with: $(BIN)/kvmctl destroy $(SPEC)"

## test: set up, then lint, unit and integration tests (each must run at least one
## test); lint and the unit tests run beside the integration tests that must not
## share libvirtd with others, so both CPUs stay busy
test: setup
	@BESIDE_EXCLUSIVE="$(MAKE) --no-print-directory lint unit" $(MAKE) --no-print-directory integration

UNIT_WORKERS ?= 2
unit:
	$(PYTEST) tests/unit -n $(UNIT_WORKERS) $(PYTEST_ARGS)

# In three parts (scripts/integration.sh): the tests that restart libvirtd or run
# the host role, with only tests that use no libvirtd beside them; then, on two
# workers, a module at a time each, everything that may share the host; then the
# tests that dedicate a CPU, one at a time, beside those that create no kvmctl
# set. Each pytest must run a test; the target fails if any failed.
INTEGRATION_WORKERS ?= 2

integration:
	scripts/integration.sh "$(PYTEST)" $(INTEGRATION_WORKERS) $(PYTEST_ARGS)

# Strict mypy (pyproject.toml) over the whole package, not only the pure layers.
RUFF_PATHS := kvmctl tests bench
MYPY_PATHS := kvmctl

lint:
	$(BIN)/ruff check $(RUFF_PATHS)
	$(BIN)/mypy $(MYPY_PATHS)
	cd ansible && ../$(BIN)/ansible-lint --offline

## bench: every bench/*.py, one after the other (bench/_*.py are shared helpers)
bench:
	@shopt -s nullglob; files=(bench/[!_]*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks in bench/"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f"; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
