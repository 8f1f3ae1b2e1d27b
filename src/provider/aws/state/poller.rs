//! The batched instance poller of one AWS provider: it tracks every instance of every request
//! the provider serves and refreshes them all together — DescribeInstances by id, up to 1000
//! ids per call (fewer for a while after one got no answer: `calls::id_lists`) — so a
//! reconcile reads its machines from memory instead of asking EC2. The cost grows with
//! instances / 1000, not with requests.
//!
//! A cycle runs every `poll` while anything is changing state (or was never seen) and every
//! `steady` otherwise, or when a reconcile needs something the view lacks (at most one cycle
//! starts per `SPACING`, so launches let out one by one share cycles). It refreshes the
//! instances that may have changed — changing state, never described, of a request just acted
//! on, or named by an EC2 state-change notice — and each settled instance once per `steady`: a
//! settled machine costs one describe per `steady`, however many cycles other requests'
//! launches cause. A cycle takes at most one call's worth of settled instances (those
//! described longest ago) and leaves the rest to the next cycles, at `poll`: a reconcile
//! waiting for a cycle never waits for every machine of the provider to be described.
//!
//! A request the process has not seen yet (first reconcile after a start), one whose launch
//! lost its answer, and one released after such a launch are also listed by their tags —
//! batched too: one DescribeInstances filtered on up to 200 request uids — so instances its
//! status does not name are found. A listing that fails (after being sent again as smaller
//! lists if it got no answer in time) fails the look of its own requests only; the rest of the
//! cycle lands. The requests' EC2 fleets, spot fleet requests and Auto Scaling groups are
//! refreshed in the same cycle, batched by API (`fleet_state`). A change of an instance, or of
//! a fleet's members, outstanding units or errors, wakes only the request that owns it.

use super::fleet_state::{self, Held};
use crate::provider::aws::calls::ops::{self, Ops};
use crate::provider::{FleetView, InstanceState, ObservedMachine, Owner, ProviderError, RequestKey, tags};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};

/// How long a cycle waits after being woken, so that reconciles running together share it.
const GATHER: Duration = Duration::from_millis(50);
/// The least time between the starts of two cycles: launches trickling out one by one (a
/// rate limit lets out a few a second) share a cycle rather than each causing its own.
const SPACING: Duration = Duration::from_secs(1);
/// How long a terminated instance stays in the view, as EC2 keeps listing it for about an hour.
const TERMINATED_RETENTION: Duration = Duration::from_secs(60 * 60);
/// How long EC2's describe may not know an instance its launch returned.
const VISIBILITY_LAG: Duration = Duration::from_secs(120);
/// A request no reconcile has asked about for this long is forgotten (it was deleted with
/// `deletionPolicy: Orphan`, or by another process): live requests are reconciled every few
/// minutes.
const FORGET_IDLE: Duration = Duration::from_secs(30 * 60);

/// Intervals of the poller.
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    /// While anything is pending, shutting down, stopping or not yet seen.
    pub poll: Duration,
    /// When everything is steady.
    pub steady: Duration,
}

/// One instance as last described, with what its tags say about its owner.
#[derive(Clone, Debug)]
struct Seen {
    machine: ObservedMachine,
    /// The `orb.dev/request-uid` tag, if any.
    uid: Option<String>,
    /// Tagged with this cluster's id.
    ours: bool,
    /// When the view first saw it terminated.
    terminated_at: Option<tokio::time::Instant>,
    /// When a launch's answer put it in the view (EC2's describe may not know it yet).
    launched_at: Option<tokio::time::Instant>,
    /// When a cycle that described it began (None: only a launch's answer named it).
    described_at: Option<tokio::time::Instant>,
    /// What AWS announced about it (the interruption queue): kept while it is in the view.
    notice: Option<crate::api::MachineNotice>,
}

impl Seen {
    /// Changing state, or never described by EC2 (only a launch's answer named it).
    fn unsettled(&self) -> bool {
        self.launched_at.is_some()
            || matches!(
                self.machine.state,
                InstanceState::Pending | InstanceState::ShuttingDown | InstanceState::Stopping
            )
    }
}

