"""Checks charts/orb-operator with Helm's own code (helm-python-sdk wraps Helm v4's library: lint,
offline render, values-schema validation) and validates every rendered manifest, and the chart's
CRDs, against the Kubernetes schemas of the oldest and newest supported versions
(kubernetes-validate ships them offline). Run by tests/chart.rs; exits non-zero on a failure."""

import copy
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "orb-operator"
VERSIONS = ["1.26.0", "1.35.0"]


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def render(values=None):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name="orb", namespace="orb-system", is_install=True)
    objects = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            objects.extend(docs(text))
    return objects, out


def validate(objects, what):
    for obj in objects:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except Exception as error:  # noqa: BLE001 - report any schema failure with its object
                sys.exit(f"{what}: {obj['kind']} {obj['metadata'].get('name')} is invalid for Kubernetes {version}: {error}")


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orb-operator-interruptions"


def main():
    report = helm.lint(str(CHART), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, f"helm lint --strict: {problems}"

    crds = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in docs(f.read_text())]
    assert sorted(c["metadata"]["name"] for c in crds) == ["machinerequests.orb.dev", "machinetemplates.orb.dev"]
    validate(crds, "crds/")

    # Defaults: a ClusterRole, the sim config, a locked-down pod.
    objects, out = render()
    validate(objects, "defaults")
    assert by_kind(objects, "ClusterRole"), "defaults watch every namespace"
    # Leader election: a Role on leases in the release namespace only, two replicas, a PDB.
    lease_role = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-lease")]
    assert len(by_kind(objects, "Role")) == 1 and len(lease_role) == 1, by_kind(objects, "Role")
    assert lease_role[0]["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}]
    assert lease_role[0]["metadata"]["namespace"] == "orb-system"
    assert by_kind(objects, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert container["args"][-3:] == ["--log-format", "json", "--leader-elect=true"], container["args"]
    assert [e["name"] for e in container["env"]][:2] == ["POD_NAMESPACE", "POD_NAME"], container["env"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert by_kind(objects, "Service")[0]["spec"]["ports"][0]["port"] == 8080, "the metrics Service"
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # Rendered offline there is no kube-system namespace to derive a unique clusterId from: the
    # shared default, under which the operator keeps its leak sweep off.
    config = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["config.yaml"])
    assert config == {"clusterId": "orb", "providers": {"default": {"type": "sim"}}}, config
    assert "orb-operator" in out["orb-operator/templates/NOTES.txt"]

    # The RBAC is the plain manifests' (deploy/operator.yaml): one set of rules for both installs.
    plain = [d for d in docs((ROOT / "deploy" / "operator.yaml").read_text()) if d["kind"] == "ClusterRole"][0]
    assert by_kind(objects, "ClusterRole")[0]["rules"] == plain["rules"], "chart and deploy/ grant the same"

    # One namespace: a Role and RoleBinding there, and the operator told to watch only it.
    objects, _ = render({"watchNamespace": "grid"})
    validate(objects, "watchNamespace")
    role = [r for r in by_kind(objects, "Role") if not r["metadata"]["name"].endswith("-lease")][0]
    assert role["metadata"]["namespace"] == "grid" and not by_kind(objects, "ClusterRole")
    binding = [b for b in by_kind(objects, "RoleBinding") if not b["metadata"]["name"].endswith("-lease")][0]
    assert binding["metadata"]["namespace"] == "grid"
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--namespace", "grid"], args

    # IRSA on the ServiceAccount, an AWS provider, text logs, nothing replicated.
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/orb-operator"}
    values = {
        "serviceAccount": {"annotations": irsa},
        "config": {"clusterId": "prod", "providers": {"default": {"type": "aws", "region": "us-east-1", "allowedInstanceProfiles": ["grid-worker"], "interruptionQueue": QUEUE}}},
        "env": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
        "logFormat": "text",
        "replicas": 0,
    }
    objects, _ = render(values)
    validate(objects, "aws")
    assert by_kind(objects, "ServiceAccount")[0]["metadata"]["annotations"] == irsa
    config = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["config.yaml"])
    assert config["providers"]["default"]["interruptionQueue"] == QUEUE, config
    container = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "text" in container["args"]
    assert container["env"][-1]["name"] == "AWS_STS_REGIONAL_ENDPOINTS"
    objects, _ = render({"metrics": {"service": False}})
    assert not by_kind(objects, "Service"), "metrics off: no Service"
    # One replica without a lease: never two pods side by side, no lease RBAC, no PDB.
    objects, _ = render({"replicas": 1, "leaderElection": False})
    validate(objects, "one replica")
    deployment = by_kind(objects, "Deployment")[0]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--leader-elect=false" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not by_kind(objects, "Role") and not by_kind(objects, "PodDisruptionBudget")
    # A ServiceMonitor for the Prometheus Operator (its CRD is not in the offline schemas).
    objects, _ = render({"metrics": {"service": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = by_kind(objects, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == by_kind(objects, "Service")[0]["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    objects, _ = render({"serviceAccount": {"create": False, "name": "existing"}})
    assert not by_kind(objects, "ServiceAccount")
    assert by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"

    # values.schema.json refuses bad values, naming them.
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(chart.values)
    defaults = chart.values
    bad = [
        ({"replicas": 2, "leaderElection": False}, "replicas"),
        ({"metrics": {"service": True, "serviceMonitor": {"interval": "often"}}}, "interval"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespace": "Grid"}, "watchNamespace"),
        ({"config": {"providers": {"default": {"type": "gcp"}}}}, "type"),
        ({"config": {"providers": {"spare": {"region": "us-east-1"}}}}, "type"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"config": {"providers": {"default": {"type": "aws", "interruptionQueue": ""}}}}, "interruptionQueue"),
        ({"replica": 1}, "replica"),
    ]
    for change, name in bad:
        values = copy.deepcopy(defaults)
        values.update(change)
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as error:
            assert name in str(error), f"{change}: the error should name {name}: {error}"
            continue
        sys.exit(f"values.schema.json accepted {change}")
    print("chart: lint, 5 renders x 2 Kubernetes versions, schema: ok")


if __name__ == "__main__":
    main()
