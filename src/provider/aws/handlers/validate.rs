//! Template validation against the account. First the fields' shapes (`api::shape`, no call),
//! then every referenced resource must exist: the image (after `resolve:ssm:`), subnets,
//! security groups, instance types, key pair, launch template and its version, and instance
//! profile. `Ready=True` means all of them were found. Each failure names the field, down to
//! the list index (`spec.subnetIds[1]`), with the AWS code and message.

use crate::api::{Api, InstanceTypeFacts, MachineTemplateSpec};
use crate::provider::ProviderError;
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::calls::ops::{Catalogue, Ops};
use crate::provider::selection::{self, CatalogueEntry};

/// When a check of a whole list fails, checks its values one at a time and names the first
/// that fails (`field[i]`): error messages cannot be trusted to name the right one (moto names
/// any id of the request), and a list check costs one call while everything is fine.
async fn pinpoint<F, Fut>(error: ProviderError, field: &str, values: &[String], check_one: F) -> ProviderError
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ProviderError>>,
{
    if !matches!(error, ProviderError::Invalid { .. } | ProviderError::NotFound { .. }) {
        return error;
    }
    for (i, value) in values.iter().enumerate() {
        if let Err(e @ (ProviderError::Invalid { .. } | ProviderError::NotFound { .. })) =
            check_one(value.clone()).await
        {
            return at_index(e, &format!("{field}[{i}]"), "", &[]);
        }
    }
    at_index(error, field, "", &[])
}

/// Points an error at `field[i]` when its message names the i-th value.
fn at_index(error: ProviderError, field: &str, suffix: &str, values: &[String]) -> ProviderError {
    match error {
        ProviderError::Invalid { code, message, .. } | ProviderError::NotFound { code, message } => {
            let index = values.iter().position(|v| message.contains(v.as_str()));
            let field = index.map_or_else(|| field.to_string(), |i| format!("{field}[{i}]{suffix}"));
            ProviderError::Invalid { field, code, message }
        }
        other => other,
    }
}

/// What EC2 says of an instance type, as the template's status keeps it.
fn instance_type_facts(info: &aws_sdk_ec2::types::InstanceTypeInfo) -> InstanceTypeFacts {
    InstanceTypeFacts {
        type_: info.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        vcpus: info.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or_default(),
        memory_mib: info.memory_info().and_then(|m| m.size_in_mib()).unwrap_or_default(),
        architecture: info
            .processor_info()
            .and_then(|p| p.supported_architectures().first())
            .map_or_else(|| "x86_64".to_string(), |a| a.as_str().to_string()),
        weight: None,
    }
}

/// How long the region's instance type catalogue is reused: new types appear a few times a year.
const CATALOGUE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What requirements are checked against, from EC2's description of a type.
fn catalogue_entry(info: &aws_sdk_ec2::types::InstanceTypeInfo) -> CatalogueEntry {
    let facts = instance_type_facts(info);
    let count = |n: Option<i32>| i64::from(n.unwrap_or_default());
    let gpus: i64 = info.gpu_info().map_or(0, |g| g.gpus().iter().map(|d| count(d.count())).sum());
    let fpgas: i64 = info.fpga_info().map_or(0, |f| f.fpgas().iter().map(|d| count(d.count())).sum());
    let inference: i64 =
        info.inference_accelerator_info().map_or(0, |a| a.accelerators().iter().map(|d| count(d.count())).sum());
    CatalogueEntry {
        architectures: info
            .processor_info()
            .map(|p| p.supported_architectures().iter().map(|a| a.as_str().to_string()).collect())
            .unwrap_or_default(),
        manufacturer: info.processor_info().and_then(|p| p.manufacturer()).unwrap_or_default().to_string(),
        current_generation: info.current_generation().unwrap_or_default(),
        burstable: info.burstable_performance_supported().unwrap_or_default(),
        bare_metal: info.bare_metal().unwrap_or_default(),
        local_storage: info.instance_storage_supported().unwrap_or_default(),
        accelerators: gpus + fpgas + inference,
        usage_classes: info.supported_usage_classes().iter().map(|u| u.as_str().to_string()).collect(),
        type_: facts.type_,
        vcpus: facts.vcpus,
        memory_mib: facts.memory_mib,
    }
}

