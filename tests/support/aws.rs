//! One AWS test's slice of moto: the operator's AWS provider built exactly as the operator
//! builds it, going through the fault proxy, plus a direct client for setup and assertions.

use super::fault_proxy::FaultProxy;
use super::moto;
use aws_sdk_ec2::types::Filter;
use orb_operator::api::*;
use orb_operator::config::AwsSettings;
use orb_operator::provider::aws::AwsProvider;
use orb_operator::provider::{AnyProvider, Provider};
use std::collections::BTreeMap;

pub const CLUSTER: &str = "orb-test";

/// One test's slice of moto: a provider going through the fault proxy, a direct EC2 client for
/// setup and assertions, and an image, two subnets and a security group that exist.
pub struct Aws {
    pub provider: AnyProvider,
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    /// The moto server and this test's region, for clients of other services.
    pub moto: &'static moto::Moto,
    pub region: &'static str,
    pub proxy: FaultProxy,
    /// The provider's metrics (its AWS calls are counted here).
    pub metrics: std::sync::Arc<orb_operator::metrics::Metrics>,
    pub image: String,
    pub subnets: Vec<String>,
    pub group: String,
    /// The provider's settings, for a provider built again (an operator restarted).
    pub settings: AwsSettings,
}

pub async fn aws(test: &str) -> Option<Aws> {
    aws_with(test, |_| {}).await
}

/// `aws(test)` with a leak sweep due every minute that removes a leak as soon as it sees one.
pub async fn aws_sweeping_at_once(test: &str) -> Option<Aws> {
    aws_with(test, |s| {
        s.sweep_interval = "1m".into();
        s.sweep_grace = "0s".into();
    })
    .await
}

/// The harness with settings of the test's own (`configure` edits the defaults below).
pub async fn aws_with(test: &str, configure: impl FnOnce(&mut AwsSettings)) -> Option<Aws> {
    let moto = moto::server(test)?;
    let region = moto::region();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let mut settings = AwsSettings {
        region: region.into(),
        endpoint_url: Some(proxy.endpoint.clone()),
        max_attempts: Some(3),
        allowed_instance_profiles: vec!["worker".into()],
        // Tests see every change at once and never sweep unless they ask to.
        poll_interval: "200ms".into(),
        steady_poll_interval: "1s".into(),
        sweep_interval: "0s".into(),
        ..AwsSettings::default()
    };
    configure(&mut settings);
    let metrics = std::sync::Arc::new(orb_operator::metrics::Metrics::default());
    let provider = build_provider(&settings, &metrics).await;
    let ec2 = moto::ec2(moto, region);
    let iam = aws_sdk_iam::Client::new(&moto::sdk(moto, region).await);
    let moto::Network { image, subnets, group } = moto::network(&ec2).await;
    Some(Aws { provider, ec2, iam, moto, region, proxy, metrics, image, subnets, group, settings })
}

/// The provider exactly as the operator builds it, with moto's fixed credentials.
async fn build_provider(
    settings: &AwsSettings,
    metrics: &std::sync::Arc<orb_operator::metrics::Metrics>,
) -> AnyProvider {
    build_provider_for(settings, metrics, CLUSTER).await
}

async fn build_provider_for(
    settings: &AwsSettings,
    metrics: &std::sync::Arc<orb_operator::metrics::Metrics>,
    cluster_id: &str,
) -> AnyProvider {
    let sdk = orb_operator::provider::aws::calls::client::sdk_config(settings)
        .await
        .into_builder()
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(moto::credentials()))
        .build();
    let calls = orb_operator::provider::aws::calls::call_metrics::CallMetrics {
        provider: "default".into(),
        metrics: metrics.clone(),
    };
    AnyProvider::Aws(AwsProvider::from_sdk(&sdk, settings, cluster_id, calls))
}

impl Aws {
    /// A provider as a restarted operator would build it: nothing remembered in memory (no
    /// poller view, no launch templates, no capacity errors), the same cloud.
    pub async fn restarted(&self) -> AnyProvider {
        build_provider(&self.settings, &self.metrics).await
    }

