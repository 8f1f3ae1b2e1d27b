//! Shared AWS operations (the seed's operations utility): the tags every resource gets at
//! creation, DescribeInstances by tag and by id (pages of at most 1000, always following
//! NextToken), TerminateInstances in batches, image resolution, and the conversion of EC2
//! instances into `ObservedMachine`s. Handlers build on these; they never page or batch alone.

use super::errors::classify;
use crate::provider::{InstanceState, ObservedMachine, Owner, ProviderError, tags};
use aws_sdk_ec2::types::{Filter, Instance, ResourceType, Tag, TagSpecification};
use std::collections::BTreeMap;

/// DescribeInstances page size and id-list size; TerminateInstances batch size.
pub const PAGE: usize = 1000;
/// Values of one tag filter in a listing call (EC2 accepts up to 200).
pub const TAG_VALUES: usize = 200;

/// What a listing by request uids found, and the uids whose listing failed (and why).
#[derive(Debug, Default)]
pub struct Listed {
    pub found: Vec<(Option<String>, Instance)>,
    pub failed: Vec<(String, ProviderError)>,
}

/// The AWS clients of one provider (EC2, SSM, IAM, Auto Scaling), plus the cluster id every
/// resource is tagged with.
#[derive(Clone)]
pub struct Ops {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub cluster_id: String,
    /// Subnet id -> availability zone (a subnet never moves), learnt from DescribeSubnets.
    pub zones: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    /// Operator-made launch templates: name -> id (see `launch_template`).
    pub managed_templates: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    /// (managed launch template id, request uid) -> when that request last launched from it.
    pub launch_template_uses:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), tokio::time::Instant>>>,
    /// Spot Fleet role name -> ARN, as GetRole answered.
    pub spot_fleet_roles: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    /// Fleets known to be of type `instant`: done once created (their instances carry the
    /// request's tags, their errors came with the answer), so never described again.
    pub instant_fleets: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Offerings that recently failed for capacity, skipped by every request.
    pub capacity: std::sync::Arc<super::capacity_memory::CapacityMemory>,
    /// Held while a launch template is made: requests launching together make it once.
    pub creating_templates: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Terminations, fleet deletions and spot fleet cancellations, each gathered across
    /// requests into shared calls (see `gather`).
    pub terminations: std::sync::Arc<super::gather::Gathered<Ops>>,
    pub fleet_deletions: std::sync::Arc<super::gather::Gathered<Ops>>,
    pub spot_cancellations: std::sync::Arc<super::gather::Gathered<Ops>>,
    /// The account's active fleets and spot fleet requests, listed once for the requests that
    /// look for what a lost create made at the same moment (see `gather`).
    pub fleet_listing: std::sync::Arc<super::gather::SharedListing<Ops, aws_sdk_ec2::types::FleetData>>,
    pub spot_fleet_listing:
        std::sync::Arc<super::gather::SharedListing<Ops, aws_sdk_ec2::types::SpotFleetRequestConfig>>,
    /// Fleets, spot fleet requests and groups this process deleted or cancelled: a release
    /// done again (it came back for a fresh look at the machines, or for EC2 to show what it
    /// made) sends nothing for them.
    pub removed_fleets: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Deletions of launch templates releases found unused, gathered too: requests released
    /// together check AWS's listings once and delete a shared launch template once.
    pub template_deletions: std::sync::Arc<super::gather::Gathered<Ops>>,
    /// Launch templates this process deleted: releases recording one skip it.
    pub deleted_templates: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Fleets and spot fleet requests this process has seen described: one EC2 no longer
    /// lists was there (deleted, cancelled), while one never seen may just not show yet.
    pub seen_fleets: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// The region's instance type catalogue and when it was read, for `instanceRequirements`
    /// (held while it is read: templates validated together read it once).
    pub catalogue: std::sync::Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Catalogue)>>>,
    /// AMI id -> its root device name, as DescribeImages answered: an AMI never changes, so
    /// each is described once, not once per launch.
    pub root_devices: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Option<String>>>>,
    /// Ids per DescribeInstances by id: 1000, fewer for a while after one got no answer.
    pub id_lists: std::sync::Arc<super::id_lists::IdLists>,
    /// Request uids per listing by tags: 200, fewer for a while after one got no answer.
    pub uid_lists: std::sync::Arc<super::id_lists::IdLists>,
}

