//! The IBM Spectrum Symphony HostFactory provider plugin: HostFactory's five provider calls
//! answered from the MachineTemplates and MachineRequests of one namespace. It talks only to
//! the Kubernetes API — the operator does the cloud work — and keeps every piece of state in
//! the cluster, so any HostFactory host can answer any later call:
//!
//! - a request HostFactory made is a MachineRequest named `req-<uuid>`, labelled
//!   `orb.dev/created-by: hostfactory`;
//! - a return request `ret-<uuid>` is a label `hostfactory.orb.dev/ret-<uuid>` on each
//!   MachineRequest it returned machines from, with an annotation of the same key listing those
//!   instance ids; the machines are named in the request's `spec.returnMachines` and its
//!   `capacity` is lowered by their weights.
//!
//! Calls use gets by name and label-selected lists, never a list of everything.

pub mod cli;
pub mod protocol;

use crate::api::{MachineRequest, MachineRequestSpec, MachineTemplate, TemplateRef, conditions};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use protocol::{BadInput, MachineRef};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Label on the MachineRequests HostFactory made.
pub const CREATED_BY: &str = "orb.dev/created-by";
pub const CREATED_BY_HOSTFACTORY: &str = "hostfactory";
/// Prefix of the label and annotation keys that record a return request.
pub const RETURN_PREFIX: &str = "hostfactory.orb.dev/";

/// The five calls HostFactory makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "verbatim")]
pub enum Verb {
    #[value(name = "getAvailableTemplates")]
    GetAvailableTemplates,
    #[value(name = "requestMachines")]
    RequestMachines,
    #[value(name = "requestReturnMachines")]
    RequestReturnMachines,
    #[value(name = "getRequestStatus")]
    GetRequestStatus,
    #[value(name = "getReturnRequests")]
    GetReturnRequests,
}

