# orb-operator: `make run` starts the operator (simulated cloud by default), `make test` runs
# every test, installing what the tests need (a Python virtualenv with moto, and Helm's SDK and
# the Kubernetes schemas for the chart checks) on first use.

CARGO ?= cargo
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
MOTO_VERSION := 5.2.5
HELM_SDK_VERSION := 0.2.2
KUBERNETES_VALIDATE_VERSION := 1.37.0
PY_DEPS := moto-$(MOTO_VERSION)-helm-$(HELM_SDK_VERSION)-kv-$(KUBERNETES_VALIDATE_VERSION)

# The tests find moto_server and the Python with the chart tooling here.
export ORB_TEST_MOTO_SERVER := $(VENV)/bin/moto_server
export ORB_TEST_PYTHON := $(VENV)/bin/python

.PHONY: test check run crds fmt clippy venv clean-venv

# End-to-end tests run last and uncaptured, so their SKIPPED line (no ORB_E2E_KUBECONFIG) or
# the operator's log (with a cluster) is visible.
E2E := --test e2e_sim --test e2e_aws --test e2e_hostfactory --test e2e_chaos --test e2e_ha --test e2e_chart --test e2e_scale

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
	$(CARGO) run --locked -q -- crd --dir charts/orb-operator/crds

fmt:
	$(CARGO) fmt

venv: $(VENV)/.deps-$(PY_DEPS)

$(VENV)/.deps-$(PY_DEPS):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)' \
		'helm-python-sdk==$(HELM_SDK_VERSION)' 'kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)' pyyaml
	touch $@

clean-venv:
	rm -rf $(VENV)
