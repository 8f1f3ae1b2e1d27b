"""Installs or uninstalls charts/orb-operator into a real cluster with Helm's own code
(helm-python-sdk), for tests/e2e_chart.rs:

    helm_release.py install <kubeconfig> <namespace> <release> [values as JSON]
    helm_release.py uninstall <kubeconfig> <namespace> <release>

Exits non-zero, with Helm's error, when Helm fails."""

import json
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "orb-operator"


def main():
    action, kubeconfig, namespace, release = sys.argv[1:5]
    config = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    if action == "install":
        values = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
        installed = config.install(str(CHART), release, values, namespace=namespace)
        print(f"installed {release} in {namespace}: {installed}")
    elif action == "uninstall":
        config.uninstall(release)
        print(f"uninstalled {release}")
    else:
        sys.exit(f"unknown action {action}: install or uninstall")


if __name__ == "__main__":
    main()