/// The region's instance type catalogue: read (paged) at most once an hour per provider, never
/// per request.
async fn catalogue(ops: &Ops) -> Result<Catalogue, ProviderError> {
    let mut cached = ops.catalogue.lock().await;
    if let Some((at, catalogue)) = cached.as_ref().filter(|(at, _)| at.elapsed() < CATALOGUE_TTL) {
        tracing::trace!(age = ?at.elapsed(), "instance type catalogue reused");
        return Ok(catalogue.clone());
    }
    let mut entries = vec![];
    let mut pages = ops.ec2.describe_instance_types().max_results(100).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeInstanceTypes", e))?;
        entries.extend(page.instance_types().iter().map(catalogue_entry));
    }
    let catalogue: Catalogue = std::sync::Arc::new(entries);
    *cached = Some((tokio::time::Instant::now(), catalogue.clone()));
    Ok(catalogue)
}

pub async fn template(ops: &Ops, t: &MachineTemplateSpec) -> Result<Vec<InstanceTypeFacts>, ProviderError> {
    crate::api::shape::check(t).map_err(|e| ProviderError::invalid(e.field, "InvalidParameterValue", e.message))?;
    if let Some(image) = &t.image_id {
        let ami = ops.resolve_image(image).await.map_err(|e| at_index(e, "spec.imageId", "", &[]))?;
        let exists = ops.describe_image(&ami).await.map_err(|e| at_index(e, "spec.imageId", "", &[]))?;
        if !exists {
            return Err(ProviderError::invalid(
                "spec.imageId",
                "InvalidAMIID.NotFound",
                format!("image {ami} does not exist"),
            ));
        }
    }
    if !t.subnet_ids.is_empty() {
        let subnets = |ids: Vec<String>| async move {
            ops.ec2
                .describe_subnets()
                .set_subnet_ids(Some(ids))
                .send()
                .await
                .map_err(|e| classify("DescribeSubnets", e))
        };
        match subnets(t.subnet_ids.clone()).await {
            Ok(found) => ops.remember_zones(found.subnets()),
            Err(e) => {
                return Err(pinpoint(e, "spec.subnetIds", &t.subnet_ids, |id| async move {
                    subnets(vec![id]).await.map(drop)
                })
                .await);
            }
        }
    }
    if !t.security_group_ids.is_empty() {
        let groups = |ids: Vec<String>| async move {
            ops.ec2
                .describe_security_groups()
                .set_group_ids(Some(ids))
                .send()
                .await
                .map(drop)
                .map_err(|e| classify("DescribeSecurityGroups", e))
        };
        if let Err(e) = groups(t.security_group_ids.clone()).await {
            return Err(pinpoint(e, "spec.securityGroupIds", &t.security_group_ids, |id| groups(vec![id])).await);
        }
    }
    let mut facts = vec![];
    if !t.instance_types.is_empty() {
        let names: Vec<String> = t.instance_types.iter().map(|i| i.type_.clone()).collect();
        let out = ops
            .ec2
            .describe_instance_types()
            .set_instance_types(Some(names.iter().map(|n| n.as_str().into()).collect()))
            .send()
            .await
            .map_err(|e| at_index(classify("DescribeInstanceTypes", e), "spec.instanceTypes", ".type", &names))?;
        // In the template's order (the answer's is EC2's).
        facts = names
            .iter()
            .filter_map(|name| {
                out.instance_types().iter().find(|i| i.instance_type().is_some_and(|t| t.as_str() == name))
            })
            .map(instance_type_facts)
            .collect();
    }
    if t.instance_requirements.is_some() {
        // (Not a call to EC2: the client's own configuration.)
        let region = aws_sdk_ec2::Client::config(&ops.ec2).region();
        let region = region.map_or_else(|| "this region".to_string(), |r| r.to_string());
        facts = selection::resolve_template(t, &catalogue(ops).await?, &region)?;
    }
    if let Some(key) = &t.key_name {
        ops.ec2
            .describe_key_pairs()
            .key_names(key)
            .send()
            .await
            .map_err(|e| at_index(classify("DescribeKeyPairs", e), "spec.keyName", "", &[]))
            .and_then(|out| found(!out.key_pairs().is_empty(), "spec.keyName", "InvalidKeyPair.NotFound", key))?;
    }
    if let Some(lt) = &t.launch_template {
        let chosen = launch_template(ops, lt).await?;
        // A template that leaves the type to its launch template: describe that type, so its
        // facts are known too (HostFactory's attributes).
        if let (true, Some(instance_type)) = (t.instance_types.is_empty() && t.instance_requirements.is_none(), chosen)
        {
            let out = ops
                .ec2
                .describe_instance_types()
                .instance_types(instance_type.as_str().into())
                .send()
                .await
                .map_err(|e| at_index(classify("DescribeInstanceTypes", e), "spec.launchTemplate", "", &[]))?;
            facts = out.instance_types().iter().map(instance_type_facts).collect();
        }
    }
    if t.api == Api::SpotFleet {
        ops.spot_fleet_role(t, true).await?;
    }
    if let Some(profile) = &t.instance_profile {
        let name = profile_name(profile);
        ops.iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| at_index(classify("GetInstanceProfile", e), "spec.instanceProfile", "", &[]))?;
    }
    Ok(facts)
}