/// The instance types of a region as requirements are checked against them.
pub type Catalogue = std::sync::Arc<Vec<crate::provider::selection::CatalogueEntry>>;

/// EC2's limit on a tag value, in characters.
pub const MAX_TAG_VALUE: usize = 256;

/// `text` as a tag value: unchanged when it fits, else cut and ended with a hash of the whole,
/// so that distinct long names stay distinct (a namespace and a name together can reach 317).
pub fn fit_tag_value(text: &str) -> String {
    if text.chars().count() <= MAX_TAG_VALUE {
        return text.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let head: String = text.chars().take(MAX_TAG_VALUE - hash.len() - 1).collect();
    format!("{head}~{hash}")
}

/// The `Name` tag of the request's machines. EC2 applies one tag set to every instance of a
/// launch call, so the AWS-side name is per request; the unique per-machine name is the one in
/// the request's status (`<request>-<instance id>`).
pub fn name_tag(owner: &Owner) -> String {
    fit_tag_value(&format!("{}.{}", owner.namespace, owner.name))
}

/// The operator's tags plus the template's own, operator tags winning.
pub fn resource_tags(owner: &Owner, cluster_id: &str, user: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut all: BTreeMap<String, String> = user.clone();
    all.insert(tags::CLUSTER.into(), cluster_id.into());
    all.insert(tags::REQUEST_UID.into(), owner.uid.clone());
    all.insert(tags::REQUEST.into(), fit_tag_value(&owner.key()));
    all.insert(tags::TEMPLATE.into(), fit_tag_value(&owner.template));
    all.insert("Name".into(), name_tag(owner));
    all.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// TagSpecifications for the instance and its volumes (and the spot request, for spot).
pub fn tag_specifications(tags: &[Tag], spot: bool) -> Vec<TagSpecification> {
    let mut kinds = vec![ResourceType::Instance, ResourceType::Volume];
    if spot {
        kinds.push(ResourceType::SpotInstancesRequest);
    }
    kinds
        .into_iter()
        .map(|kind| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.to_vec())).build())
        .collect()
}

fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder().name(name).set_values(Some(values.into_iter().collect())).build()
}

/// The instance as the provider reports it.
pub fn observed(instance: &Instance, reservation: Option<&str>) -> Option<ObservedMachine> {
    let id = instance.instance_id()?;
    let state = instance.state().and_then(|s| s.name()).and_then(|n| InstanceState::parse(n.as_str()))?;
    let spot = instance.instance_lifecycle().is_some_and(|l| l.as_str() == "spot");
    Some(ObservedMachine {
        instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
        capacity_type: Some(if spot { "spot" } else { "on-demand" }.into()),
        zone: instance.placement().and_then(|p| p.availability_zone()).map(str::to_string),
        subnet_id: instance.subnet_id().map(str::to_string),
        private_ip: instance.private_ip_address().map(str::to_string),
        // EC2 answers "" until it has one (and again once terminated).
        private_dns_name: instance.private_dns_name().filter(|n| !n.is_empty()).map(str::to_string),
        public_ip: instance.public_ip_address().map(str::to_string),
        launch_time: instance.launch_time().and_then(|t| jiff::Timestamp::from_second(t.secs()).ok()),
        state_reason: instance.state_reason().and_then(|r| r.message()).map(str::to_string),
        reservation_id: reservation.map(str::to_string),
        ..ObservedMachine::new(id, state)
    })
}

/// The value of tag `key` on an instance.
pub fn tag_value<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Whether `tags` (of a fleet or spot fleet request) name `owner`'s request and this cluster.
pub fn tagged_for(tags: &[Tag], owner: &Owner, cluster_id: &str) -> bool {
    let has = |key: &str, value: &str| tags.iter().any(|t| t.key() == Some(key) && t.value() == Some(value));
    has(tags::REQUEST_UID, &owner.uid) && has(tags::CLUSTER, cluster_id)
}

/// Instance ids named in an `InvalidInstanceID.NotFound` message.
fn missing_ids(error: &ProviderError) -> Vec<String> {
    let ProviderError::NotFound { message, .. } = error else { return vec![] };
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("i-"))
        .map(str::to_string)
        .collect()
}