struct Request {
    key: RequestKey,
    ids: BTreeSet<String>,
    /// Listed by tags in the next cycle.
    list: bool,
    /// Listed by tags in every cycle until then: a launch whose outcome is unknown may show in
    /// EC2's listing only after a while.
    list_until: Option<tokio::time::Instant>,
    /// The cycle its next look waits for: one that began after the request was first seen,
    /// after the operator acted on its machines, or after it asked for a listing — so no plan
    /// is made from a view older than the operator's own act.
    needs: u64,
    asked: tokio::time::Instant,
    /// Its fleets, spot fleet requests and group, refreshed with the instances.
    held: Held,
    /// The cycle a look that did not wait (`Poller::look`) asked for: the request is woken
    /// after each cycle from that one on, until a look takes the answer.
    awaiting: Option<u64>,
}

#[derive(Default)]
struct State {
    requests: HashMap<String, Request>,
    machines: HashMap<String, Seen>,
    /// What the last cycles learnt of the requests' fleets.
    fleets: fleet_state::Book,
    /// Cycles that have taken their snapshot.
    started: u64,
    /// The last cycle that finished without error.
    finished: u64,
    /// The last cycle left settled instances due for their refresh to the next ones.
    behind: bool,
    /// Instances EC2 said changed state: refreshed in the next cycle.
    stale: BTreeSet<String>,
}

impl State {
    fn busy(&self) -> bool {
        self.behind
            || fleet_state::busy(&self.fleets)
            || self.requests.values().any(|r| {
                r.list
                    || r.needs > self.finished
                    || r.ids.iter().any(|id| self.machines.get(id).is_none_or(Seen::unsettled))
            })
    }

    /// The owner's entry, made on first sight: its first look waits for a cycle that begins
    /// after it (and lists it by its tags).
    fn entry(&mut self, owner: &Owner) -> &mut Request {
        let next = self.started + 1;
        let request = self.requests.entry(owner.uid.clone()).or_insert_with(|| Request {
            key: RequestKey { namespace: owner.namespace.clone(), name: owner.name.clone() },
            ids: BTreeSet::new(),
            list: true,
            list_until: None,
            needs: next,
            asked: tokio::time::Instant::now(),
            held: Held::default(),
            awaiting: None,
        });
        request.asked = tokio::time::Instant::now();
        request
    }

    /// What the owner's look needs: records its `known` ids and returns the cycle it must
    /// wait for, if any.
    fn ask(&mut self, owner: &Owner, known: &[String], launched: bool) -> Option<u64> {
        let (next, finished) = (self.started + 1, self.finished);
        let unseen = known.iter().any(|id| !self.machines.contains_key(id));
        let request = self.entry(owner);
        if !launched {
            // Its status records no attempt, and one is written before any create call.
            request.list = false;
            request.needs = 0;
        }
        request.ids.extend(known.iter().cloned());
        if unseen {
            request.needs = request.needs.max(next);
        }
        (request.needs > finished).then_some(request.needs)
    }

    /// The requests to wake after cycle `number`: those whose look did not wait for it (or
    /// for an earlier one), served or failed — their next look takes the answer.
    fn woken(&self, number: u64) -> Vec<RequestKey> {
        self.requests.values().filter(|r| r.awaiting.is_some_and(|c| c <= number)).map(|r| r.key.clone()).collect()
    }

    /// The fleet view of every request.
    fn fleet_views(&self) -> HashMap<String, FleetView> {
        self.requests.iter().map(|(uid, r)| (uid.clone(), fleet_state::view(&self.fleets, &r.held))).collect()
    }

    /// Drops a request and the machines it tracked.
    fn forget(&mut self, uid: &str) {
        if let Some(request) = self.requests.remove(uid) {
            for id in request.ids {
                self.machines.remove(&id);
            }
        }
    }

    /// Stops tracking instance `id` for every request.
    fn untrack(&mut self, id: &str) {
        for request in self.requests.values_mut() {
            request.ids.remove(id);
        }
    }

