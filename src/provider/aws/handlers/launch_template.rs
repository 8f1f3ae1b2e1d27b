//! Launch templates for the fleet APIs. A template that names its own `launchTemplate` is used
//! as-is (its instance types and subnets become overrides). Otherwise the operator makes one
//! from the template's launch fields — image, key, user data, instance profile, root volume,
//! security groups, and the tags every instance gets — named after the template and a hash of
//! those fields, so one launch template serves every request of a template generation and a
//! change of launch fields makes a new one. It is created once (with a ClientToken, found by
//! name after a restart), remembered, and deleted when the last request using it is released
//! and no active fleet or group AWS lists launches from it.
//!
//! The shared launch template cannot carry a request's uid: fleets of type `request` and
//! `maintain` tag their instances only through it, so those instances are found through their
//! fleet (`FleetView::members`). Instant fleets tag their instances per request at launch.

use crate::api::MachineTemplateSpec;
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{Owner, ProviderError, tags};
use aws_sdk_ec2::types::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateIamInstanceProfileSpecificationRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How long a managed launch template another request launched from is kept by a release: AWS
/// may not list that request's fleet yet, nor the cache show its status.
const RECENT_USE: std::time::Duration = std::time::Duration::from_secs(120);

/// Tag on an operator-made launch template naming its template's namespace (the template's
/// name is in `orb.dev/template`).
pub const NAMESPACE_TAG: &str = "orb.dev/namespace";

/// The launch template a fleet launches from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchTemplate {
    pub id: Option<String>,
    pub name: Option<String>,
    pub version: String,
    /// Made by the operator (recorded in the request's status, deleted on release).
    pub managed: bool,
}

/// Tags of an operator-made launch template, and of the instances launched from it.
fn shared_tags(owner: &Owner, cluster_id: &str, user: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut all = user.clone();
    all.insert(tags::CLUSTER.into(), cluster_id.into());
    all.insert(tags::TEMPLATE.into(), ops::fit_tag_value(&owner.template));
    all.insert(NAMESPACE_TAG.into(), ops::fit_tag_value(&owner.namespace));
    all.insert("Name".into(), ops::fit_tag_value(&format!("{}.{}", owner.namespace, owner.template)));
    all.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// The launch data of a template whose image is resolved to `image` and whose AMI's root device
/// is `root_device`.
pub fn launch_data(
    template: &MachineTemplateSpec,
    image: Option<String>,
    root_device: Option<String>,
    instance_tags: &[Tag],
) -> RequestLaunchTemplateData {
    let t = template;
    let mut data = RequestLaunchTemplateData::builder().set_image_id(image).set_key_name(t.key_name.clone());
    if !t.security_group_ids.is_empty() {
        data = data.set_security_group_ids(Some(t.security_group_ids.clone()));
    }
    if let Some(text) = &t.user_data {
        data = data.user_data(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if let Some(profile) = &t.instance_profile {
        let spec = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
        data = data.iam_instance_profile(
            if profile.starts_with("arn:") { spec.arn(profile) } else { spec.name(profile) }.build(),
        );
    }
    if let Some(root) = &t.root_volume {
        let ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
            .set_volume_size(root.size_gi_b)
            .set_volume_type(root.type_.as_deref().map(VolumeType::from))
            .set_iops(root.iops)
            .set_throughput(root.throughput)
            .set_encrypted(root.encrypted)
            .set_kms_key_id(root.kms_key_id.clone())
            .delete_on_termination(true)
            .build();
        data = data.block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(root_device.unwrap_or_else(|| "/dev/xvda".into()))
                .ebs(ebs)
                .build(),
        );
    }
    for kind in [ResourceType::Instance, ResourceType::Volume] {
        data = data.tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(kind)
                .set_tags(Some(instance_tags.to_vec()))
                .build(),
        );
    }
    data.build()
}

/// What shapes a launch from an operator-made launch template, in a stable text: the template's
/// launch fields with the image resolved, the root device and the instance tags. (Not the SDK
/// value's `Debug`: it hides user data.)
fn fingerprint(template: &MachineTemplateSpec, image: Option<&str>, root_device: Option<&str>, tags: &[Tag]) -> String {
    let t = template;
    let tags: Vec<(&str, &str)> =
        tags.iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect();
    serde_json::json!({
        "image": image,
        "key": t.key_name,
        "userData": t.user_data,
        "profile": t.instance_profile,
        "rootVolume": t.root_volume,
        "rootDevice": root_device,
        "securityGroups": t.security_group_ids,
        "tags": tags,
    })
    .to_string()
}

/// The deterministic name of the launch template for a launch `fingerprint`: the template's
/// namespace and name (cut to fit) and a hash of everything that shapes a launch.
pub fn managed_name(owner: &Owner, cluster_id: &str, fingerprint: &str) -> String {
    let digest = Sha256::digest(format!("{cluster_id}/{}/{}/{fingerprint}", owner.namespace, owner.template));
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let readable: String = format!("orb-{cluster_id}-{}-{}", owner.namespace, owner.template)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "().-/_".contains(c) { c } else { '-' })
        .take(128 - hash.len() - 1)
        .collect();
    format!("{readable}-{hash}")
}