/// Every reservation a DescribeInstances call returns, following NextToken to the last page.
async fn all_reservations(
    call: aws_sdk_ec2::operation::describe_instances::builders::DescribeInstancesFluentBuilder,
) -> Result<Vec<aws_sdk_ec2::types::Reservation>, ProviderError> {
    let mut pages = call.into_paginator().send();
    let mut reservations = vec![];
    while let Some(page) = pages.next().await {
        reservations.extend(page.map_err(|e| classify("DescribeInstances", e))?.reservations().iter().cloned());
    }
    Ok(reservations)
}

/// Follows NextToken through a listing the SDK has no paginator for: `page` gets the token
/// (none for the first page) and returns the page's items and the next token.
pub async fn follow<T, F, Fut>(mut page: F) -> Result<Vec<T>, ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let (mut all, mut token) = (vec![], None);
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        token = next.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(all);
        }
    }
}

/// Describes `ids` with `call`, leaving out the ids EC2 no longer knows: one unknown id fails
/// a whole describe call of fleets or spot fleet requests, so then each id is asked alone.
pub async fn describe_known<T, F, Fut>(ids: &[String], call: F) -> Result<Vec<T>, ProviderError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, ProviderError>>,
{
    match call(ids.to_vec()).await {
        Err(ProviderError::NotFound { .. }) if ids.len() > 1 => {
            let mut found = vec![];
            for id in ids {
                match call(vec![id.clone()]).await {
                    Ok(one) => found.extend(one),
                    Err(ProviderError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        }
        Err(ProviderError::NotFound { .. }) => Ok(vec![]),
        other => other,
    }
}

/// Calls `call` with `ids`; when EC2 answers that some ids do not exist, drops the ids it names
/// and calls again (a missing id fails a whole EC2 call). `None` when no id was left. Any other
/// error, or one that names no id, is returned.
async fn without_missing<T, F, Fut>(ids: &[String], call: F) -> Result<Option<T>, ProviderError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut ids = ids.to_vec();
    while !ids.is_empty() {
        match call(ids.clone()).await {
            Ok(value) => return Ok(Some(value)),
            Err(error) => {
                let gone = missing_ids(&error);
                let before = ids.len();
                ids.retain(|id| !gone.contains(id));
                if ids.len() == before {
                    return Err(error);
                }
            }
        }
    }
    Ok(None)
}

impl Ops {
    /// Records fleets, spot fleet requests or groups deleted or cancelled (see
    /// `removed_fleets`): EC2 knew them, so they count as seen too.
    pub fn removed(&self, ids: &[String]) {
        self.saw_fleets(ids.iter().map(String::as_str));
        let mut removed = self.removed_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        removed.extend(ids.iter().cloned());
    }

    /// Of `ids`, those this process has not deleted or cancelled.
    pub fn not_removed(&self, ids: &[String]) -> Vec<String> {
        let removed = self.removed_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter().filter(|id| !removed.contains(*id)).cloned().collect()
    }

    /// Records fleets or spot fleet requests a describe showed.
    pub fn saw_fleets<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut seen = self.seen_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.extend(ids.into_iter().map(str::to_string));
    }

    /// Of `ids`, those neither `listed` now nor ever seen described by this process: made
    /// moments ago and not shown by EC2 yet (it is eventually consistent), rather than gone.
    pub fn not_shown_yet(&self, ids: &[String], listed: &[&str]) -> Vec<String> {
        let seen = self.seen_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter().filter(|id| !listed.contains(&id.as_str()) && !seen.contains(*id)).cloned().collect()
    }

    /// Records the zones of described subnets.
    pub fn remember_zones(&self, subnets: &[aws_sdk_ec2::types::Subnet]) {
        let mut zones = self.zones.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in subnets {
            if let (Some(id), Some(zone)) = (s.subnet_id(), s.availability_zone()) {
                zones.insert(id.to_string(), zone.to_string());
            }
        }
    }

    /// The capacity-memory key of an offering: `None` when the type or subnet is left to a
    /// launch template (the memory then does not apply).
    pub async fn offering(
        &self,
        instance_type: Option<&str>,
        subnet: Option<&str>,
        spot: bool,
    ) -> Option<super::capacity_memory::Offering> {
        let (instance_type, subnet) = (instance_type?, subnet?);
        Some((instance_type.to_string(), self.zone_of(subnet).await?, spot))
    }

    /// Remembers instant fleets (see `instant_fleets`).
    pub fn remember_instant(&self, ids: impl IntoIterator<Item = String>) {
        self.instant_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(ids);
    }

    /// Whether fleet `id` is known to be of type `instant`.
    pub fn is_instant(&self, id: &str) -> bool {
        self.instant_fleets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(id)
    }

    /// The availability zone of a subnet, described once and then remembered.
    pub async fn zone_of(&self, subnet: &str) -> Option<String> {
        let known = self.zones.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(subnet).cloned();
        if known.is_some() {
            return known;
        }
        let out = self.ec2.describe_subnets().subnet_ids(subnet).send().await.ok()?;
        self.remember_zones(out.subnets());
        out.subnets().first().and_then(|s| s.availability_zone()).map(str::to_string)
    }

    /// Every instance of this cluster tagged with one of the request uids `uids`, in all
    /// states EC2 still reports, with its reservation: in calls filtering on at most 200 uids
    /// (fewer for a while after one got no answer in time: see `id_lists`). A call that fails
    /// fails only its own uids: the others' instances are found all the same.
    pub async fn list_by_uids(&self, uids: &[String]) -> Listed {
        let mut listed = Listed::default();
        for (list, outcome) in
            self.uid_lists.each("DescribeInstances by request uid", uids, |list| self.list_once(list)).await
        {
            match outcome {
                Ok(found) => listed.found.extend(found),
                Err(error) => listed.failed.extend(list.into_iter().map(|uid| (uid, error.clone()))),
            }
        }
        listed
    }

    async fn list_once(&self, uids: Vec<String>) -> Result<Vec<(Option<String>, Instance)>, ProviderError> {
        let filters = vec![
            filter(&format!("tag:{}", tags::REQUEST_UID), uids),
            filter(&format!("tag:{}", tags::CLUSTER), [self.cluster_id.clone()]),
        ];
        let call = self.ec2.describe_instances().set_filters(Some(filters)).max_results(PAGE as i32);
        Ok(all_reservations(call)
            .await?
            .iter()
            .flat_map(|r| r.instances().iter().map(|i| (r.reservation_id().map(str::to_string), i.clone())))
            .collect())
    }

    /// The given instances, in id lists of at most 1000 (fewer after a call got no answer in
    /// time: see `id_lists`), following NextToken; ids EC2 no longer knows are left out.
    pub async fn describe_by_ids(&self, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = vec![];
        let lists = self.id_lists.each("DescribeInstances", ids, |list| async move {
            without_missing(&list, |ids| self.describe_ids_once(ids)).await
        });
        for (_, outcome) in lists.await {
            instances.extend(outcome?.unwrap_or_default());
        }
        Ok(instances)
    }

    async fn describe_ids_once(&self, ids: Vec<String>) -> Result<Vec<Instance>, ProviderError> {
        let reservations = all_reservations(self.ec2.describe_instances().set_instance_ids(Some(ids))).await?;
        Ok(reservations.iter().flat_map(|r| r.instances().iter().cloned()).collect())
    }

    /// Terminates instances, in one call with other requests' terminations made at the same
    /// moment (see `gather`); ids that are already gone count as terminated.
    pub async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError> {
        self.terminations.call(self, ids).await
    }

    /// Terminates instances now, in calls of up to 1000; ids that are already gone count as
    /// terminated.
    pub async fn terminate_now(&self, ids: &[String]) -> Result<(), ProviderError> {
        for chunk in ids.chunks(PAGE) {
            without_missing(chunk, |ids| async move {
                self.ec2
                    .terminate_instances()
                    .set_instance_ids(Some(ids))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| classify("TerminateInstances", e))
            })
            .await?;
        }
        Ok(())
    }

    /// An AMI id for `image`: itself, or the value of the SSM parameter of `resolve:ssm:<name>`.
    pub async fn resolve_image(&self, image: &str) -> Result<String, ProviderError> {
        let Some(parameter) = image.strip_prefix("resolve:ssm:") else { return Ok(image.to_string()) };
        let out = self.ssm.get_parameter().name(parameter).send().await.map_err(|e| classify("GetParameter", e))?;
        out.parameter().and_then(|p| p.value()).map(str::to_string).ok_or_else(|| {
            ProviderError::invalid(
                "spec.imageId",
                "ParameterNotFound",
                format!("SSM parameter {parameter} has no value"),
            )
        })
    }

    /// Whether AMI `ami` exists (for this account), remembering its root device name: an AMI
    /// never changes, so a launch after the template's validation describes nothing.
    pub async fn describe_image(&self, ami: &str) -> Result<bool, ProviderError> {
        let out = self.ec2.describe_images().image_ids(ami).send().await.map_err(|e| classify("DescribeImages", e))?;
        let Some(image) = out.images().first() else { return Ok(false) };
        let device = image.root_device_name().map(str::to_string);
        self.root_devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ami.to_string(), device);
        Ok(true)
    }

    /// The root device name of an AMI (where `rootVolume` applies), described once per AMI.
    pub async fn root_device(&self, ami: &str) -> Result<Option<String>, ProviderError> {
        let known =
            |ops: &Self| ops.root_devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(ami).cloned();
        if known(self).is_none() {
            self.describe_image(ami).await?;
        }
        Ok(known(self).flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner { uid: "u-1".into(), namespace: "grid".into(), name: "batch".into(), template: "workers".into() }
    }

    #[test]
    fn every_resource_carries_the_operator_tags_and_the_users() {
        let user = BTreeMap::from([("team".to_string(), "hpc".to_string()), ("Name".to_string(), "mine".to_string())]);
        let tags: BTreeMap<_, _> = resource_tags(&owner(), "blue", &user)
            .into_iter()
            .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
            .collect();
        assert_eq!(tags["orb.dev/cluster"], "blue");
        assert_eq!(tags["orb.dev/request-uid"], "u-1");
        assert_eq!(tags["orb.dev/request"], "grid/batch");
        assert_eq!(tags["orb.dev/template"], "workers");
        assert_eq!(tags["Name"], "grid.batch", "the operator's Name wins");
        assert_eq!(tags["team"], "hpc");
    }

    #[test]
    fn long_names_are_cut_to_ec2s_limit_and_stay_distinct() {
        let long = |name: &str| Owner {
            uid: "u".into(),
            namespace: "n".repeat(63),
            name: name.repeat(253),
            template: "t".into(),
        };
        let values = |owner: &Owner| -> BTreeMap<String, String> {
            resource_tags(owner, "c", &BTreeMap::new())
                .into_iter()
                .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
                .collect()
        };
        let (a, b) = (values(&long("a")), values(&long("b")));
        assert!(a.values().all(|v| v.chars().count() <= MAX_TAG_VALUE), "{a:?}");
        assert_ne!(a["orb.dev/request"], b["orb.dev/request"]);
        assert_eq!(fit_tag_value("grid/batch"), "grid/batch", "short values are unchanged");
    }

    #[test]
    fn spot_launches_also_tag_the_spot_request() {
        let kinds = |spot| -> Vec<String> {
            tag_specifications(&[], spot).iter().map(|s| s.resource_type().unwrap().as_str().to_string()).collect()
        };
        assert_eq!(kinds(false), ["instance", "volume"]);
        assert_eq!(kinds(true), ["instance", "volume", "spot-instances-request"]);
    }

    #[tokio::test]
    async fn ids_ec2_no_longer_knows_are_left_out_of_a_describe() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let ids: Vec<String> = ["fleet-a", "fleet-gone", "fleet-c"].map(String::from).to_vec();
        let found = describe_known(&ids, |asked: Vec<String>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if asked.iter().any(|id| id == "fleet-gone") {
                    Err(ProviderError::NotFound { code: "InvalidFleetId.NotFound".into(), message: "gone".into() })
                } else {
                    Ok(asked)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(found, ["fleet-a", "fleet-c"], "the known ones, not nothing");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4, "one call, then one per id");
        let error = describe_known(&ids, |_| async {
            Err::<Vec<String>, _>(ProviderError::Throttled {
                code: "RequestLimitExceeded".into(),
                message: "slow".into(),
            })
        })
        .await;
        assert!(matches!(error, Err(ProviderError::Throttled { .. })), "other errors are not hidden");
    }

    #[test]
    fn missing_ids_are_read_from_not_found_messages() {
        let e = ProviderError::NotFound {
            code: "InvalidInstanceID.NotFound".into(),
            message: "TerminateInstances: The instance IDs 'i-0123, i-0456' do not exist".into(),
        };
        assert_eq!(missing_ids(&e), ["i-0123", "i-0456"]);
        assert!(missing_ids(&ProviderError::Transient { code: "x".into(), message: "i-1".into() }).is_empty());
    }
}