    /// Ids to refresh, of the tracked instances not known to be terminated: those that may
    /// have changed since they were last described — changing state or never described, every
    /// instance of a request waiting for a fresh look (it was just acted on, or asked about
    /// instances the view lacks), and those EC2 said changed — and, of the others, those not
    /// described for `steady`, oldest first, at most `most`. Says too whether any of those
    /// were left for a later cycle.
    fn refreshable(&self, now: tokio::time::Instant, steady: Duration, most: usize) -> (BTreeSet<String>, bool) {
        let mut changing = BTreeSet::new();
        let mut due = vec![];
        for request in self.requests.values() {
            let whole = request.needs > self.finished;
            for id in &request.ids {
                match self.machines.get(id) {
                    Some(seen) if seen.machine.state == InstanceState::Terminated => {}
                    Some(seen) if !whole && !seen.unsettled() && !self.stale.contains(id) => {
                        let described = seen.described_at.filter(|at| now.duration_since(*at) < steady);
                        if described.is_none() {
                            due.push((seen.described_at, id));
                        }
                    }
                    _ => {
                        changing.insert(id.clone());
                    }
                }
            }
        }
        due.sort();
        due.dedup();
        due.retain(|(_, id)| !changing.contains(*id));
        let behind = due.len() > most;
        changing.extend(due.into_iter().take(most).map(|(_, id)| id.clone()));
        (changing, behind)
    }
}

/// The last finished cycle: its number and, if it failed, why — as a whole, or for the
/// requests (by uid) whose tag listing failed.
#[derive(Clone, Debug, Default)]
struct Done {
    cycle: u64,
    error: Option<ProviderError>,
    unlisted: Arc<HashMap<String, ProviderError>>,
}

impl Done {
    /// Why this cycle did not look at request `uid`: it failed as a whole, or its listing did.
    fn failed(&self, uid: &str) -> Option<ProviderError> {
        self.error.clone().or_else(|| self.unlisted.get(uid).cloned())
    }
}

struct Shared {
    state: Mutex<State>,
    kick: Notify,
    done: watch::Sender<Done>,
    changes: broadcast::Sender<RequestKey>,
    intervals: Intervals,
    provider: String,
    metrics: Arc<crate::metrics::Metrics>,
    /// Set when the poller is dropped: its loop ends.
    stopped: std::sync::atomic::AtomicBool,
}

/// The poller; cheap to share. Its loop starts with the first question asked of it and ends
/// when the poller is dropped.
pub struct Poller {
    shared: Arc<Shared>,
    ops: Ops,
    started: std::sync::Once,
}

impl Poller {
    pub fn new(ops: Ops, intervals: Intervals, provider: String, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let (done, _) = watch::channel(Done::default());
        let (changes, _) = broadcast::channel(4096);
        let shared = Shared {
            state: Mutex::default(),
            kick: Notify::new(),
            done,
            changes,
            intervals,
            provider,
            metrics,
            stopped: std::sync::atomic::AtomicBool::new(false),
        };
        Self { shared: Arc::new(shared), ops, started: std::sync::Once::new() }
    }

