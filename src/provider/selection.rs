//! Attribute-based instance selection: which instance types of a catalogue satisfy a template's
//! `instanceRequirements`, which of those it launches from, and each one's weight. Pure: the
//! providers bring the catalogue (EC2's `DescribeInstanceTypes`, the simulator's own list).
//!
//! The rule, as the README states it: the candidates are ordered smallest first (vCPUs, then
//! memory, then name); the first pick is the smallest type of every family (`m5`, `c6i`, ...),
//! families in the order of their smallest type, then the second smallest of every family, and
//! so on until the limit. Small types first keep the surplus of a weighted request small; one
//! type per family before a second keeps spot pools diverse.

use crate::api::shape::MAX_FLEET_OVERRIDES;
use crate::api::{
    Api, Architecture, CpuManufacturer, Generation, InstanceRequirements, InstanceTypeFacts, MachineTemplateSpec,
    PriceType, WeightBy,
};
use crate::provider::ProviderError;
use std::collections::BTreeMap;

/// At most this many types per template: the instance types a template may list, and the
/// overrides an Auto Scaling group's mixed instances policy accepts.
pub const MAX_RESOLVED: usize = 40;

/// One instance type of a catalogue, with what requirements are checked against.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CatalogueEntry {
    pub type_: String,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub architectures: Vec<String>,
    /// As EC2 names it: `Intel`, `AMD`, `AWS`, `Apple`.
    pub manufacturer: String,
    pub current_generation: bool,
    pub burstable: bool,
    pub bare_metal: bool,
    pub local_storage: bool,
    /// GPUs, FPGAs and inference accelerators together.
    pub accelerators: i64,
    /// `on-demand`, `spot`.
    pub usage_classes: Vec<String>,
}

impl CatalogueEntry {
    fn family(&self) -> &str {
        self.type_.split('.').next().unwrap_or(&self.type_)
    }
}

/// Whether `entry` satisfies every requirement (and can be bought as `price`).
pub fn satisfies(r: &InstanceRequirements, entry: &CatalogueEntry, price: PriceType) -> bool {
    let gib_per_vcpu = entry.memory_mib as f64 / 1024.0 / f64::from(entry.vcpus.max(1));
    r.v_cpu_count.holds(i64::from(entry.vcpus))
        && r.memory_mib.holds(entry.memory_mib)
        && r.memory_gib_per_v_cpu.as_ref().is_none_or(|range| range.holds(gib_per_vcpu))
        && r.accelerator_count.as_ref().is_none_or(|range| range.holds(entry.accelerators))
        && (r.architectures.is_empty()
            || r.architectures.iter().any(|a| entry.architectures.iter().any(|e| e == architecture_name(*a))))
        && (r.cpu_manufacturers.is_empty() || r.cpu_manufacturers.iter().any(|m| made_by(*m, &entry.manufacturer)))
        && (r.instance_generations.is_empty()
            || r.instance_generations.contains(if entry.current_generation {
                &Generation::Current
            } else {
                &Generation::Previous
            }))
        && r.burstable_performance.admits(entry.burstable)
        && r.bare_metal.admits(entry.bare_metal)
        && r.local_storage.admits(entry.local_storage)
        && (r.allowed_instance_types.is_empty() || r.allowed_instance_types.iter().any(|p| wildcard(p, &entry.type_)))
        && !r.excluded_instance_types.iter().any(|p| wildcard(p, &entry.type_))
        && sold_as(entry, price)
}

/// The types a template launches from, in launch order, with their facts and weights: at most
/// `limit`, chosen by the rule in the module doc.
pub fn resolve(
    r: &InstanceRequirements,
    catalogue: &[CatalogueEntry],
    price: PriceType,
    limit: usize,
) -> Vec<InstanceTypeFacts> {
    let mut candidates: Vec<&CatalogueEntry> = catalogue.iter().filter(|e| satisfies(r, e, price)).collect();
    candidates.sort_by(|a, b| (a.vcpus, a.memory_mib, &a.type_).cmp(&(b.vcpus, b.memory_mib, &b.type_)));
    candidates.dedup_by(|a, b| a.type_ == b.type_);
    // Families in the order of their smallest type, each family's types smallest first.
    let mut families: Vec<Vec<&CatalogueEntry>> = vec![];
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for c in candidates {
        let at = *index.entry(c.family()).or_insert_with(|| {
            families.push(vec![]);
            families.len() - 1
        });
        families[at].push(c);
    }
    let deepest = families.iter().map(Vec::len).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|round| families.iter().filter_map(move |f| f.get(round).copied()))
        .take(limit)
        .map(|e| InstanceTypeFacts {
            type_: e.type_.clone(),
            vcpus: e.vcpus,
            memory_mib: e.memory_mib,
            architecture: e.architectures.first().cloned().unwrap_or_else(|| "x86_64".into()),
            weight: Some(weight(r.weight_by, e)),
        })
        .collect()
}

