//! AWS error classification: every SDK error becomes a `ProviderError` of one class (throttled,
//! capacity, not-found, invalid, auth, transient) that keeps the AWS code and message. Errors
//! caused by a template field name that field (`spec.imageId`, ...).

use crate::provider::ProviderError;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// No capacity for one offering (instance type, zone, market): another may have some.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InsufficientVolumeCapacity",
    "SpotMaxPriceTooLow",
    "Unsupported",
];

/// Account-wide limits: no other instance type or subnet helps.
const LIMIT: &[&str] = &["InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"];

const AUTH: &[&str] = &[
    "UnauthorizedOperation",
    "AuthFailure",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "OptInRequired",
    "Blocked",
    "UnrecognizedClientException",
];

/// Worth retrying as they are. Expired credentials and request signatures belong here: the SDK
/// refreshes credentials, and a clock or refresh race must not stop a request.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
];

/// The template field an error code is about, if it is about one.
pub fn field_for(code: &str) -> Option<&'static str> {
    Some(match code {
        c if c.starts_with("InvalidAMIID") || c == "ParameterNotFound" => "spec.imageId",
        c if c.starts_with("InvalidSubnetID") || c == "InvalidSubnet" => "spec.subnetIds",
        c if c.starts_with("InvalidGroup") || c.starts_with("InvalidSecurityGroupID") => "spec.securityGroupIds",
        c if c.starts_with("InvalidKeyPair") => "spec.keyName",
        c if c.starts_with("InvalidLaunchTemplate") => "spec.launchTemplate",
        "InvalidInstanceType" => "spec.instanceTypes",
        "InvalidUserData.Malformed" => "spec.userData",
        "TagLimitExceeded" => "spec.tags",
        c if c.starts_with("InvalidBlockDeviceMapping") => "spec.rootVolume",
        _ => return None,
    })
}

/// A fleet or spot fleet request that EC2 reports it did not delete or cancel: worth retrying
/// (the release stays in progress), and never to be ignored — it would replace what is
/// terminated next.
/// `what` says which and how (`fleet fleet-1 was not deleted`).
pub fn not_removed(call: &str, what: &str, code: Option<&str>, message: Option<&str>, fallback: &str) -> ProviderError {
    ProviderError::Transient {
        code: code.unwrap_or(fallback).to_string(),
        message: format!("{call}: {what}: {}", message.unwrap_or("no message")),
    }
}

/// Classifies an AWS error code and message.
pub fn classify_code(code: &str, message: &str, http_status: Option<u16>) -> ProviderError {
    let (code, message) = (code.to_string(), message.to_string());
    if THROTTLED.contains(&code.as_str()) {
        ProviderError::Throttled { code, message }
    } else if CAPACITY.contains(&code.as_str()) {
        ProviderError::Capacity { code, message }
    } else if LIMIT.contains(&code.as_str()) {
        ProviderError::Limit { code, message }
    } else if code == "IdempotentParameterMismatch" {
        ProviderError::TokenConflict { code, message }
    } else if TRANSIENT.contains(&code.as_str()) {
        ProviderError::Transient { code, message }
    } else if AUTH.contains(&code.as_str()) {
        ProviderError::Auth { code, message }
    } else if let Some(field) = field_for(&code) {
        ProviderError::Invalid { field: field.into(), code, message }
    } else if code.ends_with(".NotFound") || code.ends_with("NotFoundException") || code == "NoSuchEntity" {
        ProviderError::NotFound { code, message }
    } else if TRANSIENT.contains(&code.as_str()) || http_status.is_some_and(|s| s >= 500) {
        ProviderError::Transient { code, message }
    } else if code.starts_with("Invalid")
        || code.starts_with("Missing")
        || code == "ValidationError"
        || code == "UnsupportedOperation"
    {
        ProviderError::Invalid { field: "spec".into(), code, message }
    } else {
        ProviderError::Transient { code, message }
    }
}

/// Whether a connector error is a describe that got no answer in time (`limits::NoAnswer`).
fn no_answer(error: Option<&aws_smithy_runtime_api::client::result::ConnectorError>) -> bool {
    error.and_then(std::error::Error::source).is_some_and(|e| e.is::<super::limits::NoAnswer>())
}