    /// Requests whose machines changed, as they change, and those a `look` owes a wake.
    pub fn changes(&self) -> broadcast::Receiver<RequestKey> {
        self.shared.changes.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(&self) {
        self.started.call_once(|| {
            tokio::spawn(run(self.shared.clone(), self.ops.clone()));
        });
    }

    /// The owner's machines: the instances its tags list and those of `known` (ids its status
    /// or its fleets name), as of the last cycle. The first question about a request, and one
    /// naming an instance never described, waits for the next cycle (batched with every other
    /// request asking then). Instances tagged for another request are left out; `untagged`
    /// marks those the tag listing would not find. A request that never `launched` has
    /// nothing to list or wait for: its answer is at once (and empty).
    pub async fn observe(
        &self,
        owner: &Owner,
        known: &[String],
        launched: bool,
    ) -> Result<Vec<ObservedMachine>, ProviderError> {
        self.start();
        let needs = self.state().ask(owner, known, launched);
        if let Some(cycle) = needs {
            self.cycle_done(cycle, &owner.uid).await?;
        }
        Ok(self.view(owner))
    }

    /// `observe` without the wait: the owner's machines if the view is fresh enough for it,
    /// else `None` — the next cycle is asked for, and from then on each cycle wakes the owner
    /// (`changes`) until a look takes the answer: the view once that cycle has looked at it
    /// (as `observe` returns it after its wait), or the error of a cycle that failed it. A
    /// caller holds nothing while the cycle runs.
    pub fn look(
        &self,
        owner: &Owner,
        known: &[String],
        launched: bool,
    ) -> Result<Option<Vec<ObservedMachine>>, ProviderError> {
        self.start();
        let mut state = self.state();
        let finished = state.finished;
        let request = state.entry(owner);
        let waits = match request.awaiting {
            Some(cycle) if cycle <= finished && request.needs <= finished => {
                request.awaiting = None;
                None
            }
            Some(cycle) => {
                drop(state);
                let done = self.shared.done.borrow().clone();
                return match done.failed(&owner.uid) {
                    Some(error) if done.cycle >= cycle => Err(error),
                    _ => Ok(None),
                };
            }
            None => state.ask(owner, known, launched),
        };
        if let Some(cycle) = waits {
            state.entry(owner).awaiting = Some(cycle);
            drop(state);
            self.shared.kick.notify_one();
            return Ok(None);
        }
        drop(state);
        Ok(Some(self.view(owner)))
    }

    /// The state of the owner's fleets, spot fleet requests and group, as of the last cycle.
    /// One not described yet (just recorded) is waited for: the next cycle describes it with
    /// every other request's.
    pub async fn fleets(&self, owner: &Owner, held: Held) -> Result<FleetView, ProviderError> {
        self.start();
        let needs = {
            let mut state = self.state();
            let (next, finished) = (state.started + 1, state.finished);
            let request = state.entry(owner);
            if held.keys_not_in(&request.held) {
                request.needs = request.needs.max(next);
            }
            request.held = held.clone();
            (request.needs > finished && !held.is_empty()).then_some(request.needs)
        };
        if let Some(cycle) = needs {
            self.cycle_done(cycle, &owner.uid).await?;
        }
        let state = self.state();
        if let Some(id) = fleet_state::unlisted(&state.fleets, &held) {
            return Err(ProviderError::Transient {
                code: "FleetNotListedYet".into(),
                message: format!("fleet {id} is recorded but EC2 does not describe it yet; waiting for it"),
            });
        }
        Ok(fleet_state::view(&state.fleets, &held))
    }

    /// The owner's machines after a fresh tag listing: what a release must tear down.
    pub async fn relist(&self, owner: &Owner, known: &[String]) -> Result<Vec<ObservedMachine>, ProviderError> {
        self.list_again(owner);
        self.observe(owner, known, true).await
    }

    /// Waits until cycle `cycle` has finished, and says whether it looked at request `uid`.
    async fn cycle_done(&self, cycle: u64, uid: &str) -> Result<(), ProviderError> {
        let mut done = self.shared.done.subscribe();
        self.shared.kick.notify_one();
        let finished = done
            .wait_for(|d| d.cycle >= cycle)
            .await
            .map_err(|_| ProviderError::Transient { code: "PollerStopped".into(), message: "the poller ended".into() })?
            .clone();
        finished.failed(uid).map_or(Ok(()), Err)
    }

    fn view(&self, owner: &Owner) -> Vec<ObservedMachine> {
        let state = self.state();
        let Some(request) = state.requests.get(&owner.uid) else { return vec![] };
        request
            .ids
            .iter()
            .filter_map(|id| state.machines.get(id))
            .filter(|s| s.uid.as_ref().is_none_or(|uid| *uid == owner.uid))
            .map(|s| ObservedMachine {
                untagged: !(s.ours && s.uid.is_some()),
                notice: s.notice.clone(),
                ..s.machine.clone()
            })
            .collect()
    }

    /// Of `ids`, those the view knows as the owner's (tagged with its uid, or untagged) and not
    /// yet on their way out; `None` when the view does not know every one of them.
    pub fn terminable(&self, owner: &Owner, ids: &[String]) -> Option<Vec<String>> {
        let state = self.state();
        let mut mine = vec![];
        for id in ids {
            let seen = state.machines.get(id)?;
            if seen.uid.as_ref().is_none_or(|uid| *uid == owner.uid) && seen.machine.state.can_terminate() {
                mine.push(id.clone());
            }
        }
        Some(mine)
    }

    /// Records machines a launch returned: tracked from now on, seen without a describe.
    pub fn launched(&self, owner: &Owner, machines: &[ObservedMachine]) {
        let mut state = self.state();
        for m in machines {
            let seen = Seen {
                machine: m.clone(),
                uid: Some(owner.uid.clone()),
                ours: true,
                terminated_at: None,
                launched_at: Some(tokio::time::Instant::now()),
                described_at: None,
                notice: None,
            };
            state.machines.insert(m.instance_id.clone(), seen);
            if let Some(request) = state.requests.get_mut(&owner.uid) {
                request.ids.insert(m.instance_id.clone());
            }
        }
        drop(state);
        // Pending machines: the next cycle comes at the short interval, not the steady one.
        self.shared.kick.notify_one();
    }

    /// Records that the operator changed the owner's machines (launched, returned): its next
    /// look waits for a fresh cycle.
    pub fn acted(&self, owner: &Owner) {
        let mut state = self.state();
        let next = state.started + 1;
        if let Some(request) = state.requests.get_mut(&owner.uid) {
            request.needs = next;
        }
    }

    /// Asks for a tag listing of the owner in the next cycle.
    pub fn list_again(&self, owner: &Owner) {
        let mut state = self.state();
        let next = state.started + 1;
        if let Some(request) = state.requests.get_mut(&owner.uid) {
            request.list = true;
            request.needs = next;
        }
    }

    /// A launch's outcome is unknown (no answer): the owner is listed by its tags in every
    /// cycle for as long as EC2's listing may lag, so whatever it launched is found even if
    /// the attempt is never replayed.
    pub fn outcome_unknown(&self, owner: &Owner) {
        self.list_again(owner);
        if let Some(request) = self.state().requests.get_mut(&owner.uid) {
            request.list_until = Some(tokio::time::Instant::now() + VISIBILITY_LAG);
        }
    }

    /// Forgets a released request and its machines.
    pub fn forget(&self, owner: &Owner) {
        self.state().forget(&owner.uid);
    }

    /// Where the interruption queue's consumer posts what AWS announces.
    pub fn notices(&self) -> Notices {
        Notices(self.shared.clone())
    }
}

/// What a message about one instance did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noted {
    /// The instance is one of this cluster's tracked machines: recorded, its request woken.
    Applied,
    /// Not a machine of this cluster's requests (another cluster's, a forged id, or one
    /// released): nothing changed.
    Unknown,
}

