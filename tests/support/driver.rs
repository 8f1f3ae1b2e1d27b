//! Runs the request driver (observe -> plan -> act -> report) in a loop without Kubernetes:
//! status goes to an in-memory sink that can drop one chosen write, the way a crash between a
//! cloud call and the status write would lose it.

use orb_operator::api::conditions::{self, Cond};
use orb_operator::api::*;
use orb_operator::controller::Error;
use orb_operator::controller::planner::Requeue;
use orb_operator::controller::request::{StatusMemory, StatusSink, Target, drive};
use orb_operator::provider::AnyProvider;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The API server's copy of a request's status, and the operator's memory of its own writes
/// (the real `StatusMemory`, so the stale-cache guard under test is the operator's own).
#[derive(Default)]
pub struct MemoryStatus {
    current: Mutex<Option<MachineRequestStatus>>,
    /// What the API server held before the last write: a cache one write behind serves this.
    before_last: Mutex<Option<MachineRequestStatus>>,
    writes: AtomicUsize,
    drop_write: Mutex<Option<usize>>,
    /// Writes of a status larger than this (JSON bytes) fail as etcd refuses them.
    max_bytes: Mutex<Option<usize>>,
    memory: StatusMemory,
    /// Times the guard found the cache behind and read the API server's copy.
    pub fetches: AtomicUsize,
}

impl MemoryStatus {
    /// The `n`-th write from now (1 = the next) fails as if the operator crashed before it.
    pub fn drop_write(&self, n: usize) {
        *self.drop_write.lock().unwrap() = Some(self.writes.load(Ordering::SeqCst) + n);
    }
    /// From now on a status over `bytes` is refused the way a real API server refuses an
    /// object etcd will not store.
    pub fn refuse_larger_than(&self, bytes: usize) {
        *self.max_bytes.lock().unwrap() = Some(bytes);
    }
    pub fn current(&self) -> Option<MachineRequestStatus> {
        self.current.lock().unwrap().clone()
    }
    /// Status writes so far (dropped ones included).
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    /// The status as a controller cache one write behind would show it.
    pub fn one_write_behind(&self) -> Option<MachineRequestStatus> {
        self.before_last.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl StatusSink for MemoryStatus {
    async fn write(&self, status: &MachineRequestStatus) -> Result<(), Error> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if *self.drop_write.lock().unwrap() == Some(n) {
            return Err(Error::InjectedFault);
        }
        let size = serde_json::to_vec(status).unwrap().len();
        if self.max_bytes.lock().unwrap().is_some_and(|max| size > max) {
            let refusal = kube::core::Status::failure("etcdserver: request is too large", "").with_code(500);
            return Err(Error::Kube(kube::Error::Api(refusal.boxed())));
        }
        let before = self.current.lock().unwrap().replace(status.clone());
        *self.before_last.lock().unwrap() = before;
        self.memory.record("request", status);
        Ok(())
    }

    async fn latest(&self, cached: Option<&MachineRequestStatus>) -> Result<MachineRequestStatus, Error> {
        self.memory
            .latest("request", cached, || async {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                Ok(self.current())
            })
            .await
    }
}

/// A template marked Ready at its generation, as the template controller would leave it.
pub fn ready(mut template: MachineTemplate) -> MachineTemplate {
    use kube::Resource;
    let generation = template.meta().generation.or(Some(1));
    template.meta_mut().generation = generation;
    template.meta_mut().namespace = Some("grid".into());
    let mut status = MachineTemplateStatus::default();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    conditions::upsert(&mut status.conditions, Cond::new(conditions::READY, true, "Valid", "ok"), generation, &now);
    template.status = Some(status);
    template
}

pub fn request(name: &str, capacity: i32) -> MachineRequest {
    use kube::Resource;
    let mut mr = MachineRequest::new(
        name,
        MachineRequestSpec {
            template_ref: TemplateRef { name: "workers".into() },
            capacity,
            fulfilment_timeout: "15m".into(),
            ..Default::default()
        },
    );
    mr.meta_mut().namespace = Some("grid".into());
    mr.meta_mut().uid = Some(format!("uid-{name}-{:08x}", rand::random::<u32>()));
    mr.meta_mut().generation = Some(1);
    mr
}

/// Bumps the generation after a spec edit, as the API server does.
pub fn edited(mr: &mut MachineRequest) {
    use kube::Resource;
    let g = mr.meta().generation.unwrap_or(1);
    mr.meta_mut().generation = Some(g + 1);
}

/// Drives the request until the planner has nothing left to do (or `rounds` run out). Errors
/// are kept, as the controller would retry them; the last one is returned with the status.
pub async fn converge(
    mr: &mut MachineRequest,
    template: &MachineTemplate,
    provider: &AnyProvider,
    sink: &MemoryStatus,
    rounds: usize,
) -> (MachineRequestStatus, Option<Error>) {
    let mut last_error = None;
    for _ in 0..rounds {
        mr.status = sink.current();
        let target = Target { provider_name: "default", provider, hold: None, machines_elsewhere: 0 };
        match drive(mr, template, target, sink, jiff::Timestamp::now()).await {
            Ok((_, Requeue::Idle | Requeue::AwaitChange | Requeue::After(_))) => {
                return (sink.current().unwrap_or_default(), None);
            }
            Ok(_) => last_error = None,
            Err(e) => last_error = Some(e),
        }
    }
    (sink.current().unwrap_or_default(), last_error)
}

/// Runs three more passes over a converged request and returns how many status writes they
/// made: a settled request must cost no API call.
pub async fn quiet_passes(
    mr: &mut MachineRequest,
    template: &MachineTemplate,
    provider: &AnyProvider,
    sink: &MemoryStatus,
) -> usize {
    let before = sink.writes();
    for _ in 0..3 {
        mr.status = sink.current();
        let target = Target { provider_name: "default", provider, hold: None, machines_elsewhere: 0 };
        drive(mr, template, target, sink, jiff::Timestamp::now()).await.expect("a quiet pass");
    }
    sink.writes() - before
}

/// One reconcile pass at `now`; with `stale`, the controller's cache is one write behind.
pub async fn pass(
    mr: &mut MachineRequest,
    template: &MachineTemplate,
    provider: &AnyProvider,
    sink: &MemoryStatus,
    now: jiff::Timestamp,
    stale: bool,
) -> Result<(MachineRequestStatus, Requeue), Error> {
    mr.status = if stale { sink.one_write_behind() } else { sink.current() };
    let target = Target { provider_name: "default", provider, hold: None, machines_elsewhere: 0 };
    drive(mr, template, target, sink, now).await
}
