//! One `SdkConfig` per configured AWS provider: region, optional shared-config profile,
//! optional AssumeRole (with external id), optional endpoint (emulators), the SDK's standard
//! retry mode and bounded timeouts so that no reconcile hangs on the network (the per-attempt
//! bound lives in `limits`, after the rate limiter's wait). Every client of
//! a provider is built from it and shares its HTTP connection pool.

use super::limits;
use crate::config::AwsSettings;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// Attempts per call when the config does not say (the SDK's standard mode default).
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The SDK's operation timeout for the provider's calls: long enough for a call queued behind
/// the provider's budget (`limits::operation_timeout`).
pub fn operation_timeout(settings: &AwsSettings) -> Duration {
    limits::operation_timeout(attempts(settings), settings.rates())
}

fn attempts(settings: &AwsSettings) -> u32 {
    settings.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
}

/// Builds the SDK configuration for one provider.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(attempts(settings)))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(operation_timeout(settings))
                .connect_timeout(Duration::from_secs(5))
                .build(),
        )
        // The SDK starts timing an upload before the provider's rate limiter lets it go, so a
        // call queued behind the budget for its 5 s grace would fail as a stalled upload —
        // for a create, an unknown outcome and a replay. A request body here is a few KiB;
        // each attempt is bounded once sent (`limits`), and stalled downloads are still caught.
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().upload_enabled(false).build());
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let base = loader.load().await;
    let Some(role) = &settings.role_arn else { return base };
    let mut assume = aws_config::sts::AssumeRoleProvider::builder(role).session_name("orb-operator").configure(&base);
    if let Some(id) = &settings.external_id {
        assume = assume.external_id(id);
    }
    let credentials = assume.build().await;
    base.into_builder().credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(credentials)).build()
}

/// The HTTPS client every AWS client of a provider shares (the SDK's default: hyper 1 with
/// rustls on aws-lc, proxies from the environment), built here so that the provider's rate
/// limiter can wrap it.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig, tls};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// An EC2 client that never calls out: for tests that inspect the request a call would send.
#[cfg(test)]
pub fn offline() -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}