/// The types `t` launches from, resolved from its `instanceRequirements` against `catalogue`
/// (`where_` names it in the error: a region, the simulator); `Invalid` naming the field when
/// nothing satisfies them.
pub fn resolve_template(
    t: &MachineTemplateSpec,
    catalogue: &[CatalogueEntry],
    where_: &str,
) -> Result<Vec<InstanceTypeFacts>, ProviderError> {
    let Some(r) = &t.instance_requirements else { return Ok(vec![]) };
    let chosen = resolve(r, catalogue, t.price_type, limit(t));
    if chosen.is_empty() {
        return Err(ProviderError::invalid(
            "spec.instanceRequirements",
            "NoMatchingInstanceTypes",
            format!(
                "no instance type of the {} in {where_} satisfies these requirements{}; widen them",
                catalogue.len(),
                if t.price_type == PriceType::OnDemand { "" } else { " and is sold as spot" }
            ),
        ));
    }
    Ok(chosen)
}

/// How many types a template may resolve to: `MAX_RESOLVED`, and for the fleet APIs no more
/// than their overrides allow across the template's subnets.
pub fn limit(t: &MachineTemplateSpec) -> usize {
    match t.api {
        Api::Ec2Fleet | Api::SpotFleet => MAX_RESOLVED.min(MAX_FLEET_OVERRIDES / t.subnet_ids.len().max(1)),
        Api::Asg | Api::RunInstances => MAX_RESOLVED,
    }
}

/// A type's capacity units under `weightBy`: its vCPUs, its whole GiB of memory, or 1.
pub fn weight(by: WeightBy, e: &CatalogueEntry) -> i32 {
    match by {
        WeightBy::None => 1,
        WeightBy::Vcpu => e.vcpus.max(1),
        WeightBy::Memory => i32::try_from(e.memory_mib / 1024).unwrap_or(i32::MAX).max(1),
    }
}

fn architecture_name(a: Architecture) -> &'static str {
    match a {
        Architecture::X86_64 => "x86_64",
        Architecture::Arm64 => "arm64",
    }
}

/// EC2's requirement names the maker one way (`amazon-web-services`), its catalogue another (`AWS`).
fn made_by(m: CpuManufacturer, manufacturer: &str) -> bool {
    let names: &[&str] = match m {
        CpuManufacturer::Intel => &["intel"],
        CpuManufacturer::Amd => &["amd"],
        CpuManufacturer::AmazonWebServices => &["aws", "amazon web services", "amazon-web-services"],
        CpuManufacturer::Apple => &["apple"],
    };
    names.iter().any(|n| manufacturer.eq_ignore_ascii_case(n))
}

/// A catalogue that says nothing of usage classes sells both.
fn sold_as(e: &CatalogueEntry, price: PriceType) -> bool {
    let sells = |class: &str| e.usage_classes.is_empty() || e.usage_classes.iter().any(|c| c == class);
    match price {
        PriceType::OnDemand => sells("on-demand"),
        PriceType::Spot => sells("spot"),
        PriceType::Heterogeneous => sells("on-demand") && sells("spot"),
    }
}