/// The poller's side of the interruption queue: notices and state changes of the machines it
/// tracks, and only those (an id tagged for no request of this cluster changes nothing).
#[derive(Clone)]
pub struct Notices(Arc<Shared>);

impl Notices {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The request that tracks instance `id`, if it is this cluster's and still running.
    fn owner_of(state: &State, id: &str) -> Option<RequestKey> {
        let seen = state.machines.get(id).filter(|s| s.ours && s.machine.state != InstanceState::Terminated)?;
        let uid = seen.uid.as_ref()?;
        state.requests.get(uid).filter(|r| r.ids.contains(id)).map(|r| r.key.clone())
    }

    /// Records `notice` on instance `id` and wakes its request. A notice of loss is not
    /// replaced by a lesser one.
    pub fn notice(&self, id: &str, notice: crate::api::MachineNotice) -> Noted {
        let mut state = self.state();
        let Some(key) = Self::owner_of(&state, id) else { return Noted::Unknown };
        let Some(seen) = state.machines.get_mut(id) else { return Noted::Unknown };
        let lesser = seen.notice.as_ref().is_some_and(|old| old.kind.is_loss() && !notice.kind.is_loss());
        if !lesser && seen.notice.as_ref() != Some(&notice) {
            seen.notice = Some(notice);
            drop(state);
            let _ = self.0.changes.send(key);
        }
        Noted::Applied
    }

    /// Instance `id` changed state (EC2 said so): a cycle refreshes it now, not at the steady
    /// interval, and wakes its request if it changed.
    pub fn state_changed(&self, id: &str) -> Noted {
        let mut state = self.state();
        if Self::owner_of(&state, id).is_none() {
            return Noted::Unknown;
        }
        state.stale.insert(id.to_string());
        drop(state);
        self.0.kick.notify_one();
        Noted::Applied
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.kick.notify_one();
    }
}