/// Classifies any SDK error. `call` names the AWS operation for the message.
pub fn classify<E>(call: &str, error: SdkError<E>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message = format!("{call}: {}", e.message().unwrap_or("no message"));
            classify_code(code, &message, Some(service.raw().status().as_u16()))
        }
        SdkError::TimeoutError(_) => {
            ProviderError::Transient { code: "Timeout".into(), message: format!("{call}: no answer in time") }
        }
        // The attempt's own time ran out (`limits`): no answer, which a caller may act on.
        SdkError::DispatchFailure(d) if d.is_timeout() || no_answer(d.as_connector_error()) => {
            let why = d.as_connector_error().and_then(std::error::Error::source).map(ToString::to_string);
            ProviderError::Transient {
                code: "Timeout".into(),
                message: format!("{call}: {}", why.as_deref().unwrap_or("no answer in time")),
            }
        }
        SdkError::DispatchFailure(d) => ProviderError::Transient {
            code: "DispatchFailure".into(),
            message: format!("{call}: cannot reach the endpoint: {:?}", d.as_connector_error()),
        },
        SdkError::ResponseError(r) => ProviderError::Transient {
            code: "ResponseError".into(),
            message: format!("{call}: unreadable response (HTTP {}): {error}", r.raw().status().as_u16()),
        },
        _ => {
            let code = error.code().unwrap_or("Unknown").to_string();
            ProviderError::Transient { message: format!("{call}: {error}"), code }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_into_their_classes() {
        let class = |code: &str, status| classify_code(code, "m", status).category();
        assert_eq!(class("RequestLimitExceeded", Some(503)), "Throttled");
        assert_eq!(class("InsufficientInstanceCapacity", Some(500)), "Capacity", "capacity wins over the 5xx status");
        assert_eq!(class("UnauthorizedOperation", Some(403)), "Auth");
        assert_eq!(class("InvalidInstanceID.NotFound", Some(400)), "NotFound");
        assert_eq!(class("InternalError", Some(500)), "Transient");
        assert_eq!(class("SomethingNew", Some(502)), "Transient");
        assert_eq!(class("InvalidParameterCombination", Some(400)), "Invalid");
    }

    #[test]
    fn the_classes_the_review_found_misfiled() {
        let class = |code: &str| classify_code(code, "m", Some(400)).category();
        assert_eq!(class("ExpiredToken"), "Transient", "a credential refresh race is not a spec error");
        assert_eq!(class("RequestExpired"), "Transient");
        assert_eq!(class("InsufficientVolumeCapacity"), "Capacity");
        assert_eq!(class("VcpuLimitExceeded"), "Limit");
        assert_eq!(class("InstanceLimitExceeded"), "Limit");
        assert_eq!(class("MaxSpotInstanceCountExceeded"), "Limit");
        assert_eq!(class("IdempotentParameterMismatch"), "TokenConflict");
        assert_eq!(class("NoSuchEntity"), "NotFound");
        assert_eq!(
            classify_code("TagLimitExceeded", "m", Some(400)),
            ProviderError::invalid("spec.tags", "TagLimitExceeded", "m")
        );
    }

    #[test]
    fn errors_about_a_template_field_name_it() {
        let e = classify_code("InvalidAMIID.NotFound", "The image id '[ami-1]' does not exist", Some(400));
        assert_eq!(
            e,
            ProviderError::invalid("spec.imageId", "InvalidAMIID.NotFound", "The image id '[ami-1]' does not exist")
        );
        assert!(e.is_terminal());
        let field = |code| match classify_code(code, "m", Some(400)) {
            ProviderError::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field("InvalidSubnetID.NotFound"), "spec.subnetIds");
        assert_eq!(field("InvalidGroup.NotFound"), "spec.securityGroupIds");
        assert_eq!(field("InvalidInstanceType"), "spec.instanceTypes");
        assert_eq!(field("ParameterNotFound"), "spec.imageId");
    }
}
