//! `moto_server` for the AWS tests: started once per test binary on a free port (and stopped
//! with it), found at `ORB_TEST_MOTO_SERVER` (set by `make test`) or `.venv/bin/moto_server`.
//! Tests isolate by region: each asks `region()` for one nobody else in the binary uses.
//!
//! moto gaps the tests work around: it ignores ClientToken (a repeated token launches again, so
//! crash safety is proven by the tag lookup), instances are `running` at once, RunInstances
//! accepts images that do not exist (our validation must refuse them), and it has no real
//! capacity or throttling (the fault proxy injects those). Its tag lookup scans every tag of the
//! region for each instance, which makes tag listings quadratic; `moto_site/sitecustomize.py`
//! makes it a lookup (same answers) in the moto this starts.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "sa-east-1",
    "af-south-1",
    "ap-east-1",
    "ap-northeast-3",
    "ap-south-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "eu-central-2",
    "eu-south-1",
    "eu-south-2",
    "me-south-1",
    "me-central-1",
    "il-central-1",
    "ca-west-1",
];

pub struct Moto {
    pub endpoint: String,
    /// The watchdog shell; it ends with this process, so it is never waited for here.
    _watchdog: std::process::Child,
}

fn binary() -> Option<PathBuf> {
    let from_env = std::env::var("ORB_TEST_MOTO_SERVER").ok().map(PathBuf::from);
    let in_venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    from_env.into_iter().chain([in_venv]).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start() -> Option<Moto> {
    let binary = binary()?;
    let port = free_port();
    // A watchdog shell ends moto when this test process goes away, however it ends.
    let script = r#"m="$1"; p="$2"; parent="$3"; "$m" -H 127.0.0.1 -p "$p" >/dev/null 2>&1 & child=$!
        trap 'kill $child 2>/dev/null' EXIT
        while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done"#;
    // moto's tag lookup made a dict lookup (see the file): tag listings cost what EC2's do.
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto_site");
    let mut watchdog = Command::new("bash")
        .args(["-c", script, "moto-watchdog"])
        .env("PYTHONPATH", site)
        .arg(&binary)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("moto_server started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Moto { endpoint: format!("http://127.0.0.1:{port}"), _watchdog: watchdog });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watchdog.kill();
    let _ = watchdog.wait();
    panic!("moto_server ({}) did not listen on port {port} within 60s", binary.display());
}

/// The shared moto server, or `None` (test skipped, said on stderr) when moto is not installed
/// outside CI. In CI (`CI` set) a missing moto fails the test.
pub fn server(test: &str) -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    let moto = MOTO.get_or_init(start).as_ref();
    if moto.is_none() {
        assert!(std::env::var_os("CI").is_none(), "{test}: moto_server not found; `make test` installs it into .venv");
        eprintln!("SKIPPED {test}: moto_server not found (run `make venv` or `make test`)");
    }
    moto
}

/// A region no other test in this binary uses.
pub fn region() -> &'static str {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, Ordering::SeqCst);
    REGIONS
        .get(i)
        .copied()
        .unwrap_or_else(|| panic!("more than {} AWS tests in one binary: add regions", REGIONS.len()))
}

/// The fixed credentials moto accepts.
pub fn credentials() -> aws_sdk_ec2::config::Credentials {
    aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "orb-tests")
}

/// An SDK configuration straight to moto (no proxy), for clients other than EC2.
pub async fn sdk(moto: &Moto, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(credentials())
        .load()
        .await
}

/// An EC2 client straight to moto (no proxy, no retries), for setting up and checking.
pub fn ec2(moto: &Moto, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(region.to_string()))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(credentials())
            .build(),
    )
}

/// What exists in a fresh moto region: an AMI, two default subnets, the default security group.
pub struct Network {
    pub image: String,
    pub subnets: Vec<String>,
    pub group: String,
}

pub async fn network(ec2: &aws_sdk_ec2::Client) -> Network {
    let images = ec2.describe_images().owners("amazon").send().await.unwrap();
    let subnets = ec2.describe_subnets().send().await.unwrap();
    let groups = ec2.describe_security_groups().send().await.unwrap();
    Network {
        image: images.images()[0].image_id().unwrap().to_string(),
        subnets: subnets.subnets().iter().take(2).map(|s| s.subnet_id().unwrap().to_string()).collect(),
        group: groups.security_groups()[0].group_id().unwrap().to_string(),
    }
}

/// `network` with two subnets of 32,763 addresses (halves of a new VPC 10.0.0.0/16, in zones a
/// and b) and that VPC's default security group: moto's default subnets are /20s of 4,091
/// addresses, and a full one makes its launches fail with HTTP 500 — too few for a benchmark of
/// 1,000 requests of 5.
pub async fn wide_network(ec2: &aws_sdk_ec2::Client, region: &str, network: Network) -> Network {
    let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let mut subnets = vec![];
    for (cidr, zone) in [("10.0.0.0/17", "a"), ("10.0.128.0/17", "b")] {
        let subnet = ec2.create_subnet().vpc_id(&vpc).cidr_block(cidr).availability_zone(format!("{region}{zone}"));
        subnets.push(subnet.send().await.unwrap().subnet().unwrap().subnet_id().unwrap().to_string());
    }
    let in_vpc = aws_sdk_ec2::types::Filter::builder().name("vpc-id").values(&vpc).build();
    let groups = ec2.describe_security_groups().filters(in_vpc).send().await.unwrap();
    let group = groups.security_groups()[0].group_id().unwrap().to_string();
    Network { subnets, group, ..network }
}