/// The poller's loop; it ends when the poller is dropped.
async fn run(shared: Arc<Shared>, ops: Ops) {
    let mut last_began: Option<tokio::time::Instant> = None;
    loop {
        let Intervals { poll, steady } = shared.intervals;
        let busy = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).busy();
        tracing::trace!(provider = %shared.provider, busy, "poller waits");
        let kicked = tokio::select! {
            () = shared.kick.notified() => true,
            () = tokio::time::sleep(if busy { poll } else { steady }) => false,
        };
        if shared.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if kicked {
            let spaced = last_began.map_or(Duration::ZERO, |at| SPACING.saturating_sub(at.elapsed()));
            tokio::time::sleep(GATHER.max(spaced)).await;
        }
        last_began = Some(tokio::time::Instant::now());
        cycle(&shared, &ops).await;
    }
}

/// One refresh: a tag listing of the requests that need one, then every other tracked
/// instance by id.
async fn cycle(shared: &Shared, ops: &Ops) {
    let snapshot = {
        let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let idle: Vec<String> = state
            .requests
            .iter()
            .filter(|(_, r)| now.duration_since(r.asked) > FORGET_IDLE)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in idle {
            state.forget(&uid);
        }
        let expired: Vec<String> = state
            .machines
            .iter()
            .filter(|(_, s)| s.terminated_at.is_some_and(|at| now.duration_since(at) > TERMINATED_RETENTION))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            state.machines.remove(&id);
            state.untrack(&id);
        }
        state.started += 1;
        let mut uids = vec![];
        for (uid, request) in &mut state.requests {
            let lagging = request.list_until.is_some_and(|until| now < until);
            if std::mem::take(&mut request.list) || lagging {
                uids.push(uid.clone());
            }
        }
        // Instances that may have changed every `poll`; the others every `steady`: a running
        // machine costs a describe a minute, not one per cycle another request's launch causes.
        let ids;
        (ids, state.behind) = state.refreshable(now, shared.intervals.steady, ops.id_lists.size());
        state.stale.clear();
        let held: Vec<Held> = state.requests.values().map(|r| r.held.clone()).collect();
        let fleets = fleet_state::due(&state.fleets, &held, ops);
        let gone: HashSet<String> = state
            .machines
            .iter()
            .filter(|(_, s)| s.machine.state == InstanceState::Terminated)
            .map(|(id, _)| id.clone())
            .collect();
        (state.started, uids, ids, (fleets, held), state.fleets.clone(), gone, now)
    };
    let (number, listed_uids, ids, (fleets, held), book, gone, began) = snapshot;
    tracing::debug!(provider = %shared.provider, cycle = number, listed = listed_uids.len(), refreshed = ids.len(), fleets = fleets.len(), "poll cycle");
    let result = async {
        let fresh = fleet_state::refresh(ops, &fleets, &book, &gone).await?;
        Ok((fresh, describe(ops, &listed_uids, &ids).await?))
    }
    .await;
    let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut unlisted = HashMap::new();
    let (error, mut wake) = match result {
        Ok((fresh, (found, failed))) => {
            if let Some((_, error)) = failed.first() {
                tracing::warn!(provider = %shared.provider, requests = failed.len(), %error, "tag listing failed; those requests are listed again at the next cycle");
            }
            for (uid, error) in failed {
                if let Some(request) = state.requests.get_mut(&uid) {
                    request.list = true;
                    request.needs = request.needs.max(number + 1);
                }
                unlisted.insert(uid, error);
            }
            let before = state.fleet_views();
            state.fleets = fleet_state::merged(std::mem::take(&mut state.fleets), fresh, &fleets, &held);
            let after = state.fleet_views();
            let mut changed = merge(&mut state, found, &ids, &ops.cluster_id, began);
            for (uid, view) in &after {
                if before.get(uid) != Some(view)
                    && let Some(request) = state.requests.get(uid)
                {
                    changed.push(request.key.clone());
                }
            }
            state.finished = number;
            shared.metrics.polled(&shared.provider, state.machines.len());
            (None, changed)
        }
        Err(error) => {
            tracing::warn!(provider = %shared.provider, %error, "instance refresh failed; retrying at the next cycle");
            for uid in &listed_uids {
                if let Some(request) = state.requests.get_mut(uid) {
                    request.list = true;
                }
            }
            state.stale.extend(ids);
            // Whoever waited for this cycle waits for the next one.
            for request in state.requests.values_mut() {
                request.needs = request.needs.max(number + 1);
            }
            (Some(error), vec![])
        }
    };
    // Looks that did not wait, woken after the cycle's outcome is published: to their view,
    // or to its error.
    wake.extend(state.woken(number));
    drop(state);
    shared.done.send_replace(Done { cycle: number, error, unlisted: Arc::new(unlisted) });
    wake.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    wake.dedup();
    for key in wake {
        // Nobody listening (tests, a controller not started yet) is fine.
        let _ = shared.changes.send(key);
    }
}

