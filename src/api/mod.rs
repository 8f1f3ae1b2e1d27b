//! The CRD types users write (`MachineTemplate`, `MachineRequest`) and condition helpers.
//! Owns the API schema and its admission rules; does no I/O.

pub mod conditions;
pub mod duration;
pub mod request;
pub mod shape;
pub mod template;

pub use request::*;
pub use template::*;

/// The label/annotation/tag prefix the operator reserves.
pub const RESERVED_PREFIX: &str = "orb.dev/";

/// Each CRD as YAML with the file name it is committed under in `crds/`.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(vec![
        ("orb.dev_machinetemplates.yaml", format!("---\n{}", serde_yaml::to_string(&MachineTemplate::crd())?)),
        ("orb.dev_machinerequests.yaml", format!("---\n{}", serde_yaml::to_string(&MachineRequest::crd())?)),
    ])
}

/// Both CRDs as one multi-document YAML, in a stable order (what `orb-operator crd` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}
