//! The IBM Spectrum Symphony HostFactory provider plugin: HostFactory's five provider calls
//! answered from the MachineTemplates and MachineRequests of one namespace. It talks only to
//! the Kubernetes API — the operator does the cloud work — and keeps every piece of state in
//! the cluster, so any HostFactory host can answer any later call:
//!
//! - a request HostFactory made is a MachineRequest named `req-<uuid>`, labelled
//!   `orb.dev/created-by: hostfactory` and `hostfactory.orb.dev/provider: <HF_PROVIDER_NAME>`
//!   (so provider instances sharing a namespace never see each other's), with
//!   `lostMachines: Report` (HostFactory replaces lost hosts itself) and, once `getRequestStatus`
//!   has asked about it, the annotation `hostfactory.orb.dev/asked` (a request HostFactory never
//!   asked about — the script was killed before it printed the id — is deleted after
//!   `UNASKED_TTL`);
//! - a return request `ret-<uuid>` is a label `hostfactory.orb.dev/ret-<uuid>` on each
//!   MachineRequest it returned machines from, with an annotation of the same key holding the
//!   time of the return and those instance ids; the machines are named in the request's
//!   `spec.returnMachines` and its `capacity` is lowered by their weights; once `getRequestStatus`
//!   answered the return `complete`, the label reads `reported`;
//! - a request HostFactory is done with (`finished`) is deleted, so the calls' cost stays flat
//!   over months; a template with hosts stays listed while it is edited or re-validated.
//!
//! Machines are named by their host names (`Machine::private_dns_name`), as they join the grid.
//!
//! Calls use gets by name and label-selected lists, never a list of everything.

pub mod cli;
pub mod protocol;

use crate::api::{
    LostMachines, MachineRequest, MachineRequestSpec, MachineResult, MachineTemplate, TemplateRef, conditions,
};
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
/// Label naming the HostFactory provider instance (`HF_PROVIDER_NAME`) that made a request.
pub const PROVIDER_LABEL: &str = "hostfactory.orb.dev/provider";
/// Annotation set the first time `getRequestStatus` asks about a request.
pub const ASKED: &str = "hostfactory.orb.dev/asked";
/// A request `getRequestStatus` never asked about this long after its creation was never
/// learnt of by HostFactory (killed after the create, before it printed): it is deleted.
pub const UNASKED_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// A returned machine not gone this long after the return is reported `fail`, with the reason.
pub const RETURN_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

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
    /// This provider instance (`HF_PROVIDER_NAME`) as a label value: only its own requests are
    /// seen, listed and returned from.
    pub provider: String,
}

/// `HF_PROVIDER_NAME` as a label value: itself when it is one, else `p-` and a digest.
pub fn provider_label_value(name: &str) -> String {
    let valid = name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && name.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        return name.to_string();
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!("p-{}", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>())
}

impl Plugin {
    fn templates(&self) -> Api<MachineTemplate> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn requests(&self) -> Api<MachineRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Label selector of this provider instance's requests.
    fn own_selector(&self) -> String {
        format!("{CREATED_BY}={CREATED_BY_HOSTFACTORY},{PROVIDER_LABEL}={}", self.provider)
    }

    /// Whether this provider instance made `mr`.
    fn is_own(&self, mr: &MachineRequest) -> bool {
        let labels = mr.labels();
        labels.get(CREATED_BY).map(String::as_str) == Some(CREATED_BY_HOSTFACTORY)
            && labels.get(PROVIDER_LABEL) == Some(&self.provider)
    }

    /// This provider instance's request `name`, if it exists.
    async fn own(&self, name: &str) -> Result<Option<MachineRequest>, kube::Error> {
        Ok(self.requests().get_opt(name).await?.filter(|mr| self.is_own(mr)))
    }