/// An instance a cycle found, with its reservation when the call named it.
type Found = (Option<String>, aws_sdk_ec2::types::Instance);

/// The instances found by the listing of `uids` and by `ids`, and the uids whose listing
/// failed (their ids are described by id all the same).
async fn describe(
    ops: &Ops,
    uids: &[String],
    ids: &BTreeSet<String>,
) -> Result<(Vec<Found>, Vec<(String, ProviderError)>), ProviderError> {
    let ops::Listed { mut found, failed } = ops.list_by_uids(uids).await;
    let listed: BTreeSet<&str> = found.iter().filter_map(|(_, i)| i.instance_id()).collect();
    let rest: Vec<String> = ids.iter().filter(|id| !listed.contains(id.as_str())).cloned().collect();
    found.extend(ops.describe_by_ids(&rest).await?.into_iter().map(|i| (None, i)));
    Ok((found, failed))
}

/// Puts what a cycle that `began` then found into the view; returns the requests whose
/// machines changed.
fn merge(
    state: &mut State,
    found: Vec<Found>,
    asked: &BTreeSet<String>,
    cluster_id: &str,
    began: tokio::time::Instant,
) -> Vec<RequestKey> {
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut described: BTreeSet<String> = BTreeSet::new();
    for (reservation, instance) in &found {
        let Some(mut machine) = ops::observed(instance, reservation.as_deref()) else { continue };
        let id = machine.instance_id.clone();
        let uid = ops::tag_value(instance, tags::REQUEST_UID).map(str::to_string);
        let ours = ops::tag_value(instance, tags::CLUSTER).is_some_and(|c| c == cluster_id);
        // A listed instance joins its request's tracked set.
        if let Some(owner) = uid.as_ref().filter(|_| ours)
            && let Some(request) = state.requests.get_mut(owner)
        {
            request.ids.insert(id.clone());
        }
        // Described for a request released (forgotten) while this cycle ran: not tracked.
        if !state.requests.values().any(|r| r.ids.contains(&id)) {
            continue;
        }
        // A describe by id does not name the reservation: keep the one already known.
        if machine.reservation_id.is_none() {
            machine.reservation_id = state.machines.get(&id).and_then(|s| s.machine.reservation_id.clone());
        }
        let before =
            state.machines.get(&id).map(|s| (s.machine.state, s.machine.private_ip.clone(), s.uid.clone(), s.ours));
        if before != Some((machine.state, machine.private_ip.clone(), uid.clone(), ours)) {
            changed.insert(id.clone());
        }
        described.insert(id.clone());
        let terminated_at = match machine.state {
            InstanceState::Terminated => {
                Some(state.machines.get(&id).and_then(|s| s.terminated_at).unwrap_or_else(tokio::time::Instant::now))
            }
            _ => None,
        };
        let notice = state.machines.get(&id).and_then(|s| s.notice.clone());
        let seen = Seen { machine, uid, ours, terminated_at, launched_at: None, described_at: Some(began), notice };
        state.machines.insert(id, seen);
    }
    // Asked for and not returned: EC2 does not know them yet (launched a moment ago: the view
    // has them from the launch's answer), or no longer (terminated long ago, or removed with
    // their fleet): then they are gone.
    let now = tokio::time::Instant::now();
    for id in asked.iter().filter(|id| !described.contains(*id)) {
        match state.machines.get_mut(id) {
            Some(seen) if seen.launched_at.is_some_and(|at| now.duration_since(at) < VISIBILITY_LAG) => {}
            Some(seen) => {
                if seen.machine.state != InstanceState::Terminated {
                    seen.machine.state = InstanceState::Terminated;
                    seen.machine.state_reason = Some("EC2 no longer reports the instance".into());
                    seen.terminated_at = Some(now);
                    changed.insert(id.clone());
                }
            }
            None => state.untrack(id),
        }
    }
    state.requests.values().filter(|r| r.ids.iter().any(|id| changed.contains(id))).map(|r| r.key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn machine(id: &str, state: InstanceState, described_at: Option<Instant>) -> Seen {
        let machine = ObservedMachine::new(id, state);
        Seen { machine, uid: None, ours: true, terminated_at: None, launched_at: None, described_at, notice: None }
    }

    fn request(ids: &[&str], needs: u64) -> Request {
        Request {
            key: RequestKey { namespace: "ns".into(), name: ids[0].into() },
            ids: ids.iter().map(|id| id.to_string()).collect(),
            list: false,
            list_until: None,
            needs,
            asked: Instant::now(),
            held: Held::default(),
            awaiting: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_that_did_not_wait_is_woken_by_each_cycle_from_the_one_it_asked_for() {
        let mut state = State::default();
        for (name, awaiting) in [("asked-3", Some(3)), ("asked-4", Some(4)), ("waited", None)] {
            state.requests.insert(name.into(), Request { awaiting, ..request(&[name], 3) });
        }
        let woken = |state: &State, number| {
            let mut names: Vec<String> = state.woken(number).into_iter().map(|k| k.name).collect();
            names.sort();
            names
        };
        assert_eq!(woken(&state, 2), Vec::<String>::new(), "before the cycle it asked for");
        assert_eq!(woken(&state, 3), ["asked-3"]);
        assert_eq!(woken(&state, 4), ["asked-3", "asked-4"], "until a look takes the answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cycle_takes_one_calls_worth_of_settled_machines_described_longest_ago() {
        let steady = Duration::from_secs(60);
        let mut state = State { finished: 1, ..State::default() };
        for id in ["a1", "a2", "a3", "a4", "a5"] {
            // Described a second apart: a1 longest ago.
            state.machines.insert(id.into(), machine(id, InstanceState::Running, Some(Instant::now())));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        state.machines.insert("a6".into(), machine("a6", InstanceState::Pending, Some(Instant::now())));
        state.machines.insert("gone".into(), machine("gone", InstanceState::Terminated, None));
        state.requests.insert("a".into(), request(&["a1", "a2", "a3", "a4", "a5", "a6", "gone"], 1));
        // A request waiting for a fresh look: all of its machines, however recently described.
        state.machines.insert("b1".into(), machine("b1", InstanceState::Running, Some(Instant::now())));
        state.requests.insert("b".into(), request(&["b1"], 2));

        let now = Instant::now();
        let (ids, behind) = state.refreshable(now, steady, 2);
        assert_eq!(ids, ["a6", "b1"].map(String::from).into(), "nothing settled is due yet");
        assert!(!behind);

        tokio::time::advance(steady - Duration::from_secs(4)).await;
        let (ids, behind) = state.refreshable(Instant::now(), steady, 2);
        assert_eq!(ids, ["a1", "a2", "a6", "b1"].map(String::from).into(), "two due, at most two taken");
        assert!(!behind);

        tokio::time::advance(Duration::from_secs(10)).await;
        let (ids, behind) = state.refreshable(Instant::now(), steady, 2);
        assert_eq!(ids, ["a1", "a2", "a6", "b1"].map(String::from).into(), "the two described longest ago");
        assert!(behind, "a3..a5 are left for the next cycles");
        for id in ["a1", "a2"] {
            state.machines.get_mut(id).unwrap().described_at = Some(Instant::now());
        }
        let (ids, behind) = state.refreshable(Instant::now(), steady, 2);
        assert_eq!(ids, ["a3", "a4", "a6", "b1"].map(String::from).into());
        assert!(behind);

        // Once nothing is changing, a poller still behind cycles at the short interval.
        let a6 = state.machines.get_mut("a6").unwrap();
        (a6.machine.state, a6.described_at) = (InstanceState::Running, Some(Instant::now()));
        state.requests.get_mut("b").unwrap().needs = 1;
        assert!(!state.busy());
        state.behind = true;
        assert!(state.busy());
    }
}
