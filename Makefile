# orb-operator: `make run` starts the operator (simulated cloud by default), `make test` runs
# every test, installing what the tests need (a Python virtualenv with moto, and Helm's SDK and
# the Kubernetes schemas for the chart checks, RE2 for the CRD patterns) on first use.
# `make e2e` runs the end-to-end tests against a real API server (DEVELOPERS.md).

CARGO ?= cargo
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
MOTO_VERSION := 5.2.5
HELM_SDK_VERSION := 0.2.2
KUBERNETES_VALIDATE_VERSION := 1.37.0
GOOGLE_RE2_VERSION := 1.1.20251105
PY_DEPS := moto-$(MOTO_VERSION)-helm-$(HELM_SDK_VERSION)-kv-$(KUBERNETES_VALIDATE_VERSION)-re2-$(GOOGLE_RE2_VERSION)

# The tests find moto_server and the Python with the chart tooling here.
export ORB_TEST_MOTO_SERVER := $(VENV)/bin/moto_server
export ORB_TEST_PYTHON := $(VENV)/bin/python

.PHONY: test e2e check run crds fmt clippy venv clean-venv

# End-to-end tests run last and uncaptured, so their SKIPPED line or the operator's log is
# visible. tests/e2e/with-apiserver runs them against a throwaway etcd + kube-apiserver per
# Kubernetes version whose binaries it finds (ORB_E2E_ASSETS, or ~/.local/share/orb-e2e/*/),
# or against ORB_E2E_KUBECONFIG's cluster; `make test` runs them without one (each says
# SKIPPED) when there is none, `make e2e` fails saying what it needs.
E2E := --test e2e_install --test e2e_sim --test e2e_aws --test e2e_hostfactory --test e2e_chaos --test e2e_ha \
	--test e2e_chart --test e2e_scale
E2E_TESTS := $(CARGO) test --locked --no-fail-fast $(E2E) -- --nocapture

test: venv
	$(CARGO) test --locked --all-targets -- --skip against_a_real_cluster
	tests/e2e/with-apiserver --or-skip $(E2E_TESTS)

e2e: venv
	$(CARGO) test --locked --no-run $(E2E)
	tests/e2e/with-apiserver $(E2E_TESTS)

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
		'helm-python-sdk==$(HELM_SDK_VERSION)' 'kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)' \
		'google-re2==$(GOOGLE_RE2_VERSION)' pyyaml
	touch $@

clean-venv:
	rm -rf $(VENV)