impl Ops {
    /// The launch template a fleet of `template` uses: the template's own, or the operator's
    /// for its launch fields (made on first use).
    pub async fn launch_template(
        &self,
        owner: &Owner,
        template: &MachineTemplateSpec,
    ) -> Result<LaunchTemplate, ProviderError> {
        if let Some(given) = &template.launch_template {
            return Ok(LaunchTemplate {
                id: given.id.clone(),
                name: given.name.clone(),
                version: given.version.clone().unwrap_or_else(|| "$Default".into()),
                managed: false,
            });
        }
        let image = match &template.image_id {
            Some(image) => Some(self.resolve_image(image).await?),
            None => None,
        };
        let root_device = match (&template.root_volume, &image) {
            (Some(_), Some(ami)) => self.root_device(ami).await?,
            _ => None,
        };
        let tags = shared_tags(owner, &self.cluster_id, &template.tags);
        let name = managed_name(
            owner,
            &self.cluster_id,
            &fingerprint(template, image.as_deref(), root_device.as_deref(), &tags),
        );
        let data = launch_data(template, image, root_device, &tags);
        let known =
            || self.managed_templates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&name).cloned();
        // Requests of one template launching together would each create it (and then look it
        // up after AlreadyExists): the first makes it, the others wait and reuse it.
        let _making = match known() {
            Some(_) => None,
            None => Some(self.creating_templates.lock().await),
        };
        let id = match known() {
            Some(id) => id,
            None => {
                let id = self.create_launch_template(&name, data, tags).await?;
                self.managed_templates
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.clone(), id.clone());
                id
            }
        };
        self.launch_template_used(&id, &owner.uid);
        Ok(LaunchTemplate { id: Some(id), name: None, version: "1".into(), managed: true })
    }

    /// Records that request `uid` launches from managed launch template `id` now, and forgets
    /// uses older than `RECENT_USE`.
    fn launch_template_used(&self, id: &str, uid: &str) {
        let mut uses = self.launch_template_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        uses.retain(|_, at| at.elapsed() < RECENT_USE);
        uses.insert((id.to_string(), uid.to_string()), tokio::time::Instant::now());
    }

    /// Forgets the launches of request `uid`: it is being released (or orphaned) and keeps no
    /// launch template of its own any more. Returns the launch templates it launched from lately.
    pub fn forget_launch_template_uses(&self, uid: &str) -> Vec<String> {
        let mut uses = self.launch_template_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let used = uses.keys().filter(|(_, user)| user == uid).map(|(lt, _)| lt.clone()).collect();
        uses.retain(|(_, user), _| user != uid);
        used
    }

    /// Whether a request other than `uid` launched from launch template `id` within
    /// `RECENT_USE`: what it made may not be listed by AWS yet, nor its status be in the cache.
    fn used_lately_by_another(&self, id: &str, uid: &str) -> bool {
        let uses = self.launch_template_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        uses.iter().any(|((lt, user), at)| lt == id && user != uid && at.elapsed() < RECENT_USE)
    }

    /// Creates the launch template `name`, or finds it when it already exists (a restart, or
    /// an answer lost). No ClientToken: the name makes the creation idempotent, and a token
    /// repeated after a release deleted the template could be answered with the deleted one.
    async fn create_launch_template(
        &self,
        name: &str,
        data: RequestLaunchTemplateData,
        tags: Vec<Tag>,
    ) -> Result<String, ProviderError> {
        let created = self
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(data)
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::LaunchTemplate).set_tags(Some(tags)).build(),
            )
            .send()
            .await;
        match created {
            Ok(out) => {
                out.launch_template().and_then(|lt| lt.launch_template_id()).map(str::to_string).ok_or_else(|| {
                    ProviderError::Transient {
                        code: "NoLaunchTemplateId".into(),
                        message: format!("CreateLaunchTemplate {name}: no id in the answer"),
                    }
                })
            }
            Err(error) => {
                let error = classify("CreateLaunchTemplate", error);
                if !error.code().contains("AlreadyExists") {
                    return Err(error);
                }
                let found = self
                    .ec2
                    .describe_launch_templates()
                    .launch_template_names(name)
                    .send()
                    .await
                    .map_err(|e| classify("DescribeLaunchTemplates", e))?;
                found.launch_templates().first().and_then(|lt| lt.launch_template_id()).map(str::to_string).ok_or(error)
            }
        }
    }

    /// A managed launch template that vanished (deleted as another request was released, or by
    /// the leak sweep) is made again on the replay: the error is worth retrying, not a fault of
    /// the template. EC2 says `InvalidLaunchTemplate*`; Auto Scaling a `ValidationError` naming
    /// the launch template.
    pub fn launch_template_gone(&self, lt: &LaunchTemplate, error: ProviderError) -> ProviderError {
        let code = error.code();
        let gone = code.starts_with("InvalidLaunchTemplate")
            || (code == "ValidationError" && error.to_string().to_lowercase().contains("launch template"));
        if lt.managed && gone {
            if let Some(id) = &lt.id {
                self.forget_launch_template(id);
            }
            return ProviderError::Transient { code: code.into(), message: error.to_string() };
        }
        error
    }

    /// A new version of managed launch template `id` whose instances and volumes carry
    /// `orb.dev/orphaned` besides its tags: what an orphaned fleet launches from from then on.
    /// Its version number. (The fleets of live requests keep launching from version 1.)
    pub async fn orphaned_version(&self, id: &str) -> Result<String, ProviderError> {
        // Version 1 is what the operator made; a later version carrying the mark is one an
        // earlier orphaning (of this request or another) made: reused, not made again.
        let described = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(id)
            .versions("1")
            .versions("$Latest")
            .send()
            .await
            .map_err(|e| classify("DescribeLaunchTemplateVersions", e))?;
        let versions = described.launch_template_versions();
        let marked = |v: &&aws_sdk_ec2::types::LaunchTemplateVersion| {
            v.version_number() != Some(1)
                && v.launch_template_data().is_some_and(|d| {
                    d.tag_specifications().iter().any(|s| s.tags().iter().any(|t| t.key() == Some(tags::ORPHANED)))
                })
        };
        if let Some(n) = versions.iter().find(marked).and_then(|v| v.version_number()) {
            return Ok(n.to_string());
        }
        let data = versions.iter().find(|v| v.version_number() == Some(1)).and_then(|v| v.launch_template_data());
        let mark = Tag::builder().key(tags::ORPHANED).value("true").build();
        let specs = data
            .map(|d| d.tag_specifications())
            .unwrap_or_default()
            .iter()
            .map(|spec| {
                let mut marked = spec.tags().to_vec();
                marked.push(mark.clone());
                LaunchTemplateTagSpecificationRequest::builder()
                    .set_resource_type(spec.resource_type().cloned())
                    .set_tags(Some(marked))
                    .build()
            })
            .collect();
        let created = self
            .ec2
            .create_launch_template_version()
            .launch_template_id(id)
            .source_version("1")
            .launch_template_data(RequestLaunchTemplateData::builder().set_tag_specifications(Some(specs)).build())
            .send()
            .await
            .map_err(|e| classify("CreateLaunchTemplateVersion", e))?;
        created.launch_template_version().and_then(|v| v.version_number()).map(|n| n.to_string()).ok_or_else(|| {
            ProviderError::Transient {
                code: "NoLaunchTemplateVersion".into(),
                message: format!("CreateLaunchTemplateVersion {id}: no version number in the answer"),
            }
        })
    }

    /// Forgets a remembered launch template id (it was deleted behind the operator's back).
    pub fn forget_launch_template(&self, id: &str) {
        self.managed_templates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, v| v != id);
    }

    /// Of `candidates` (operator-made launch templates a released request recorded), those no
    /// other request uses by what this process knows: not recorded by another request in the
    /// cache (`in_use`), not launched from by another request lately, not deleted already. No
    /// call: a release lists no launch templates.
    pub fn unused_launch_templates(&self, owner: &Owner, in_use: &[String], candidates: &[String]) -> Vec<String> {
        let deleted = self.deleted_templates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut unused: Vec<String> = candidates
            .iter()
            .filter(|id| !in_use.contains(id) && !deleted.contains(*id) && !self.used_lately_by_another(id, &owner.uid))
            .cloned()
            .collect();
        unused.sort();
        unused.dedup();
        unused
    }

    /// This cluster's launch templates carrying every tag of `with` (all pages).
    pub async fn cluster_launch_templates(
        &self,
        with: &[(&str, String)],
    ) -> Result<Vec<aws_sdk_ec2::types::LaunchTemplate>, ProviderError> {
        let filters = [(tags::CLUSTER, self.cluster_id.clone())]
            .iter()
            .chain(with)
            .map(|(key, value)| aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build())
            .collect();
        let mut pages = self.ec2.describe_launch_templates().set_filters(Some(filters)).into_paginator().send();
        let mut found = vec![];
        while let Some(page) = pages.next().await {
            found.extend(page.map_err(|e| classify("DescribeLaunchTemplates", e))?.launch_templates().iter().cloned());
        }
        Ok(found)
    }

    /// Every launch template this cluster made for `owner`'s template (all its generations):
    /// what a create whose answer was lost may have made and recorded nowhere. One listing,
    /// made only for such a release.
    pub async fn launch_templates_of_template(&self, owner: &Owner) -> Result<Vec<String>, ProviderError> {
        let with = [
            (tags::TEMPLATE, ops::fit_tag_value(&owner.template)),
            (NAMESPACE_TAG, ops::fit_tag_value(&owner.namespace)),
        ];
        let found = self.cluster_launch_templates(&with).await?;
        Ok(found.iter().filter_map(|lt| lt.launch_template_id()).map(str::to_string).collect())
    }

    /// Deletes launch template `id` (one already gone is fine) and forgets it: nothing may
    /// launch from it any more (a new one is made).
    pub async fn delete_launch_template(&self, id: &str) -> Result<(), ProviderError> {
        self.forget_launch_template(id);
        let deleted = match self.ec2.delete_launch_template().launch_template_id(id).send().await {
            Ok(_) => {
                tracing::info!(launch_template = %id, "deleted the operator's launch template");
                Ok(())
            }
            Err(error) => match classify("DeleteLaunchTemplate", error) {
                e if matches!(e, ProviderError::NotFound { .. }) || e.code().contains("NotFound") => Ok(()),
                e => Err(e),
            },
        };
        if deleted.is_ok() {
            // Later releases of requests that recorded it skip it.
            self.deleted_templates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_string());
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RootVolume;

    fn owner() -> Owner {
        Owner { uid: "u-1".into(), namespace: "grid".into(), name: "batch".into(), template: "workers".into() }
    }

    fn template() -> MachineTemplateSpec {
        MachineTemplateSpec {
            image_id: Some("ami-12345678".into()),
            security_group_ids: vec!["sg-1".into()],
            key_name: Some("ops".into()),
            user_data: Some("#!/bin/sh\n".into()),
            instance_profile: Some("worker".into()),
            root_volume: Some(RootVolume { size_gi_b: Some(40), ..Default::default() }),
            tags: BTreeMap::from([("team".to_string(), "hpc".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn the_launch_data_carry_every_launch_field_and_the_shared_tags() {
        let t = template();
        let tags = shared_tags(&owner(), "blue", &t.tags);
        let data = launch_data(&t, Some("ami-12345678".into()), Some("/dev/sda1".into()), &tags);
        assert_eq!(data.image_id(), Some("ami-12345678"));
        assert_eq!(data.key_name(), Some("ops"));
        assert_eq!(data.security_group_ids(), ["sg-1"]);
        assert_eq!(data.iam_instance_profile().and_then(|p| p.name()), Some("worker"));
        let root = &data.block_device_mappings()[0];
        assert_eq!(root.device_name(), Some("/dev/sda1"));
        assert_eq!(root.ebs().and_then(|e| e.volume_size()), Some(40));
        let decoded = base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap();
        assert_eq!(decoded, b"#!/bin/sh\n");
        let spec = &data.tag_specifications()[0];
        let keys: Vec<_> = spec.tags().iter().map(|t| t.key().unwrap()).collect();
        assert_eq!(keys, ["Name", "orb.dev/cluster", "orb.dev/namespace", "orb.dev/template", "team"]);
        assert!(!keys.contains(&"orb.dev/request-uid"), "shared by every request of the template");
    }

    #[test]
    fn the_name_is_stable_and_changes_with_the_launch_fields() {
        let t = template();
        let tags = shared_tags(&owner(), "blue", &t.tags);
        let name = |t: &MachineTemplateSpec| {
            managed_name(&owner(), "blue", &fingerprint(t, t.image_id.as_deref(), None, &tags))
        };
        assert_eq!(name(&t), name(&t.clone()));
        assert!(name(&t).starts_with("orb-blue-grid-workers-"), "{}", name(&t));
        let other = MachineTemplateSpec { key_name: Some("other".into()), ..template() };
        assert_ne!(name(&t), name(&other));
        let script = MachineTemplateSpec { user_data: Some("#!/bin/sh\necho changed\n".into()), ..template() };
        assert_ne!(name(&t), name(&script), "a user data edit makes a new launch template");
        let long = Owner { namespace: "n".repeat(63), template: "t".repeat(253), ..owner() };
        let long_name = managed_name(&long, "blue", &fingerprint(&t, None, None, &tags));
        assert!(long_name.len() <= 128, "{}", long_name.len());
    }
}