    /// A provider of another operator on the same account and region, with `cluster_id`.
    pub async fn operator_with_cluster_id(&self, cluster_id: &str) -> AnyProvider {
        build_provider_for(&self.settings, &self.metrics, cluster_id).await
    }

    pub fn template(&self, types: &[(&str, i32)]) -> MachineTemplateSpec {
        MachineTemplateSpec {
            provider: "default".into(),
            api: Api::RunInstances,
            image_id: Some(self.image.clone()),
            instance_types: types
                .iter()
                .map(|(t, w)| InstanceTypeSpec { type_: t.to_string(), weight: *w, priority: None })
                .collect(),
            subnet_ids: self.subnets.clone(),
            security_group_ids: vec![self.group.clone()],
            tags: BTreeMap::from([("team".to_string(), "grid".to_string())]),
            ..Default::default()
        }
    }

    /// The Spot Fleet service-linked role, as an account that used Spot Fleet has it.
    pub async fn spot_fleet_role(&self) {
        moto::spot_fleet_role(&self.iam).await;
    }

    /// Instances tagged with the request's uid, straight from moto.
    pub async fn instances_of(&self, mr: &MachineRequest) -> Vec<aws_sdk_ec2::types::Instance> {
        let filter = Filter::builder().name("tag:orb.dev/request-uid").values(mr.metadata.uid.clone().unwrap()).build();
        let out = self.ec2.describe_instances().filters(filter).send().await.unwrap();
        out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect()
    }

    /// Poll cycles the provider's poller has finished, from its metrics.
    pub fn poll_cycles(&self) -> u64 {
        self.metrics
            .render([])
            .lines()
            .find_map(|l| l.strip_prefix(r#"orb_poll_cycles_total{provider="default"} "#))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// A subscription to the requests whose machines the provider's poller sees change.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<orb_operator::provider::RequestKey> {
        match &self.provider {
            AnyProvider::Aws(p) => p.changes(),
            AnyProvider::Sim(_) => unreachable!("the harness builds an AWS provider"),
        }
    }

    /// Ids of the launch templates tagged with this harness's cluster id, straight from moto.
    pub async fn launch_templates(&self) -> Vec<String> {
        let filter = Filter::builder().name("tag:orb.dev/cluster").values(CLUSTER).build();
        let out = self.ec2.describe_launch_templates().filters(filter).send().await.unwrap();
        out.launch_templates().iter().filter_map(|lt| lt.launch_template_id().map(str::to_string)).collect()
    }

    pub async fn live_of(&self, mr: &MachineRequest) -> Vec<aws_sdk_ec2::types::Instance> {
        self.instances_of(mr)
            .await
            .into_iter()
            .filter(|i| matches!(i.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("pending" | "running")))
            .collect()
    }
}

/// Releases `owner` as the controller's finalizer does: a release that waits for the poller's
/// next look is done again once the poller wakes the request (at most 10 s each time).
pub async fn release(
    provider: &AnyProvider,
    owner: &orb_operator::provider::Owner,
    holdings: orb_operator::provider::Holdings<'_>,
) -> Result<orb_operator::provider::Released, orb_operator::provider::ProviderError> {
    let AnyProvider::Aws(aws) = provider else { unreachable!("the harness builds an AWS provider") };
    // Subscribed before the first pass: its wake may come before it returns.
    let mut changes = aws.changes();
    loop {
        match provider.release(owner, holdings).await? {
            orb_operator::provider::Released::AwaitingWake => woken(&mut changes, &owner.name).await,
            released => return Ok(released),
        }
    }
}

/// Waits (at most 10 s) until the poller reports a change of `mr`'s machines on `changes`.
pub async fn changed(
    changes: &mut tokio::sync::broadcast::Receiver<orb_operator::provider::RequestKey>,
    mr: &MachineRequest,
) {
    use kube::ResourceExt;
    woken(changes, &mr.name_any()).await;
}

/// Waits (at most 10 s) until the poller wakes request `name` on `changes`.
async fn woken(changes: &mut tokio::sync::broadcast::Receiver<orb_operator::provider::RequestKey>, name: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match changes.recv().await {
                Ok(key) if key.name == name => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(closed) => panic!("the poller ended: {closed}"),
            }
        }
    })
    .await
    .expect("the poller saw the change within 10 s");
}