/// EC2's instance type wildcards: `*` stands for any run of characters (`m5.*`, `*.metal`, `c6*`).
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Inclusion, IntRange};

    fn entry(type_: &str, vcpus: i32, gib: i64) -> CatalogueEntry {
        CatalogueEntry {
            type_: type_.into(),
            vcpus,
            memory_mib: gib * 1024,
            architectures: vec!["x86_64".into()],
            manufacturer: "Intel".into(),
            current_generation: true,
            ..Default::default()
        }
    }

    fn wanting(vcpus: (i64, i64), gib: (i64, i64)) -> InstanceRequirements {
        InstanceRequirements {
            v_cpu_count: IntRange { min: Some(vcpus.0), max: Some(vcpus.1) },
            memory_mib: IntRange { min: Some(gib.0 * 1024), max: Some(gib.1 * 1024) },
            burstable_performance: Inclusion::Excluded,
            bare_metal: Inclusion::Excluded,
            local_storage: Inclusion::Included,
            ..Default::default()
        }
    }

    #[test]
    fn wildcards_match_as_ec2_documents_them() {
        for (pattern, name, matched) in [
            ("m5.*", "m5.large", true),
            ("m5.*", "m5d.large", false),
            ("m5*", "m5d.large", true),
            ("*.metal", "c5.metal", true),
            ("*.metal", "c5.metal-24xl", false),
            ("c*.x*", "c6i.xlarge", true),
            ("r6i.large", "r6i.large", true),
            ("r6i.large", "r6i.large2", false),
            ("*", "anything.at-all", true),
        ] {
            assert_eq!(wildcard(pattern, name), matched, "{pattern} vs {name}");
        }
    }

    #[test]
    fn every_requirement_is_checked() {
        let base = wanting((2, 8), (4, 32));
        let fits = entry("m6i.xlarge", 4, 16);
        assert!(satisfies(&base, &fits, PriceType::OnDemand));
        let refused: Vec<(&str, CatalogueEntry, InstanceRequirements)> = vec![
            ("too many vCPUs", entry("m6i.4xlarge", 16, 64), base.clone()),
            ("too little memory", entry("c6i.large", 2, 2), base.clone()),
            ("burstable", CatalogueEntry { burstable: true, ..fits.clone() }, base.clone()),
            ("bare metal", CatalogueEntry { bare_metal: true, ..fits.clone() }, base.clone()),
            ("arm", fits.clone(), InstanceRequirements { architectures: vec![Architecture::Arm64], ..base.clone() }),
            (
                "amd only",
                fits.clone(),
                InstanceRequirements { cpu_manufacturers: vec![CpuManufacturer::Amd], ..base.clone() },
            ),
            (
                "previous generation",
                CatalogueEntry { current_generation: false, ..fits.clone() },
                InstanceRequirements { instance_generations: vec![Generation::Current], ..base.clone() },
            ),
            (
                "no local storage wanted",
                CatalogueEntry { local_storage: true, ..fits.clone() },
                InstanceRequirements { local_storage: Inclusion::Excluded, ..base.clone() },
            ),
            (
                "accelerators",
                CatalogueEntry { accelerators: 1, ..fits.clone() },
                InstanceRequirements { accelerator_count: Some(IntRange { min: None, max: Some(0) }), ..base.clone() },
            ),
            (
                "memory per vCPU",
                fits.clone(),
                InstanceRequirements {
                    memory_gib_per_v_cpu: Some(crate::api::FloatRange { min: Some(8.0), max: None }),
                    ..base.clone()
                },
            ),
            (
                "excluded",
                fits.clone(),
                InstanceRequirements { excluded_instance_types: vec!["m6*".into()], ..base.clone() },
            ),
            (
                "not allowed",
                fits.clone(),
                InstanceRequirements { allowed_instance_types: vec!["c*".into()], ..base.clone() },
            ),
            ("no spot", CatalogueEntry { usage_classes: vec!["on-demand".into()], ..fits.clone() }, base.clone()),
        ];
        for (why, e, r) in refused {
            let price = if why == "no spot" { PriceType::Spot } else { PriceType::OnDemand };
            assert!(!satisfies(&r, &e, price), "{why}");
        }
        let graviton = CatalogueEntry { manufacturer: "AWS".into(), architectures: vec!["arm64".into()], ..fits };
        let arm = InstanceRequirements {
            cpu_manufacturers: vec![CpuManufacturer::AmazonWebServices],
            architectures: vec![Architecture::Arm64],
            ..base
        };
        assert!(satisfies(&arm, &graviton, PriceType::Spot), "EC2 names the maker AWS in its catalogue");
    }

    #[test]
    fn resolution_takes_the_smallest_of_each_family_first_up_to_the_limit_with_weights() {
        let catalogue = vec![
            entry("m5.2xlarge", 8, 32),
            entry("m5.xlarge", 4, 16),
            entry("c5.2xlarge", 8, 16),
            entry("r5.xlarge", 4, 32),
            entry("m5.large", 2, 8),
            entry("c5.xlarge", 4, 8),
        ];
        let mut r = wanting((4, 8), (8, 32));
        r.weight_by = WeightBy::Vcpu;
        let chosen = resolve(&r, &catalogue, PriceType::OnDemand, 4);
        let names: Vec<(&str, Option<i32>)> = chosen.iter().map(|f| (f.type_.as_str(), f.weight)).collect();
        assert_eq!(
            names,
            [("c5.xlarge", Some(4)), ("m5.xlarge", Some(4)), ("r5.xlarge", Some(4)), ("c5.2xlarge", Some(8))]
        );
        r.weight_by = WeightBy::Memory;
        assert_eq!(resolve(&r, &catalogue, PriceType::OnDemand, 1)[0].weight, Some(8));
        r.v_cpu_count.min = Some(64);
        assert!(resolve(&r, &catalogue, PriceType::OnDemand, 40).is_empty());
    }
}
