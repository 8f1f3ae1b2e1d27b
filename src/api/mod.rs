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

/// The longest name a MachineTemplate or MachineRequest may have: the Events about an object are
/// named `<name>.<16 hex digits>`, and Kubernetes refuses names over 253 characters.
pub const MAX_NAME_LEN: usize = 253 - 17;

/// The admission rule that holds names to `MAX_NAME_LEN`.
fn name_fits_event_names() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.metadata.name.size() <= {MAX_NAME_LEN}")).message(kube::core::Message::Message(
        format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters, so that the Events about it can be named after it"
        ),
    ))
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

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