/// Why a call could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error(transparent)]
    BadInput(#[from] BadInput),
    #[error("{0}")]
    NotFound(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// One namespace of one cluster, as the plugin sees it.
pub struct Plugin {
    pub client: Client,
    pub namespace: String,
    /// Label selector for the templates HostFactory may use (all when `None`).
    pub template_selector: Option<String>,
}

impl Plugin {
    fn templates(&self) -> Api<MachineTemplate> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn requests(&self) -> Api<MachineRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Answers one call.
    pub async fn answer(&self, verb: Verb, input: &Value) -> Result<Value, HfError> {
        match verb {
            Verb::GetAvailableTemplates => self.available_templates().await,
            Verb::RequestMachines => self.request_machines(input).await,
            Verb::RequestReturnMachines => self.request_return_machines(input).await,
            Verb::GetRequestStatus => self.request_status(input).await,
            Verb::GetReturnRequests => self.return_requests(input).await,
        }
    }

    async fn available_templates(&self) -> Result<Value, HfError> {
        let mut params = ListParams::default();
        if let Some(selector) = &self.template_selector {
            params = params.labels(selector);
        }
        let mut templates: Vec<Value> =
            self.templates().list(&params).await?.items.iter().filter(|t| is_ready(t)).map(template_json).collect();
        templates.sort_by(|a, b| a["templateId"].as_str().cmp(&b["templateId"].as_str()));
        let message = format!("{} template(s) ready in namespace {}", templates.len(), self.namespace);
        Ok(json!({"templates": templates, "message": message}))
    }

    async fn request_machines(&self, input: &Value) -> Result<Value, HfError> {
        let (template_id, count) = protocol::machines_wanted(input)?;
        let template = self.templates().get_opt(&template_id).await?.ok_or_else(|| {
            HfError::NotFound(format!(
                "requestMachines: no MachineTemplate {template_id} in namespace {}",
                self.namespace
            ))
        })?;
        if !is_ready(&template) {
            return Err(HfError::NotFound(format!(
                "requestMachines: MachineTemplate {template_id} is not Ready: {}",
                ready_message(&template)
            )));
        }
        let id = format!("req-{}", uuid::Uuid::new_v4());
        let mut request = MachineRequest::new(
            &id,
            MachineRequestSpec {
                template_ref: TemplateRef { name: template_id.clone() },
                capacity: count,
                fulfilment_timeout: "15m".into(),
                ..Default::default()
            },
        );
        request.metadata.labels = Some(BTreeMap::from([(CREATED_BY.into(), CREATED_BY_HOSTFACTORY.into())]));
        self.requests().create(&PostParams::default(), &request).await?;
        Ok(
            json!({"requestId": id, "message": format!("MachineRequest {id} created for {count} capacity unit(s) of {template_id}")}),
        )
    }

    async fn request_status(&self, input: &Value) -> Result<Value, HfError> {
        let ids = protocol::request_ids(input)?;
        let mut out = vec![];
        for id in ids {
            out.push(if id.starts_with("ret-") {
                self.return_status(&id).await?
            } else {
                self.acquire_status(&id).await?
            });
        }
        Ok(json!({"requests": out, "message": ""}))
    }

    async fn acquire_status(&self, id: &str) -> Result<Value, HfError> {
        let Some(mr) = self.requests().get_opt(id).await? else {
            return Ok(
                json!({"requestId": id, "status": "complete_with_error", "message": format!("no MachineRequest {id} in namespace {}", self.namespace), "machines": []}),
            );
        };
        let status = mr.status.clone().unwrap_or_default();
        // Machines returned through a return request are reported there, not here.
        let machines: Vec<Value> = status
            .machines
            .iter()
            .filter(|m| !m.returning)
            .map(|m| protocol::machine_json(id, m, protocol::machine_result(m), None))
            .collect();
        let message =
            conditions::find(&status.conditions, conditions::READY).map(|c| c.message.clone()).unwrap_or_default();
        Ok(json!({
            "requestId": id,
            "status": protocol::request_status(status.phase),
            "message": message,
            "machines": machines,
        }))
    }

    async fn return_status(&self, id: &str) -> Result<Value, HfError> {
        // Only ids this plugin made can be label keys; anything else is simply unknown.
        let made_here = id.len() == 40 && id[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !made_here {
            return Ok(
                json!({"requestId": id, "status": "complete_with_error", "message": format!("no return request {id} in namespace {}", self.namespace), "machines": []}),
            );
        }
        let key = format!("{RETURN_PREFIX}{id}");
        let owners = self.requests().list(&ListParams::default().labels(&key)).await?.items;
        if owners.is_empty() {
            return Ok(
                json!({"requestId": id, "status": "complete_with_error", "message": format!("no return request {id} in namespace {}", self.namespace), "machines": []}),
            );
        }
        let mut machines = vec![];
        let mut done = true;
        for mr in &owners {
            let listed = mr.annotations().get(&key).cloned().unwrap_or_default();
            let status = mr.status.clone().unwrap_or_default();
            for instance_id in listed.split(',').filter(|s| !s.is_empty()) {
                match status.machines.iter().find(|m| m.instance_id == instance_id) {
                    Some(m) => {
                        let gone = m.state == "terminated";
                        done &= gone;
                        machines.push(protocol::machine_json(
                            &mr.name_any(),
                            m,
                            if gone { "succeed" } else { "executing" },
                            None,
                        ));
                    }
                    // The cloud no longer reports it: long gone.
                    None => machines.push(json!({
                        "machineId": instance_id,
                        "name": protocol::machine_name(&mr.name_any(), instance_id),
                        "result": "succeed", "status": "terminated",
                        "privateIpAddress": null, "publicIpAddress": null, "launchtime": 0,
                        "message": "", "cloudHostId": instance_id,
                    })),
                }
            }
        }
        let status = if done { "complete" } else { "running" };
        Ok(json!({"requestId": id, "status": status, "message": "", "machines": machines}))
    }

    async fn request_return_machines(&self, input: &Value) -> Result<Value, HfError> {
        let wanted = protocol::machines("requestReturnMachines", input, true)?;
        // Owner of each machine: the request its name names (`<request>-<id>`), else found among
        // the requests HostFactory made. Nothing changes unless every machine has an owner.
        // (A set: the same machine named twice, by id and by name, is one return.)
        let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut unplaced = vec![];
        for m in &wanted {
            let owner = match owner_by_name(m) {
                Some(name) => self.requests().get_opt(&name).await?.filter(|mr| holds(mr, m)).map(|_| name),
                None => None,
            };
            match owner {
                Some(name) => owners.entry(name).or_default().extend(instance_id(m)),
                None => unplaced.push(m.clone()),
            }
        }
        if !unplaced.is_empty() {
            let made = ListParams::default().labels(&format!("{CREATED_BY}={CREATED_BY_HOSTFACTORY}"));
            let all = self.requests().list(&made).await?.items;
            for m in unplaced {
                let mr = all.iter().find(|mr| holds(mr, &m)).ok_or_else(|| {
                    HfError::NotFound(format!(
                        "requestReturnMachines: machine {} belongs to no MachineRequest in namespace {}; nothing was returned",
                        m.machine_id.as_deref().or(m.name.as_deref()).unwrap_or_default(),
                        self.namespace
                    ))
                })?;
                let id = instance_id_in(mr, &m).unwrap_or_default();
                owners.entry(mr.name_any()).or_default().insert(id);
            }
        }
        let id = format!("ret-{}", uuid::Uuid::new_v4());
        for (name, ids) in &owners {
            self.return_from(name, &ids.iter().cloned().collect::<Vec<_>>(), &id).await?;
        }
        let count: usize = owners.values().map(BTreeSet::len).sum();
        Ok(json!({"requestId": id, "message": format!("{count} machine(s) being returned")}))
    }

    /// Names `ids` in the request's `returnMachines`, lowers its capacity by their weights and
    /// records return request `ret`, with the request's resourceVersion so that concurrent
    /// returns from two HostFactory hosts never overwrite each other.
    async fn return_from(&self, name: &str, ids: &[String], ret: &str) -> Result<(), HfError> {
        for _ in 0..5 {
            let mr = self.requests().get(name).await?;
            let status = mr.status.clone().unwrap_or_default();
            let known: BTreeSet<&str> = status.machines.iter().map(|m| m.instance_id.as_str()).collect();
            let already: BTreeSet<&str> = mr.spec.return_machines.iter().map(String::as_str).collect();
            // Only a machine that still holds capacity lowers it: one already leaving (a
            // scale-down victim) or lost (replaced by the operator) is acknowledged, never
            // counted twice — else every return of such a machine would shrink the request again.
            let weight = |id: &str| {
                status
                    .machines
                    .iter()
                    .find(|m| m.instance_id == id && m.counts_as_live())
                    .map_or(0, |m| m.weight.max(0))
            };
            let newly: BTreeSet<&String> = ids.iter().filter(|id| !already.contains(id.as_str())).collect();
            let lowered = newly.iter().map(|id| weight(id)).sum::<i32>();
            // Ids the cloud forgot are dropped from the list: it would only grow otherwise.
            let mut list: Vec<String> =
                mr.spec.return_machines.iter().filter(|id| known.contains(id.as_str())).cloned().collect();
            list.extend(newly.into_iter().cloned());
            list.sort();
            list.dedup();
            let key = format!("{RETURN_PREFIX}{ret}");
            let patch = json!({
                "metadata": {
                    "resourceVersion": mr.resource_version(),
                    "labels": {key.clone(): "return"},
                    "annotations": {key: ids.join(",")},
                },
                "spec": {"capacity": (mr.spec.capacity - lowered).max(0), "returnMachines": list},
            });
            match self.requests().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(HfError::NotFound(format!("requestReturnMachines: MachineRequest {name} kept changing; try again")))
    }

    async fn return_requests(&self, input: &Value) -> Result<Value, HfError> {
        let known = protocol::machines("getReturnRequests", input, false)?;
        let hf_name =
            |id: &str| known.iter().find(|m| m.machine_id.as_deref() == Some(id)).and_then(|m| m.name.clone());
        let made = ListParams::default().labels(&format!("{CREATED_BY}={CREATED_BY_HOSTFACTORY}"));
        let mut out = vec![];
        for mr in self.requests().list(&made).await?.items {
            let named: BTreeSet<&str> = mr.spec.return_machines.iter().map(String::as_str).collect();
            for m in mr.status.iter().flat_map(|s| s.machines.iter()) {
                // Lost outside the operator (spot reclaim, console) and not yet given back by
                // HostFactory; or being returned by the operator and not yet gone.
                let lost = m.result == Some(crate::api::MachineResult::Fail) && !named.contains(m.instance_id.as_str());
                let leaving = m.returning && m.state != "terminated";
                if lost || leaving {
                    out.push(json!({
                        "machine": hf_name(&m.instance_id)
                            .unwrap_or_else(|| protocol::machine_name(&mr.name_any(), &m.instance_id)),
                        "machineId": m.instance_id,
                        "gracePeriod": protocol::grace_period(m),
                    }));
                }
            }
        }
        let message = format!("{} machine(s) to return", out.len());
        Ok(json!({"status": "complete", "message": message, "requests": out}))
    }
}

/// The instance id HostFactory gave for a machine, or the one its name ends with.
fn instance_id(m: &MachineRef) -> Option<String> {
    m.machine_id.clone().or_else(|| {
        let name = m.name.as_deref()?;
        let suffix = name.rsplit('-').next()?;
        Some(format!("i-{suffix}"))
    })
}

/// The request a machine's name names: `<request>-<instance id without i->`.
fn owner_by_name(m: &MachineRef) -> Option<String> {
    let name = m.name.as_deref()?;
    let id = instance_id(m)?;
    let suffix = id.strip_prefix("i-")?;
    name.strip_suffix(suffix)?.strip_suffix('-').filter(|n| !n.is_empty()).map(str::to_string)
}

/// The id under which `mr` lists machine `m`, if it does.
fn instance_id_in(mr: &MachineRequest, m: &MachineRef) -> Option<String> {
    mr.status.iter().flat_map(|s| s.machines.iter()).find_map(|x| {
        let by_id = m.machine_id.as_deref() == Some(x.instance_id.as_str());
        let by_name = m.machine_id.is_none()
            && m.name.as_deref() == Some(protocol::machine_name(&mr.name_any(), &x.instance_id).as_str());
        (by_id || by_name).then(|| x.instance_id.clone())
    })
}

fn holds(mr: &MachineRequest, m: &MachineRef) -> bool {
    instance_id_in(mr, m).is_some()
}

/// Ready at its current generation.
fn is_ready(t: &MachineTemplate) -> bool {
    let ready = t.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY));
    ready.is_some_and(|c| c.status == "True" && c.observed_generation == t.metadata.generation)
}

fn ready_message(t: &MachineTemplate) -> String {
    t.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map_or_else(|| "not validated yet".into(), |c| format!("{} ({})", c.message, c.reason))
}

/// A template as HostFactory lists it.
fn template_json(t: &MachineTemplate) -> Value {
    use crate::api::PriceType;
    let spec = &t.spec;
    let status = t.status.clone().unwrap_or_default();
    let first = status.instance_types.first();
    let arch = first.map_or("x86_64", |f| f.architecture.as_str()).to_ascii_uppercase();
    let ncpus = first.map_or(1, |f| f.vcpus);
    let nram = first.map_or(1024, |f| f.memory_mib);
    let max = spec.max_machines.map_or(-1, i64::from);
    let vm_types: BTreeMap<&str, i32> = spec.instance_types.iter().map(|i| (i.type_.as_str(), i.weight)).collect();
    let mut out = json!({
        "templateId": t.name_any(),
        "maxNumber": max,
        "attributes": {
            "type": ["String", arch],
            "ncpus": ["Numeric", ncpus.to_string()],
            "nram": ["Numeric", nram.to_string()],
        },
        "vmTypes": vm_types,
        "priceType": match spec.price_type {
            PriceType::OnDemand => "ondemand",
            PriceType::Spot => "spot",
            PriceType::Heterogeneous => "heterogeneous",
        },
        "providerApi": spec.api.as_str(),
        "imageId": spec.image_id,
        "subnetIds": spec.subnet_ids,
    });
    if let Some(max) = spec.max_machines {
        out["availableNumber"] = json!((i64::from(max) - i64::from(status.machines_in_use)).max(0));
    }
    if let Some(price) = &spec.max_spot_price {
        out["maxSpotPrice"] = json!(price);
    }
    out
}