/// The name of an instance profile given by name or ARN (`arn:...:instance-profile/path/name`):
/// an ARN names the profile by its last path segment.
pub fn profile_name(profile: &str) -> &str {
    profile.rsplit('/').next().unwrap_or(profile)
}

/// `Ok` when `exists`, else the field's not-found error (some describe calls answer an empty
/// list rather than an error for a name that does not exist).
fn found(exists: bool, field: &str, code: &str, what: &str) -> Result<(), ProviderError> {
    if exists { Ok(()) } else { Err(ProviderError::invalid(field, code, format!("{what} does not exist"))) }
}

/// The launch template and the version the template asks for (`$Default` when none) exist.
/// Returns the instance type that version launches, if it names one.
async fn launch_template(ops: &Ops, lt: &crate::api::LaunchTemplateRef) -> Result<Option<String>, ProviderError> {
    let what = lt.id.as_deref().or(lt.name.as_deref()).unwrap_or_default();
    let out = ops
        .ec2
        .describe_launch_templates()
        .set_launch_template_ids(lt.id.clone().map(|id| vec![id]))
        .set_launch_template_names(lt.name.clone().map(|name| vec![name]))
        .send()
        .await
        .map_err(|e| at_index(classify("DescribeLaunchTemplates", e), "spec.launchTemplate", "", &[]))?;
    let Some(found_lt) = out.launch_templates().first() else {
        return found(
            false,
            "spec.launchTemplate",
            "InvalidLaunchTemplateName.NotFoundException",
            &format!("launch template {what}"),
        )
        .map(|()| None);
    };
    let version = lt.version.clone().unwrap_or_else(|| "$Default".into());
    let versions = ops
        .ec2
        .describe_launch_template_versions()
        .set_launch_template_id(found_lt.launch_template_id().map(str::to_string))
        .versions(&version)
        .send()
        .await
        .map_err(|e| at_index(classify("DescribeLaunchTemplateVersions", e), "spec.launchTemplate.version", "", &[]))?;
    found(
        !versions.launch_template_versions().is_empty(),
        "spec.launchTemplate.version",
        "InvalidLaunchTemplateVersion.NotFound",
        &format!("version {version} of launch template {what}"),
    )?;
    Ok(versions
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .and_then(|d| d.instance_type())
        .map(|t| t.as_str().to_string()))
}
