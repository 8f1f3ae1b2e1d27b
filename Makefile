# orb-operator: `make run` starts the operator (simulated cloud by default), `make test` runs
# every test, installing what the tests need (a Python virtualenv with moto) on first use.

CARGO ?= cargo
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
MOTO_VERSION := 5.2.5

# The tests find moto_server here.
export ORB_TEST_MOTO_SERVER := $(VENV)/bin/moto_server

.PHONY: test check run crds fmt clippy venv clean-venv

# End-to-end tests run last and uncaptured, so their SKIPPED line (no ORB_E2E_KUBECONFIG) or
# the operator's log (with a cluster) is visible.
E2E := --test e2e_sim --test e2e_aws

test: venv
	$(CARGO) test --locked --all-targets -- --skip against_a_real_cluster
	$(CARGO) test --locked $(E2E) -- --nocapture

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(MAKE) test

run:
	$(CARGO) run --locked -- run

crds:
	$(CARGO) run --locked -q -- crd --dir crds
	$(CARGO) run --locked -q -- crd > deploy/crds.yaml

fmt:
	$(CARGO) fmt

venv: $(VENV)/.moto-$(MOTO_VERSION)

$(VENV)/.moto-$(MOTO_VERSION):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)'
	touch $@

clean-venv:
	rm -rf $(VENV)
