//! The Helm chart, checked with Helm's own code: `tests/chart/check_chart.py` lints it
//! (`--strict`), renders it offline for the default values and for non-default ones (one watched
//! namespace, IRSA, an AWS provider, text logs, an existing ServiceAccount), validates every
//! rendered manifest and the chart's CRDs against the Kubernetes schemas of 1.26 and 1.35, checks
//! the pod's hardening and that the RBAC equals deploy/'s, and that `values.schema.json` refuses
//! bad values by name. Needs the virtualenv `make test` prepares (helm-python-sdk,
//! kubernetes-validate); without it the test says SKIPPED, except in CI where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [std::env::var_os("ORB_TEST_PYTHON").map(PathBuf::from), Some(root.join(".venv/bin/python"))];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import helm_python, kubernetes_validate, yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_chart_lints_renders_validates_and_refuses_bad_values() {
    let Some(python) = python() else {
        assert!(std::env::var_os("CI").is_none(), "helm-python-sdk not installed; `make test` installs it into .venv");
        eprintln!("SKIPPED the_chart_lints_renders_validates_and_refuses_bad_values: run `make venv` or `make test`");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/check_chart.py");
    let output = Command::new(python).arg(script).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "chart check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}