    /// Every request of this provider instance (one label-selected list).
    async fn all_own(&self) -> Result<Vec<MachineRequest>, kube::Error> {
        Ok(self.requests().list(&ListParams::default().labels(&self.own_selector())).await?.items)
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
        // A template with machines in use stays listed while it is edited or re-validated (or
        // its provider is briefly unhealthy): HostFactory would otherwise lose track of where
        // its hosts came from. It offers no room until it is Ready again.
        let listed = |t: &&MachineTemplate| is_ready(t) || t.status.as_ref().is_some_and(|s| s.machines_in_use > 0);
        let mut templates: Vec<Value> =
            self.templates().list(&params).await?.items.iter().filter(listed).map(template_json).collect();
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
                // HostFactory returns a lost host and asks for a new one itself.
                lost_machines: LostMachines::Report,
                ..Default::default()
            },
        );
        request.metadata.labels = Some(BTreeMap::from([
            (CREATED_BY.into(), CREATED_BY_HOSTFACTORY.into()),
            (PROVIDER_LABEL.into(), self.provider.clone()),
        ]));
        self.create_once(&request).await?;
        Ok(
            json!({"requestId": id, "message": format!("MachineRequest {id} created for {count} capacity unit(s) of {template_id}")}),
        )
    }

    /// Creates `request`, safe to retry: an answer lost to a timeout or a 5xx (the object may
    /// exist) is settled by reading it back, and a retry answered 409 finds its own object —
    /// one MachineRequest, one id, whatever happened to the answers.
    async fn create_once(&self, request: &MachineRequest) -> Result<(), HfError> {
        let name = request.name_any();
        let mine = |found: &MachineRequest| self.is_own(found) && found.spec == request.spec;
        let mut last = None;
        for _ in 0..3 {
            match self.requests().create(&PostParams::default(), request).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return match self.requests().get_opt(&name).await? {
                        Some(found) if mine(&found) => Ok(()),
                        _ => Err(HfError::NotFound(format!("requestMachines: {name} exists and is not this request"))),
                    };
                }
                // A refusal with a reason (bad spec, no permission): the object was not made.
                Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
                    return Err(kube::Error::Api(e).into());
                }
                Err(unclear) => {
                    tracing::debug!(request = %name, error = %unclear, "create answer unclear; reading it back");
                    if let Ok(Some(found)) = self.requests().get_opt(&name).await
                        && mine(&found)
                    {
                        return Ok(());
                    }
                    last = Some(unclear);
                }
            }
        }
        Err(last.map_or_else(|| HfError::NotFound(format!("requestMachines: {name} not created")), HfError::from))
    }

    async fn request_status(&self, input: &Value) -> Result<Value, HfError> {
        let entries = protocol::request_entries(input)?;
        let mut out = vec![];
        let mut namespace_checked = false;
        for entry in entries {
            let id = match entry {
                Ok(id) => id,
                // A malformed entry answers for itself only.
                Err((raw, problem)) => {
                    out.push(unknown(&raw, &problem));
                    continue;
                }
            };
            let answer =
                if id.starts_with("ret-") { self.return_status(&id).await } else { self.acquire_status(&id).await };
            let answer = match answer {
                Ok(Some(answer)) => answer,
                Ok(None) => {
                    // Not found: a wrong namespace would make every request look failed. Say so.
                    if !namespace_checked {
                        self.namespace_holds_templates().await?;
                        namespace_checked = true;
                    }
                    unknown(
                        &id,
                        &format!("no request {id} of provider {} in namespace {}", self.provider, self.namespace),
                    )
                }
                // An id the API server refuses (not a valid name) concerns that id only.
                Err(HfError::Kube(kube::Error::Api(e))) if matches!(e.code, 400 | 404 | 422) => {
                    unknown(&id, &format!("request {id}: {}", e.message))
                }
                Err(other) => return Err(other),
            };
            out.push(answer);
        }
        Ok(json!({"requests": out, "message": ""}))
    }

    /// Fails the call when the namespace holds no MachineTemplate at all: the namespace (or the
    /// cluster) is not the one HostFactory's requests were made in.
    async fn namespace_holds_templates(&self) -> Result<(), HfError> {
        let any = self.templates().list(&ListParams::default().limit(1)).await?;
        if any.items.is_empty() {
            return Err(HfError::NotFound(format!(
                "namespace {} holds no MachineTemplate: check the namespace (--namespace, the plugin config's \"namespace\", ORB_HF_NAMESPACE) and the cluster KUBECONFIG points at",
                self.namespace
            )));
        }
        Ok(())
    }

    async fn acquire_status(&self, id: &str) -> Result<Option<Value>, HfError> {
        let Some(mr) = self.own(id).await? else { return Ok(None) };
        if !mr.annotations().contains_key(ASKED) {
            // HostFactory knows of it: it is not an orphan of a killed requestMachines.
            let patch = json!({"metadata": {"annotations": {ASKED: jiff::Timestamp::now().to_string()}}});
            self.requests().patch(id, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        let status = mr.status.clone().unwrap_or_default();
        // Machines returned through a return request are reported there, not here.
        let machines: Vec<Value> = status
            .machines
            .iter()
            .filter(|m| !m.returning)
            .map(|m| protocol::machine_json(m, protocol::machine_result(m), None))
            .collect();
        let message =
            conditions::find(&status.conditions, conditions::READY).map(|c| c.message.clone()).unwrap_or_default();
        Ok(Some(json!({
            "requestId": id,
            "status": protocol::request_status(status.phase),
            "message": message,
            "machines": machines,
        })))
    }

    async fn return_status(&self, id: &str) -> Result<Option<Value>, HfError> {
        // Only ids this plugin made can be label keys; anything else is simply unknown.
        let made_here = id.len() == 40 && id[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !made_here {
            return Ok(Some(unknown(id, &format!("{id} is not a return request id this plugin makes"))));
        }
        let key = format!("{RETURN_PREFIX}{id}");
        let selector = format!("{},{key}", self.own_selector());
        let owners = self.requests().list(&ListParams::default().labels(&selector)).await?.items;
        if owners.is_empty() {
            // Every machine it named was already gone: nothing was left to do.
            return Ok(Some(json!({"requestId": id, "status": "complete", "message": "", "machines": []})));
        }
        let mut machines = vec![];
        let (mut done, mut failed) = (true, false);
        let now = jiff::Timestamp::now();
        for mr in &owners {
            let (since, listed) = parse_return(mr.annotations().get(&key).map(String::as_str).unwrap_or_default());
            let overdue = since.is_some_and(|t| older_than(now, t, RETURN_TTL));
            let status = mr.status.clone().unwrap_or_default();
            for instance_id in listed {
                match status.machines.iter().find(|m| m.instance_id == instance_id) {
                    Some(m) if m.state == "terminated" => machines.push(protocol::machine_json(m, "succeed", None)),
                    Some(m) if overdue => {
                        // Bounded: say why it is still there instead of "executing" forever.
                        failed = true;
                        let why = status.failures.iter().max_by(|a, b| a.last_seen.cmp(&b.last_seen));
                        let message = match why {
                            Some(f) => format!(
                                "still {} {} min after the return: {} ({})",
                                m.state,
                                RETURN_TTL.as_secs() / 60,
                                f.message,
                                f.code
                            ),
                            None => format!("still {} {} min after the return", m.state, RETURN_TTL.as_secs() / 60),
                        };
                        machines.push(protocol::machine_json(m, "fail", Some(&message)));
                    }
                    Some(m) => {
                        done = false;
                        machines.push(protocol::machine_json(m, "executing", None));
                    }
                    // The cloud no longer reports it: long gone.
                    None => machines.push(json!({
                        "machineId": instance_id,
                        "name": instance_id,
                        "result": "succeed", "status": "terminated",
                        "privateIpAddress": null, "publicIpAddress": null, "launchtime": 0,
                        "message": "", "cloudHostId": instance_id,
                    })),
                }
            }
        }
        let status = match (done, failed) {
            (false, _) => "running",
            (true, true) => "complete_with_error",
            (true, false) => "complete",
        };
        if status == "complete" {
            // HostFactory now knows these machines are gone: a request all of whose returns are
            // reported can be deleted once it is finished (`finished`).
            for mr in owners.iter().filter(|mr| mr.labels().get(&key).map(String::as_str) != Some(REPORTED)) {
                let patch = json!({"metadata": {"labels": {key.clone(): REPORTED}}});
                self.requests().patch(&mr.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
        }
        Ok(Some(json!({"requestId": id, "status": status, "message": "", "machines": machines})))
    }

    async fn request_return_machines(&self, input: &Value) -> Result<Value, HfError> {
        let wanted = protocol::machines("requestReturnMachines", input, true)?;
        // The owner of each machine among this provider instance's requests, by instance id or
        // host name. A machine no request lists any more is gone already: nothing to return.
        // (A set: the same machine named twice, by id and by name, is one return.)
        let all = self.all_own().await?;
        let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut gone = vec![];
        for m in &wanted {
            match all.iter().find_map(|mr| instance_id_in(mr, m).map(|id| (mr.name_any(), id))) {
                Some((owner, id)) => {
                    owners.entry(owner).or_default().insert(id);
                }
                None => gone.push(m.machine_id.clone().or_else(|| m.name.clone()).unwrap_or_default()),
            }
        }
        let id = format!("ret-{}", uuid::Uuid::new_v4());
        for (name, ids) in &owners {
            self.return_from(name, &ids.iter().cloned().collect::<Vec<_>>(), &id).await?;
        }
        let count: usize = owners.values().map(BTreeSet::len).sum();
        let mut message = format!("{count} machine(s) being returned");
        if !gone.is_empty() {
            message.push_str(&format!("; {} no longer exist(s): {}", gone.len(), gone.join(", ")));
        }
        Ok(json!({"requestId": id, "message": message}))
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
            // Only a machine that still holds capacity lowers it: a live one, or one lost and
            // not replaced (`lostMachines: Report`, as this plugin asks). One already leaving (a
            // scale-down victim) is acknowledged, never counted twice — else every return of such
            // a machine would shrink the request again.
            let reported = mr.spec.lost_machines == LostMachines::Report;
            let holds_capacity = |m: &crate::api::Machine| {
                m.counts_as_live() || (reported && m.result == Some(MachineResult::Fail) && !m.returning)
            };
            let weight = |id: &str| {
                status.machines.iter().find(|m| m.instance_id == id && holds_capacity(m)).map_or(0, |m| m.weight.max(0))
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
                    "annotations": {key: format!("{};{}", jiff::Timestamp::now().as_second(), ids.join(","))},
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

    /// The hosts the provider reclaimed or will reclaim: machines lost outside the operator (a
    /// spot reclaim, the console) or returned by it on its own (capacity lowered in the cluster),
    /// until HostFactory returns them; machines AWS announced it takes (a spot interruption
    /// warning, a scheduled retirement), with the seconds left as `gracePeriod`; and machines HostFactory knows (its input) that no request
    /// lists any more (the request deleted, the instance forgotten by EC2). HostFactory's own
    /// returns are not listed. Also deletes requests HostFactory never learnt of.
    async fn return_requests(&self, input: &Value) -> Result<Value, HfError> {
        let known = protocol::machines("getReturnRequests", input, false)?;
        let mut all = self.all_own().await?;
        self.delete_done_with(&mut all).await?;
        let mut out = vec![];
        for mr in &all {
            let named: BTreeSet<&str> = mr.spec.return_machines.iter().map(String::as_str).collect();
            for m in mr.status.iter().flat_map(|s| s.machines.iter()) {
                if named.contains(m.instance_id.as_str()) {
                    continue;
                }
                let lost = m.result == Some(MachineResult::Fail);
                // A machine AWS will take (spot interruption, retirement): listed with the
                // seconds left, so HostFactory drains it first.
                let warned = m.notice.as_ref().filter(|n| n.kind.is_loss() && !lost && !m.returning);
                if lost || m.returning || warned.is_some() {
                    let grace = warned
                        .and_then(|n| n.deadline.as_ref())
                        .map_or(0, |deadline| deadline.0.duration_since(jiff::Timestamp::now()).as_secs().max(0));
                    out.push(
                        json!({"machine": protocol::host_name(m), "machineId": m.instance_id, "gracePeriod": grace}),
                    );
                }
            }
        }
        for m in &known {
            if !all.iter().any(|mr| instance_id_in(mr, m).is_some()) {
                let id = m.machine_id.clone().or_else(|| m.name.clone()).unwrap_or_default();
                out.push(
                    json!({"machine": m.name.clone().unwrap_or_else(|| id.clone()), "machineId": id, "gracePeriod": 0}),
                );
            }
        }
        let message = format!("{} machine(s) to return", out.len());
        Ok(json!({"status": "complete", "message": message, "requests": out}))
    }

    /// Deletes this provider instance's requests that are done with, and leaves the others in
    /// `all`: requests `getRequestStatus` never asked about within `UNASKED_TTL` of their
    /// creation (HostFactory never learnt their ids), and finished requests (`finished`), so
    /// that the cost of every call stays flat over months of grid history.
    async fn delete_done_with(&self, all: &mut Vec<MachineRequest>) -> Result<(), HfError> {
        let now = jiff::Timestamp::now();
        let mut kept = Vec::with_capacity(all.len());
        let mut deleted = 0;
        for mr in all.drain(..) {
            let created = mr.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let unasked =
                !mr.annotations().contains_key(ASKED) && created.is_some_and(|c| older_than(now, c, UNASKED_TTL));
            let why =
                if unasked { "HostFactory never asked about it" } else { "finished: every machine gone and reported" };
            // Bounded per call, so a long backlog never makes a call miss HostFactory's timeout.
            let due = unasked || finished(&mr);
            if mr.metadata.deletion_timestamp.is_some() || !due || deleted == DELETES_PER_CALL {
                kept.push(mr);
                continue;
            }
            deleted += 1;
            tracing::info!(request = %mr.name_any(), why, "deleting a HostFactory request");
            match self.requests().delete(&mr.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        *all = kept;
        Ok(())
    }
}

/// At most this many requests are deleted by one `getReturnRequests`; the rest by the next.
pub const DELETES_PER_CALL: usize = 100;

/// Label value of a return request once `getRequestStatus` answered it `complete`.
pub const REPORTED: &str = "reported";

/// A request HostFactory is done with: capacity 0, every machine it lists terminated and
/// returned by HostFactory (named in `returnMachines`), and every return request on it
/// answered `complete`. Nothing about it can still be asked or reported.
fn finished(mr: &MachineRequest) -> bool {
    let returned: BTreeSet<&str> = mr.spec.return_machines.iter().map(String::as_str).collect();
    let machines = mr.status.iter().flat_map(|s| s.machines.iter());
    let returns_reported = mr
        .labels()
        .iter()
        .filter(|(k, _)| k.strip_prefix(RETURN_PREFIX).is_some_and(|ret| ret.starts_with("ret-")))
        .all(|(_, v)| v == REPORTED);
    mr.spec.capacity == 0
        && returns_reported
        && machines.clone().all(|m| m.state == "terminated" && returned.contains(m.instance_id.as_str()))
}

/// Whether `then` is more than `ttl` before `now` (a time in the future is not).
fn older_than(now: jiff::Timestamp, then: jiff::Timestamp, ttl: std::time::Duration) -> bool {
    jiff::SignedDuration::try_from(ttl).is_ok_and(|ttl| now.duration_since(then) > ttl)
}

/// An entry of `getRequestStatus` for a request that cannot be answered.
fn unknown(id: &str, message: &str) -> Value {
    json!({"requestId": id, "status": "complete_with_error", "message": message, "machines": []})
}

/// A return annotation's value: `<unix seconds>;<id>,<id>` (or just the ids, as written before
/// the time was kept).
fn parse_return(value: &str) -> (Option<jiff::Timestamp>, Vec<&str>) {
    let (since, ids) = match value.split_once(';') {
        Some((t, ids)) => (t.parse().ok().and_then(|t| jiff::Timestamp::from_second(t).ok()), ids),
        None => (None, value),
    };
    (since, ids.split(',').filter(|s| !s.is_empty()).collect())
}

/// The id under which `mr` lists machine `m` (by instance id, else by host name), if it does.
fn instance_id_in(mr: &MachineRequest, m: &MachineRef) -> Option<String> {
    mr.status.iter().flat_map(|s| s.machines.iter()).find_map(|x| {
        let by_id = m.machine_id.as_deref() == Some(x.instance_id.as_str());
        let by_name = m.machine_id.is_none() && m.name.as_deref() == Some(protocol::host_name(x));
        (by_id || by_name).then(|| x.instance_id.clone())
    })
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
    let spec = &t.launch_spec();
    let status = t.status.clone().unwrap_or_default();
    let first = status.instance_types.first();
    let arch = first.map_or("x86_64", |f| f.architecture.as_str()).to_ascii_uppercase();
    let (mut ncpus, mut nram) = (first.map_or(1, |f| f.vcpus), first.map_or(1024, |f| f.memory_mib));
    if spec.instance_requirements.is_some() {
        // Any of the resolved types may come: what every host has at least.
        ncpus = status.instance_types.iter().map(|f| f.vcpus).min().unwrap_or(ncpus);
        nram = status.instance_types.iter().map(|f| f.memory_mib).min().unwrap_or(nram);
    }
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
    if !is_ready(t) {
        // Listed only for the hosts it has: no room for more until it is Ready again.
        out["maxNumber"] = json!(status.machines_in_use);
        out["availableNumber"] = json!(0);
    } else if let Some(max) = spec.max_machines {
        out["availableNumber"] = json!((i64::from(max) - i64::from(status.machines_in_use)).max(0));
    }
    if let Some(price) = &spec.max_spot_price {
        out["maxSpotPrice"] = json!(price);
    }
    out
}