/// Everything of `cluster` still alive in a test's own region: Auto Scaling groups, active
/// fleets and spot fleet requests, pending or running instances (any: the region is the
/// test's), and launch templates tagged for the cluster. Empty when a test left nothing behind.
pub async fn leftovers(moto: &Moto, region: &str, cluster: &str) -> Vec<String> {
    let ec2 = ec2(moto, region);
    let mut left = vec![];
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk(moto, region).await);
    let groups = autoscaling.describe_auto_scaling_groups().send().await.unwrap();
    for g in groups.auto_scaling_groups() {
        left.push(format!("Auto Scaling group {}", g.auto_scaling_group_name().unwrap()));
    }
    let fleets = ec2.describe_fleets().send().await.unwrap();
    for f in fleets.fleets() {
        let state = f.fleet_state().unwrap().as_str();
        if matches!(state, "submitted" | "active" | "modifying") {
            left.push(format!("fleet {} {state}", f.fleet_id().unwrap()));
        }
    }
    let requests = ec2.describe_spot_fleet_requests().send().await.unwrap();
    for c in requests.spot_fleet_request_configs() {
        let state = c.spot_fleet_request_state().unwrap().as_str();
        if !state.starts_with("cancelled") {
            left.push(format!("spot fleet request {} {state}", c.spot_fleet_request_id().unwrap()));
        }
    }
    let instances = ec2.describe_instances().send().await.unwrap();
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if state == "pending" || state == "running" {
            left.push(format!("instance {} {state}", i.instance_id().unwrap()));
        }
    }
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:orb.dev/cluster").values(cluster).build();
    let templates = ec2.describe_launch_templates().filters(filter).send().await.unwrap();
    for lt in templates.launch_templates() {
        let tags: Vec<String> = lt
            .tags()
            .iter()
            .map(|t| format!("{}={}", t.key().unwrap_or_default(), t.value().unwrap_or_default()))
            .collect();
        left.push(format!(
            "launch template {} {} {tags:?}",
            lt.launch_template_id().unwrap(),
            lt.launch_template_name().unwrap_or_default()
        ));
    }
    left
}

/// The Spot Fleet service-linked role, as an account that used Spot Fleet has it (IAM is
/// global in moto: another test may have made it already).
pub async fn spot_fleet_role(iam: &aws_sdk_iam::Client) {
    let created = iam
        .create_role()
        .role_name("AWSServiceRoleForEC2SpotFleet")
        .path("/aws-service-role/spotfleet.amazonaws.com/")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"spotfleet.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await;
    if let Err(e) = created {
        let text = format!("{e:?}");
        assert!(text.contains("EntityAlreadyExists"), "{text}");
    }
}

/// The environment that points the operator binary's `default` provider at this moto region,
/// tagging with `cluster`.
pub fn operator_env<'a>(moto: &'a Moto, region: &'a str, cluster: &'a str) -> [(&'static str, &'a str); 7] {
    [
        ("ORB_PROVIDERS__DEFAULT__TYPE", "aws"),
        ("ORB_PROVIDERS__DEFAULT__REGION", region),
        ("ORB_PROVIDERS__DEFAULT__ENDPOINT_URL", moto.endpoint.as_str()),
        ("ORB_CLUSTER_ID", cluster),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// Pending or running instances tagged with the request uid `uid`.
pub async fn live_tagged(ec2: &aws_sdk_ec2::Client, uid: &str) -> usize {
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:orb.dev/request-uid").values(uid).build();
    ec2.describe_instances()
        .filters(filter)
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| matches!(i.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("pending" | "running")))
        .count()
}

/// The example AWS template `example` (under `examples/`) on this network, one capacity unit
/// per machine (its first instance type, weight 1): what the end-to-end tests count.
pub fn example_template(example: &str, network: &Network) -> orb_operator::api::MachineTemplate {
    let mut template: orb_operator::api::MachineTemplate = super::cluster::example(example);
    template.spec.image_id = Some(network.image.clone());
    template.spec.subnet_ids = network.subnets.clone();
    template.spec.security_group_ids = vec![network.group.clone()];
    template.spec.instance_types.truncate(1);
    template.spec.instance_types[0].weight = 1;
    template
}

/// An end-to-end test's cloud: moto (required once a cluster is given), a fresh region with a
/// network, the Spot Fleet service-linked role, and an EC2 client for assertions.
pub async fn e2e_cloud(test: &str) -> (&'static Moto, &'static str, aws_sdk_ec2::Client, Network) {
    let moto = server(test).expect("moto is required with a cluster");
    let region = region();
    let ec2 = ec2(moto, region);
    let network = network(&ec2).await;
    spot_fleet_role(&aws_sdk_iam::Client::new(&sdk(moto, region).await)).await;
    (moto, region, ec2, network)
}
