//! The request planner: a pure function from (spec, previous status, what the cloud reports) to
//! the next step and the status to write. No I/O, no clock: `now` is an input. Every rule of
//! DESIGN §2 about capacity, returns, scale-down and the fulfilment timeout lives here.
//!
//! Scale-down victims, in order: machines named in `spec.returnMachines` (always returned), then
//! pending machines before running ones, then the newest first (by launch time, then instance
//! id). A victim is taken only while it fits in the excess, so weighted machines never take the
//! request below its capacity.

use crate::api::conditions::{self, Cond};
use crate::api::{
    Attempt, Blocked, Failure, LostMachines, MAX_CAPACITY, MAX_FAILURE_MESSAGE, MAX_FAILURES, MAX_MACHINE_MESSAGE,
    MAX_SETTLED_MACHINES, Machine, MachineNotice, MachineRequestSpec, MachineRequestStatus, MachineResult,
    MachineTemplateSpec, NoticeKind, Phase,
};
use crate::provider::{
    InstanceState, LaunchFailure, MarketMix, ObservedMachine, ProviderError, ProvisionOutcome, market_split,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// A machine launched this recently that the cloud does not list yet is kept (the cloud's
/// describe calls are eventually consistent).
const VISIBILITY_GRACE: SignedDuration = SignedDuration::from_mins(2);
/// An auth error (missing permissions) is tried again after this long: permissions get
/// granted without anyone editing the request.
const AUTH_RETRY: SignedDuration = SignedDuration::from_mins(10);
/// How often a request capped by `maxMachines` looks for freed machines.
const CAP_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);
/// Backoff after a failed attempt: 10s, doubling, at most 5 minutes.
const FIRST_BACKOFF: SignedDuration = SignedDuration::from_secs(10);
const MAX_BACKOFF: SignedDuration = SignedDuration::from_mins(5);

/// The request and template as of this reconcile.
#[derive(Clone, Debug)]
pub struct Frame<'a> {
    pub now: Timestamp,
    pub request_name: &'a str,
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a MachineRequestSpec,
    pub template: &'a MachineTemplateSpec,
    pub template_generation: i64,
    /// Why launching is not allowed right now (template not Ready): reason and message.
    pub launch_hold: Option<(String, String)>,
    /// Live machines of the template's other requests (for `maxMachines`).
    pub machines_elsewhere: u32,
    /// Capacity units the request's fleets are still launching (pending, never launched twice).
    pub outstanding: u32,
    /// Errors the request's fleets report.
    pub fleet_failures: &'a [LaunchFailure],
    /// Recorded fleets and spot fleet requests that are over (deleted, cancelled, failed):
    /// forgotten from `status.resources`, they launch nothing more.
    pub finished_fleets: &'a [String],
}

/// The next action.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Terminate these machines (already marked `returning` in the status to write first).
    Return(Vec<String>),
    /// Launch `units` capacity units under `attempt` (recorded in the status to write first).
    Launch { units: u32, attempt: Attempt },
    /// Nothing to do now.
    Wait,
}

/// When to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Just acted: observe the effect shortly.
    Soon,
    /// Machines are changing state: poll.
    Poll,
    /// Settled: a slow resync catches changes made outside the operator.
    Idle,
    /// Only a change to the request or its template can help.
    AwaitChange,
    /// Backing off after a failed attempt: look again after this long.
    After(std::time::Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub step: Step,
    /// Status to write before acting.
    pub status: MachineRequestStatus,
    pub requeue: Requeue,
}

/// Decides the next step for a request.
pub fn plan(frame: &Frame<'_>, previous: &MachineRequestStatus, observed: &[ObservedMachine]) -> Plan {
    let mut status = previous.clone();
    let spec_changed = status.observed_generation != Some(frame.generation);
    status.observed_generation = Some(frame.generation);
    status.api = Some(frame.template.api.as_str().into());
    status.requested_capacity = frame.spec.capacity;
    status.machines = merge_machines(frame, &previous.machines, observed);
    replace_ahead(frame, &mut status.machines);
    // A machine that held capacity and was lost since the last pass opens a new episode, so a
    // request that had settled (Partial after its timeout) replaces it too.
    let newly_lost = status.machines.iter().any(|m| {
        m.result == Some(MachineResult::Fail)
            && previous.machines.iter().any(|p| p.instance_id == m.instance_id && p.counts_as_live())
    });

    let named: BTreeSet<&str> = frame.spec.return_machines.iter().map(String::as_str).collect();
    for m in &mut status.machines {
        // A stopped machine named too: it holds no capacity, but it still exists (and costs).
        let terminable = state_of(m).is_some_and(InstanceState::can_terminate);
        if named.contains(m.instance_id.as_str()) && !m.returning && terminable {
            m.returning = true;
            m.message = Some("returning: named in spec.returnMachines".into());
        }
    }
    let capacity = frame.spec.capacity.max(0).unsigned_abs();
    let excess = live_units(&status.machines).saturating_sub(capacity);
    for victim in choose_victims(&status.machines, excess) {
        if let Some(m) = status.machines.iter_mut().find(|m| m.instance_id == victim) {
            m.returning = true;
            m.message = Some("returning: scale-down".into());
        }
    }
    let to_return: Vec<String> = status
        .machines
        .iter()
        .filter(|m| m.returning && state_of(m).is_some_and(InstanceState::can_terminate))
        .map(|m| m.instance_id.clone())
        .collect();

    let listed: BTreeSet<&str> = status.machines.iter().map(|m| m.instance_id.as_str()).collect();
    let mut reservations: Vec<String> = observed
        .iter()
        .filter(|o| listed.contains(o.instance_id.as_str()))
        .filter_map(|o| o.reservation_id.clone())
        .collect();
    reservations.sort();
    reservations.dedup();
    status.resources.reservation_ids = reservations;

    for failure in frame.fleet_failures {
        note_failure(&mut status.failures, failure, frame.now);
    }
    let finished = |id: &String| frame.finished_fleets.contains(id);
    status.resources.fleet_ids.retain(|id| !finished(id));
    status.resources.spot_fleet_request_ids.retain(|id| !finished(id));
    let deficit =
        capacity.saturating_sub(live_units(&status.machines) + frame.outstanding + held_by_lost(frame, &status));
    let shortfall = deficit > 0 || pending_units(&status.machines) + frame.outstanding > 0;
    if deficit == 0
        && let Some(a) = status.attempt.as_mut()
    {
        // Satisfied: whatever an open attempt launched is listed (adopted), and the next
        // shortfall starts without a backoff.
        a.completed = true;
        a.failed_streak = 0;
        a.retry_after = None;
    }
    let backing_off = backoff_pending(&status, frame.now).and_then(|a| a.retry_after.clone());
    status.provisioning_since = match (&status.provisioning_since, shortfall) {
        (_, false) => None,
        (Some(since), true) if !spec_changed && !newly_lost => Some(since.clone()),
        (_, true) => Some(Time(frame.now)),
    };
    if status.blocked.as_ref().is_some_and(|b| !blocks(b, frame)) {
        status.blocked = None;
    }

    let (allowed, cap_hold) = machine_cap(frame, &status.machines, deficit);
    let timeout_hold =
        timeout(frame).err().map(|e| ("InvalidSpec".to_string(), format!("spec.fulfilmentTimeout: {e}")));
    let hold = frame.launch_hold.clone().or(timeout_hold.clone()).or(cap_hold);
    let may_launch = deficit > 0 && status.blocked.is_none() && !timed_out(frame, &status) && hold.is_none();
    let blocked_until = status.blocked.as_ref().and_then(|b| b.retry_after.clone());
    // A fleet that keeps its own target (maintain, Auto Scaling) still launching more than the
    // request wants is lowered, even when no machine has to go.
    let overshoot = keeps_target(frame.template)
        && frame.outstanding > 0
        && live_units(&status.machines) + frame.outstanding > capacity;
    let (step, requeue) = if !to_return.is_empty() || overshoot {
        (Step::Return(to_return), Requeue::Soon)
    } else if let (true, Some(until)) = (may_launch, &backing_off) {
        let wait = until.0.duration_since(frame.now).unsigned_abs();
        (Step::Wait, Requeue::After(wait))
    } else if may_launch {
        let attempt = next_attempt(frame, &status, allowed);
        status.attempt = Some(attempt.clone());
        (Step::Launch { units: attempt.units.max(0).unsigned_abs(), attempt }, Requeue::Soon)
    } else if let Some(until) = blocked_until {
        (Step::Wait, Requeue::After(until.0.duration_since(frame.now).unsigned_abs()))
    } else if status.blocked.is_some() || (deficit > 0 && (frame.launch_hold.is_some() || timeout_hold.is_some())) {
        (Step::Wait, Requeue::AwaitChange)
    } else if deficit > 0 && hold.is_some() {
        // Capped by maxMachines: other requests may give machines back at any time.
        (Step::Wait, Requeue::After(CAP_RECHECK))
    } else if shortfall && !timed_out(frame, &status) || status.machines.iter().any(|m| m.returning) {
        (Step::Wait, Requeue::Poll)
    } else {
        (Step::Wait, Requeue::Idle)
    };
    summarise(frame, &mut status, !matches!(step, Step::Wait), hold.as_ref());
    Plan { step, status, requeue }
}

/// Units this request may launch now under the template's `maxMachines` (all of `deficit`
/// without a cap), and the hold to report when that is nothing. Units are capped at the
/// headroom times the smallest weight, so no choice of instance type can exceed the headroom.
fn machine_cap(frame: &Frame<'_>, machines: &[Machine], deficit: u32) -> (u32, Option<(String, String)>) {
    let Some(max) = frame.template.max_machines else { return (deficit, None) };
    let max = max.max(0).unsigned_abs();
    let smallest = smallest_weight(frame.template);
    let in_use = held(machines, frame.outstanding, smallest).saturating_add(frame.machines_elsewhere);
    let allowed = deficit.min(max.saturating_sub(in_use).saturating_mul(smallest));
    let hold = (allowed == 0 && deficit > 0).then(|| {
        (
            "MaxMachinesReached".to_string(),
            format!(
                "template {} allows {max} machines (spec.maxMachines) and {in_use} are in use; launching resumes when machines are returned",
                frame.spec.template_ref.name
            ),
        )
    });
    (allowed, hold)
}

/// The smallest weight of the template's instance types (at least 1).
fn smallest_weight(template: &MachineTemplateSpec) -> u32 {
    template.instance_types.iter().map(|t| t.weight.max(1).unsigned_abs()).min().unwrap_or(1)
}

/// Machines held against `maxMachines`: the live ones, and what the fleets still launch
/// (`outstanding` units) as machines of the smallest weight — the most machines it can become.
fn held(machines: &[Machine], outstanding: u32, smallest: u32) -> u32 {
    u32::try_from(machines.iter().filter(|m| live(m)).count())
        .unwrap_or(u32::MAX)
        .saturating_add(outstanding.div_ceil(smallest))
}

/// Machines a request holds against its template's `maxMachines`, from its status: live
/// machines, and the units its fleets still launch (pending capacity not yet a machine).
pub fn machines_held(status: &MachineRequestStatus, template: &MachineTemplateSpec) -> u32 {
    let outstanding = status.pending_capacity.max(0).unsigned_abs().saturating_sub(pending_units(&status.machines));
    held(&status.machines, outstanding, smallest_weight(template))
}

/// Folds a provision call's result into the status written after it.
pub fn record_launch(
    frame: &Frame<'_>,
    status: &mut MachineRequestStatus,
    result: &Result<ProvisionOutcome, ProviderError>,
) {
    let launched: u32 = match result {
        Ok(outcome) => {
            let machines: u32 = outcome
                .launched
                .iter()
                .map(|m| frame.template.weight_of(m.instance_type.as_deref().unwrap_or_default()))
                .sum();
            machines + outcome.accepted_units
        }
        Err(_) => 0,
    };
    if let Some(attempt) = status.attempt.as_mut() {
        if let Ok(outcome) = result {
            attempt.left_out.extend(outcome.refused.iter().cloned());
        }
        // Without an answer the cloud may have launched: keep the token for the replay. Any
        // other answer ends the attempt (a token conflict too: that token is spent).
        attempt.completed = match result {
            Ok(outcome) => !outcome.ambiguous,
            Err(error) => !error.is_ambiguous(),
        };
        if launched >= attempt.units.max(0).unsigned_abs() {
            attempt.failed_streak = 0;
            attempt.retry_after = None;
        } else {
            attempt.failed_streak += 1;
            // 2^10 times the first backoff is far past the cap, so larger exponents change nothing.
            let doublings = u32::try_from(attempt.failed_streak - 1).unwrap_or(0).min(10);
            let backoff = (FIRST_BACKOFF * 2i32.pow(doublings)).min(MAX_BACKOFF);
            attempt.retry_after = Some(Time(frame.now + backoff));
        }
    }
    match result {
        Ok(outcome) => {
            for launched in &outcome.launched {
                if !status.machines.iter().any(|m| m.instance_id == launched.instance_id) {
                    status.machines.push(machine_from(frame, launched, None, false));
                }
            }
            status.machines.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            status.resources.absorb(outcome.resources.clone());
            for failure in &outcome.failures {
                add_failure(&mut status.failures, failure, frame.now);
            }
        }
        Err(error) => {
            add_failure(&mut status.failures, &failure_of(error), frame.now);
            if error.is_terminal() {
                // Permissions can be granted without a spec edit: try again after a while.
                let retry_after = matches!(error, ProviderError::Auth { .. }).then(|| Time(frame.now + AUTH_RETRY));
                status.blocked = Some(Blocked {
                    generation: frame.generation,
                    template_generation: frame.template_generation,
                    code: error.code().to_string(),
                    message: error.to_string(),
                    retry_after,
                });
            }
        }
    }
    // Units a fleet or group accepted are pending until it reports them (as machines, or as
    // units it still works on): shown, and counted against `maxMachines`, meanwhile.
    let accepted = result.as_ref().map_or(0, |outcome| outcome.accepted_units);
    let frame = Frame { outstanding: frame.outstanding.saturating_add(accepted), ..frame.clone() };
    summarise(&frame, status, false, frame.launch_hold.as_ref());
}

/// Folds a failed return call into the status.
pub fn record_return_error(frame: &Frame<'_>, status: &mut MachineRequestStatus, error: &ProviderError) {
    add_failure(&mut status.failures, &failure_of(error), frame.now);
    summarise(frame, status, false, frame.launch_hold.as_ref());
}

/// The client token of attempt `number` of request `uid`: stable across restarts, unique per
/// attempt, at most 64 characters as EC2 requires.
pub fn client_token(uid: &str, number: i32) -> String {
    let digest = Sha256::digest(format!("{uid}/{number}"));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("orb-{number}-{hex}")
}

/// The attempt to launch now. An open attempt (its create call may have happened: a crash, a
/// timeout or a 5xx before its result was recorded) is replayed exactly as first sent — same
/// units, same markets, same token — whatever the shortfall looks like now: the cloud answers a
/// replay with what it made, while a new token next to a lagging listing would launch twice.
/// Otherwise a new attempt, numbered after the last, asks for `units`.
fn next_attempt(frame: &Frame<'_>, status: &MachineRequestStatus, units: u32) -> Attempt {
    let previous = status.attempt.as_ref();
    match previous {
        Some(a) if !a.completed => a.clone(),
        _ => {
            let number = previous.map_or(1, |a| a.number + 1);
            let capacity = frame.spec.capacity.max(0).unsigned_abs();
            let mix = market_split(frame.template, capacity, live_mix(&status.machines), units);
            Attempt {
                target_units: fleet_target(frame, status) as i32 + units as i32,
                number,
                client_token: client_token(frame.uid, number),
                units: units as i32,
                on_demand_units: mix.on_demand as i32,
                spot_units: mix.spot as i32,
                started_at: Some(Time(frame.now)),
                completed: false,
                failed_streak: previous.map_or(0, |a| a.failed_streak),
                retry_after: None,
                // Filled by the controller from the provider before the attempt is written.
                left_out: vec![],
            }
        }
    }
}

/// Capacity units the request holds now — live machines plus what its fleets are still
/// launching — never more than it asks for. A `maintain` fleet's (or an Auto Scaling group's)
/// target is set from it: an absolute value, so replays are safe.
pub fn fleet_target(frame: &Frame<'_>, status: &MachineRequestStatus) -> u32 {
    (live_units(&status.machines) + frame.outstanding).min(frame.spec.capacity.max(0).unsigned_abs())
}

/// Whether the template's fleet keeps a target the operator sets (and so must lower).
fn keeps_target(template: &MachineTemplateSpec) -> bool {
    use crate::api::{Api, FleetType};
    match template.api {
        Api::Asg => true,
        Api::Ec2Fleet | Api::SpotFleet => template.fleet_type == Some(FleetType::Maintain),
        Api::RunInstances => false,
    }
}

/// The markets an attempt asks for.
pub fn attempt_mix(attempt: &Attempt) -> MarketMix {
    MarketMix {
        on_demand: attempt.on_demand_units.max(0).unsigned_abs(),
        spot: attempt.spot_units.max(0).unsigned_abs(),
    }
}

/// The current attempt, if it is still in its backoff at `now`.
fn backoff_pending(status: &MachineRequestStatus, now: Timestamp) -> Option<&Attempt> {
    status.attempt.as_ref().filter(|a| a.retry_after.as_ref().is_some_and(|t| now < t.0))
}

fn blocks(blocked: &Blocked, frame: &Frame<'_>) -> bool {
    blocked.generation == frame.generation
        && blocked.template_generation == frame.template_generation
        && blocked.retry_after.as_ref().is_none_or(|t| frame.now < t.0)
}

/// The request's fulfilment timeout; an unusable one (admitted by an older CRD) holds launching.
fn timeout(frame: &Frame<'_>) -> Result<SignedDuration, String> {
    let d = crate::api::duration::fulfilment_timeout(&frame.spec.fulfilment_timeout)?;
    SignedDuration::try_from(d).map_err(|e| e.to_string())
}

fn timed_out(frame: &Frame<'_>, status: &MachineRequestStatus) -> bool {
    let Ok(timeout) = timeout(frame) else { return false };
    status.provisioning_since.as_ref().is_some_and(|since| frame.now >= since.0 + timeout)
}

fn state_of(m: &Machine) -> Option<InstanceState> {
    InstanceState::parse(&m.state)
}

/// Provides (or is about to provide) capacity and is not on its way out.
fn live(m: &Machine) -> bool {
    m.counts_as_live()
}

fn units_where(machines: &[Machine], state: Option<InstanceState>) -> u32 {
    machines
        .iter()
        .filter(|m| live(m) && (state.is_none() || state_of(m) == state))
        .map(|m| m.weight.max(0).unsigned_abs())
        .sum()
}

/// Capacity units that machines lost outside the operator still hold under `lostMachines:
/// Report`: nothing replaces them until they are named in `returnMachines` (which lowers
/// `capacity` for them) or `capacity` is lowered.
fn held_by_lost(frame: &Frame<'_>, status: &MachineRequestStatus) -> u32 {
    if frame.spec.lost_machines != LostMachines::Report {
        return 0;
    }
    let named: BTreeSet<&str> = frame.spec.return_machines.iter().map(String::as_str).collect();
    status
        .machines
        .iter()
        .filter(|m| m.result == Some(MachineResult::Fail) && !m.returning && !named.contains(m.instance_id.as_str()))
        .map(|m| m.weight.max(0).unsigned_abs())
        .sum()
}

fn live_units(machines: &[Machine]) -> u32 {
    units_where(machines, None)
}
fn running_units(machines: &[Machine]) -> u32 {
    units_where(machines, Some(InstanceState::Running))
}
fn pending_units(machines: &[Machine]) -> u32 {
    units_where(machines, Some(InstanceState::Pending))
}

/// Live capacity units per market (spot vs on-demand), for the heterogeneous mix.
fn live_mix(machines: &[Machine]) -> MarketMix {
    let mut mix = MarketMix::default();
    for m in machines.iter().filter(|m| live(m)) {
        let units = m.weight.max(0).unsigned_abs();
        if m.capacity_type.as_deref() == Some("spot") { mix.spot += units } else { mix.on_demand += units }
    }
    mix
}

/// Scale-down victims for `excess` units: pending before running, newest first.
pub fn choose_victims(machines: &[Machine], excess: u32) -> Vec<String> {
    let mut candidates: Vec<&Machine> = machines.iter().filter(|m| live(m)).collect();
    candidates.sort_by(|a, b| {
        let pending = |m: &Machine| state_of(m) == Some(InstanceState::Pending);
        pending(b)
            .cmp(&pending(a))
            .then_with(|| b.launch_time.cmp(&a.launch_time))
            .then_with(|| b.instance_id.cmp(&a.instance_id))
    });
    let mut left = excess;
    let mut victims = vec![];
    for m in candidates {
        let weight = m.weight.max(0).unsigned_abs();
        if left == 0 {
            break;
        }
        if weight <= left {
            left -= weight;
            victims.push(m.instance_id.clone());
        }
    }
    victims
}

/// Machines under a notice of loss (a spot interruption warning, a scheduled retirement; a
/// rebalance recommendation when the template asks) stop counting toward capacity, so the
/// ordinary shortfall launches their replacements before the loss. Not under `lostMachines:
/// Report` (whoever asked replaces, as for any loss), nor for fleets that keep their own target
/// (maintain fleets, Auto Scaling groups: they replace what they lose themselves, and a target
/// raised for it would be met twice). At most `MAX_CAPACITY` machines are leaving at once
/// (returned, or replaced ahead), so the status stays within what etcd stores; a notice past
/// that bound is replaced when the loss comes.
fn replace_ahead(frame: &Frame<'_>, machines: &mut [Machine]) {
    if frame.spec.lost_machines != LostMachines::Replace || keeps_target(frame.template) {
        return;
    }
    let on_its_way = |m: &Machine| state_of(m).is_some_and(|s| s != InstanceState::Terminated);
    let mut leaving = machines.iter().filter(|m| (m.returning || m.is_replaced()) && on_its_way(m)).count();
    for m in machines.iter_mut().filter(|m| m.counts_as_live()) {
        let Some(notice) = m.notice.as_mut() else { continue };
        let replace = notice.kind.is_loss()
            || (notice.kind == NoticeKind::RebalanceRecommendation && frame.template.replace_on_rebalance);
        if replace && leaving < MAX_CAPACITY.unsigned_abs() as usize {
            notice.replaced = true;
            leaving += 1;
        }
    }
}

fn recently_launched(m: &Machine, now: Timestamp) -> bool {
    m.launch_time.as_ref().is_some_and(|t| now < t.0 + VISIBILITY_GRACE)
}

/// The machine list: what the cloud reports (by tags, or by id for machines the tag listing
/// lost), plus machines launched so recently that the cloud may not list them yet. Returned
/// machines stay, `succeed` once terminated, until the cloud stops reporting them.
fn merge_machines(frame: &Frame<'_>, previous: &[Machine], observed: &[ObservedMachine]) -> Vec<Machine> {
    let before: BTreeMap<&str, &Machine> = previous.iter().map(|m| (m.instance_id.as_str(), m)).collect();
    let mut machines: Vec<Machine> = observed
        .iter()
        .map(|o| {
            let prior = before.get(o.instance_id.as_str()).copied();
            machine_from(frame, o, prior, prior.is_some_and(|p| p.returning))
        })
        .collect();
    let seen: BTreeSet<&str> = observed.iter().map(|o| o.instance_id.as_str()).collect();
    machines.extend(
        previous
            .iter()
            .filter(|p| !seen.contains(p.instance_id.as_str()) && !p.returning)
            .filter(|p| recently_launched(p, frame.now))
            .cloned(),
    );
    keep_settled_within_bound(&mut machines);
    machines.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    machines
}

/// Lists at most `MAX_SETTLED_MACHINES` terminated machines, the most recently launched: the
/// rest hold nothing and would only grow the status towards what etcd refuses. One dropped here
/// and still reported by the cloud is dropped again on every pass (the choice is stable), so
/// it never comes back as a new loss.
fn keep_settled_within_bound(machines: &mut Vec<Machine>) {
    let settled = |m: &Machine| state_of(m) == Some(InstanceState::Terminated);
    let mut newest: Vec<(Option<Timestamp>, &str)> = machines
        .iter()
        .filter(|m| settled(m))
        .map(|m| (m.launch_time.as_ref().map(|t| t.0), m.instance_id.as_str()))
        .collect();
    if newest.len() <= MAX_SETTLED_MACHINES {
        return;
    }
    newest.sort_unstable_by(|a, b| b.cmp(a));
    let keep: BTreeSet<String> = newest.iter().take(MAX_SETTLED_MACHINES).map(|(_, id)| id.to_string()).collect();
    machines.retain(|m| !settled(m) || keep.contains(&m.instance_id));
}

/// A machine as observed now. Its weight and market are those recorded when it was first seen
/// (at launch): a template edit changes only future launches.
fn machine_from(frame: &Frame<'_>, o: &ObservedMachine, prior: Option<&Machine>, returning: bool) -> Machine {
    let (result, message) = match (o.state, returning) {
        (InstanceState::Running, _) => (MachineResult::Succeed, None),
        (InstanceState::Pending, _) => (MachineResult::Executing, None),
        // Returned by the operator: done once terminated, never a loss.
        (InstanceState::Terminated, true) => (MachineResult::Succeed, None),
        (_, true) => (MachineResult::Executing, None),
        (state, false) => (
            MachineResult::Fail,
            Some(format!(
                "{} outside the operator{}",
                match state {
                    InstanceState::Stopping | InstanceState::Stopped => "stopped",
                    _ => "terminated",
                },
                o.state_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )),
        ),
    };
    let message = message.or_else(|| prior.filter(|_| returning).and_then(|p| p.message.clone())).or_else(|| {
        o.untagged.then(|| {
            "not found by its orb.dev tags (removed, or another clusterId); tracked by instance id".to_string()
        })
    });
    let message = match (returning, o.state) {
        (true, InstanceState::Terminated) => message.map(|m| m.replacen("returning:", "returned:", 1)),
        _ => message,
    }
    .map(|m| crate::api::truncate(m, MAX_MACHINE_MESSAGE));
    // A notice matters while the machine runs; once it is returned or gone, its state and
    // message say what became of it. Once replaced, it stays replaced.
    let notice = (o.state.is_live() && !returning)
        .then(|| merged_notice(o.notice.clone(), prior.and_then(|p| p.notice.clone())))
        .flatten();
    // A machine carries a notice or a message, not both: the largest status stays within
    // what etcd stores.
    let message = message.filter(|_| notice.is_none());
    let weight = prior
        .map(|p| p.weight)
        .unwrap_or_else(|| frame.template.weight_of(o.instance_type.as_deref().unwrap_or_default()) as i32);
    Machine {
        instance_id: o.instance_id.clone(),
        state: o.state.as_str().into(),
        result: Some(result),
        weight,
        instance_type: o.instance_type.clone(),
        capacity_type: prior.and_then(|p| p.capacity_type.clone()).or_else(|| o.capacity_type.clone()),
        zone: o.zone.clone(),
        subnet_id: o.subnet_id.clone(),
        private_ip: o.private_ip.clone(),
        // Kept once the cloud forgets it: HostFactory knows a lost host by this name.
        private_dns_name: o.private_dns_name.clone().or_else(|| prior.and_then(|p| p.private_dns_name.clone())),
        public_ip: o.public_ip.clone(),
        // Whole seconds, as the API server stores them: anything finer would differ on every read.
        launch_time: o.launch_time.and_then(|t| Timestamp::from_second(t.as_second()).ok()).map(Time),
        message,
        notice,
        returning,
    }
}

/// The notice a machine carries after `new` came (the poller's, none after a restart) on top of
/// `old` (its status's): the same notice again changes nothing; a warning of loss is not
/// undone by a lesser notice; a machine once replaced stays replaced.
fn merged_notice(new: Option<MachineNotice>, old: Option<MachineNotice>) -> Option<MachineNotice> {
    match (new, old) {
        (Some(new), Some(old)) if new.kind == old.kind || (old.kind.is_loss() && !new.kind.is_loss()) => Some(old),
        (Some(mut new), Some(old)) => {
            new.replaced |= old.replaced;
            Some(new)
        }
        (new, old) => new.or(old),
    }
}

fn failure_of(error: &ProviderError) -> LaunchFailure {
    LaunchFailure { code: error.code().to_string(), message: error.to_string(), instance_type: None, zone: None }
}

/// Adds one occurrence; keeps the `MAX_FAILURES` most recent, sorted by code, type and zone.
fn add_failure(failures: &mut Vec<Failure>, f: &LaunchFailure, now: Timestamp) {
    let same = |x: &Failure| x.code == f.code && x.instance_type == f.instance_type && x.zone == f.zone;
    match failures.iter_mut().find(|x| same(x)) {
        Some(existing) => {
            existing.count += 1;
            existing.message = stored_message(f);
            existing.last_seen = Some(Time(now));
        }
        None => failures.push(Failure {
            code: f.code.clone(),
            message: stored_message(f),
            instance_type: f.instance_type.clone(),
            zone: f.zone.clone(),
            count: 1,
            last_seen: Some(Time(now)),
        }),
    }
    failures.sort_by(|a, b| b.last_seen.cmp(&a.last_seen));
    failures.truncate(MAX_FAILURES);
    failures.sort_by(|a, b| (&a.code, &a.instance_type, &a.zone).cmp(&(&b.code, &b.instance_type, &b.zone)));
}

/// Records a failure a fleet reports on every describe: once per distinct failure, not once
/// per look (the count of `add_failure` is for launch calls).
fn note_failure(failures: &mut Vec<Failure>, f: &LaunchFailure, now: Timestamp) {
    let known = failures.iter().any(|x| {
        x.code == f.code && x.instance_type == f.instance_type && x.zone == f.zone && x.message == stored_message(f)
    });
    if !known {
        add_failure(failures, f, now);
    }
}

/// A failure's message as the status keeps it (AWS messages are free text of any length).
fn stored_message(f: &LaunchFailure) -> String {
    crate::api::truncate(f.message.clone(), MAX_FAILURE_MESSAGE)
}

/// Counters, phase and conditions from the machine list and the episode.
fn summarise(frame: &Frame<'_>, status: &mut MachineRequestStatus, acting: bool, hold: Option<&(String, String)>) {
    let capacity = frame.spec.capacity.max(0).unsigned_abs();
    let running = running_units(&status.machines);
    let pending = pending_units(&status.machines) + frame.outstanding;
    status.fulfilled_capacity = running as i32;
    status.pending_capacity = pending as i32;
    status.requested_capacity = frame.spec.capacity;
    let returning = status.machines.iter().filter(|m| m.returning).count();
    let lost: Vec<&str> = status
        .machines
        .iter()
        .filter(|m| m.result == Some(MachineResult::Fail))
        .map(|m| m.instance_id.as_str())
        .collect();
    let expired = timed_out(frame, status);
    let replaced =
        status.machines.iter().filter(|m| m.is_replaced() && state_of(m).is_some_and(|s| s.is_live())).count();
    let progress = match replaced {
        0 => format!("{running}/{capacity} capacity units running, {pending} pending"),
        n => format!(
            "{running}/{capacity} capacity units running, {pending} pending, {n} machine(s) under an AWS notice replaced ahead"
        ),
    };

    let held = held_by_lost(frame, status);
    let (phase, ready_reason, ready_message) = if running >= capacity {
        (Phase::Fulfilled, "Fulfilled".to_string(), progress.clone())
    } else if held > 0 && running + held >= capacity {
        let message = format!(
            "{progress}; {held} unit(s) held by machines lost outside the operator and not replaced (spec.lostMachines: Report): name them in spec.returnMachines or lower spec.capacity"
        );
        (Phase::Partial, "MachinesLost".to_string(), message)
    } else if let Some(b) = &status.blocked {
        let phase = if running > 0 { Phase::Partial } else { Phase::Failed };
        (
            phase,
            b.code.clone(),
            format!("{progress}; launching stopped: {}. Fix the template or request to retry.", b.message),
        )
    } else if expired {
        let phase = if running > 0 { Phase::Partial } else { Phase::Failed };
        let message = format!(
            "{progress}; fulfilmentTimeout {} passed. Raise or lower spec.capacity, or edit the request, to try again.",
            frame.spec.fulfilment_timeout
        );
        (phase, "FulfilmentTimeout".to_string(), message)
    } else if let Some((reason, message)) = hold {
        let phase = if running > 0 || pending > 0 { Phase::Provisioning } else { Phase::Pending };
        (phase, reason.clone(), format!("{progress}; {message}"))
    } else {
        (Phase::Provisioning, "Provisioning".to_string(), progress.clone())
    };
    status.phase = Some(phase);

    let now = Time(frame.now);
    let generation = Some(frame.generation);
    let put = |conds: &mut Vec<_>, c: Cond| conditions::upsert(conds, c, generation, &now);
    put(
        &mut status.conditions,
        Cond::new(conditions::READY, phase == Phase::Fulfilled, ready_reason.clone(), ready_message),
    );

    let backoff = backoff_pending(status, frame.now).filter(|_| !acting && returning == 0);
    let progressing = if let Some(Attempt { failed_streak, retry_after: Some(until), .. }) = backoff {
        Cond::new(
            conditions::PROGRESSING,
            true,
            "BackingOff",
            format!("{progress}; {failed_streak} attempt(s) in a row fell short; next launch after {}", until.0),
        )
    } else if acting || pending > 0 || returning > 0 {
        let reason = match (returning > 0, pending > 0 || acting) {
            (true, _) => "Returning",
            (false, true) if pending > 0 => "WaitingForMachines",
            _ => "Launching",
        };
        Cond::new(conditions::PROGRESSING, true, reason, format!("{progress}; {returning} returning"))
    } else {
        Cond::new(conditions::PROGRESSING, false, ready_reason.clone(), progress.clone())
    };
    put(&mut status.conditions, progressing);

    let recent_failure = status
        .failures
        .iter()
        .filter(|f| status.provisioning_since.as_ref().is_some_and(|s| f.last_seen.as_ref().is_some_and(|l| l >= s)))
        .max_by(|a, b| a.last_seen.cmp(&b.last_seen));
    let degraded = if let Some(b) = &status.blocked {
        Cond::new(conditions::DEGRADED, true, b.code.clone(), b.message.clone())
    } else if expired && running < capacity {
        Cond::new(conditions::DEGRADED, true, "FulfilmentTimeout", progress.clone())
    } else if !lost.is_empty() {
        Cond::new(
            conditions::DEGRADED,
            true,
            "MachinesLost",
            format!("{} machine(s) stopped or terminated outside the operator: {}", lost.len(), lost.join(", ")),
        )
    } else if let (Some(f), false) = (recent_failure, running >= capacity) {
        Cond::new(conditions::DEGRADED, true, f.code.clone(), f.message.clone())
    } else {
        Cond::new(conditions::DEGRADED, false, "AsExpected", "no failures")
    };
    put(&mut status.conditions, degraded);

    // kstatus (Flux, kpt, Argo CD health): Stalled when only a change can help, Reconciling
    // while the operator is still working towards the spec.
    let stalled = if let Some(b) = &status.blocked {
        Some((b.code.clone(), b.message.clone()))
    } else if expired && running < capacity {
        Some(("FulfilmentTimeout".to_string(), progress.clone()))
    } else {
        hold.filter(|(reason, _)| STALLING_HOLDS.contains(&reason.as_str())).filter(|_| running < capacity).cloned()
    };
    let reconciling = stalled.is_none() && (phase != Phase::Fulfilled || acting || pending > 0 || returning > 0);
    put(
        &mut status.conditions,
        match &stalled {
            Some((reason, message)) => Cond::new(conditions::STALLED, true, reason.clone(), message.clone()),
            None => Cond::new(conditions::STALLED, false, "AsExpected", "making progress"),
        },
    );
    put(
        &mut status.conditions,
        if reconciling {
            Cond::new(conditions::RECONCILING, true, ready_reason, progress)
        } else {
            Cond::new(conditions::RECONCILING, false, ready_reason, "nothing left to do")
        },
    );
}

/// Holds that only a change to the request, its template or the operator config can lift.
const STALLING_HOLDS: &[&str] = &["TemplateNotReady", "InvalidSpec", "ProviderChanged"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InstanceTypeSpec, TemplateRef};
    use crate::provider::InstanceState::*;

    const UID: &str = "0b6a8b2e-uid";

    fn template() -> MachineTemplateSpec {
        MachineTemplateSpec {
            image_id: Some("ami-12345678".into()),
            instance_types: vec![
                InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None },
                InstanceTypeSpec { type_: "m5.xlarge".into(), weight: 2, priority: None },
            ],
            ..Default::default()
        }
    }

    fn spec(capacity: i32) -> MachineRequestSpec {
        MachineRequestSpec {
            template_ref: TemplateRef { name: "t".into() },
            capacity,
            fulfilment_timeout: "10m".into(),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn frame<'a>(spec: &'a MachineRequestSpec, template: &'a MachineTemplateSpec, now: i64) -> Frame<'a> {
        Frame {
            now: at(now),
            request_name: "mr",
            uid: UID,
            generation: 1,
            spec,
            template,
            template_generation: 1,
            launch_hold: None,
            machines_elsewhere: 0,
            outstanding: 0,
            fleet_failures: &[],
            finished_fleets: &[],
        }
    }

    fn obs(id: &str, state: InstanceState, type_: &str, launched: i64) -> ObservedMachine {
        ObservedMachine {
            instance_type: Some(type_.into()),
            launch_time: Some(at(launched)),
            ..ObservedMachine::new(id, state)
        }
    }

    /// Plans once, then plans again from the result: what a reconcile sequence sees.
    fn replan(f: &Frame<'_>, previous: &MachineRequestStatus, observed: &[ObservedMachine]) -> Plan {
        plan(f, previous, observed)
    }

    fn cond<'a>(
        s: &'a MachineRequestStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&s.conditions, type_).unwrap()
    }

    fn returning(s: &MachineRequestStatus) -> Vec<&str> {
        s.machines.iter().filter(|m| m.returning).map(|m| m.instance_id.as_str()).collect()
    }

    #[test]
    fn a_new_request_launches_its_whole_capacity_under_attempt_one() {
        let (s, t) = (spec(3), template());
        let p = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        let Step::Launch { units, attempt } = &p.step else { panic!("{:?}", p.step) };
        assert_eq!(*units, 3);
        assert_eq!(attempt.number, 1);
        assert_eq!(attempt.client_token, client_token(UID, 1));
        assert!(!attempt.completed);
        assert_eq!(p.status.attempt.as_ref(), Some(attempt), "the attempt is written before the call");
        assert_eq!(p.status.phase, Some(Phase::Provisioning));
        assert_eq!(p.requeue, Requeue::Soon);
        assert_eq!(cond(&p.status, "Progressing").status, "True");
    }

    #[test]
    fn units_a_fleet_still_launches_are_pending_and_never_launched_twice() {
        let (s, t) = (spec(5), template());
        let mut f = frame(&s, &t, 0);
        f.outstanding = 3;
        let running = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)];
        let p = plan(&f, &MachineRequestStatus::default(), &running);
        assert_eq!(p.step, Step::Wait, "2 running + 3 on their way cover 5");
        assert_eq!((p.status.fulfilled_capacity, p.status.pending_capacity), (2, 3));
        assert_eq!(p.status.phase, Some(Phase::Provisioning));
        assert_eq!(p.requeue, Requeue::Poll);

        // Raising capacity launches only what neither the machines nor the fleet cover, and
        // the attempt records the absolute target a maintain fleet is set to.
        let s = spec(7);
        let f = Frame { spec: &s, ..f };
        let p = plan(&f, &MachineRequestStatus::default(), &running);
        let Step::Launch { units, attempt } = &p.step else { panic!("{:?}", p.step) };
        assert_eq!((*units, attempt.target_units), (2, 7));
    }

    #[test]
    fn a_maintain_fleet_launching_more_than_wanted_is_lowered_and_finished_fleets_forgotten() {
        use crate::api::{Api, FleetType};
        let s = spec(4);
        let t = MachineTemplateSpec { api: Api::SpotFleet, fleet_type: Some(FleetType::Maintain), ..template() };
        let running = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)];
        let finished = ["sfr-old".to_string()];
        let mut f = frame(&s, &t, 0);
        // Capacity lowered from 6 to 4 while the fleet still launches 4 more units.
        f.outstanding = 4;
        f.finished_fleets = &finished;
        let previous = MachineRequestStatus {
            resources: crate::api::Resources {
                spot_fleet_request_ids: vec!["sfr-old".into(), "sfr-new".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(&f, &previous, &running);
        assert_eq!(p.step, Step::Return(vec![]), "no machine goes, the fleet is lowered");
        assert_eq!(fleet_target(&f, &p.status), 4, "to the request's capacity");
        assert_eq!(p.status.resources.spot_fleet_request_ids, ["sfr-new"], "a cancelled request is forgotten");
        // A request fleet cannot be lowered: nothing to do but wait.
        let request_fleet = MachineTemplateSpec { fleet_type: Some(FleetType::Request), ..t.clone() };
        let p = plan(&Frame { template: &request_fleet, ..f }, &previous, &running);
        assert_eq!(p.step, Step::Wait);
    }

    #[test]
    fn a_stopped_machine_named_for_return_is_terminated_too() {
        let (mut s, t) = (spec(1), template());
        s.return_machines = vec!["i-stopped".into()];
        let observed = [obs("i-1", Running, "m5.large", 0), obs("i-stopped", Stopped, "m5.large", 0)];
        let p = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Return(vec!["i-stopped".into()]));
        assert_eq!(p.status.fulfilled_capacity, 1, "it held no capacity; the running one stays");
    }

    #[test]
    fn fleet_errors_are_recorded_once_not_on_every_look() {
        let (s, t) = (spec(2), template());
        let failure = LaunchFailure {
            code: "InsufficientInstanceCapacity".into(),
            message: "fleet fleet-1: no capacity".into(),
            instance_type: Some("m5.large".into()),
            zone: Some("us-east-1a".into()),
        };
        let failures = [failure];
        let mut f = frame(&s, &t, 0);
        f.outstanding = 2;
        f.fleet_failures = &failures;
        let first = plan(&f, &MachineRequestStatus::default(), &[]);
        let again = plan(&Frame { now: at(30), ..f.clone() }, &first.status, &[]);
        assert_eq!(again.status.failures.len(), 1);
        assert_eq!(again.status.failures[0].count, 1, "the same fleet error seen twice is one failure");
        assert_eq!(cond(&again.status, "Degraded").reason, "InsufficientInstanceCapacity");
    }

    #[test]
    fn client_tokens_are_stable_unique_per_attempt_and_short() {
        assert_eq!(client_token("u", 1), client_token("u", 1));
        assert_ne!(client_token("u", 1), client_token("u", 2));
        assert_ne!(client_token("u", 1), client_token("v", 1));
        assert!(client_token("u", 99999).len() <= 64);
    }

    #[test]
    fn running_machines_covering_capacity_are_fulfilled_and_ready() {
        let (s, t) = (spec(3), template());
        let observed = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.xlarge", 0)];
        let p = plan(&frame(&s, &t, 60), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.status.phase, Some(Phase::Fulfilled));
        assert_eq!(p.status.fulfilled_capacity, 3, "weights count: 1 + 2");
        assert_eq!(p.status.pending_capacity, 0);
        assert_eq!(cond(&p.status, "Ready").status, "True");
        assert_eq!(cond(&p.status, "Degraded").status, "False");
        assert_eq!(p.requeue, Requeue::Idle);
        assert_eq!(p.status.machines[1].result, Some(MachineResult::Succeed));
    }

    #[test]
    fn pending_machines_count_toward_capacity_but_not_toward_fulfilment() {
        let (s, t) = (spec(3), template());
        let observed = [obs("i-1", Pending, "m5.large", 0), obs("i-2", Running, "m5.xlarge", 0)];
        let p = plan(&frame(&s, &t, 5), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Wait, "nothing missing: no second launch");
        assert_eq!((p.status.fulfilled_capacity, p.status.pending_capacity), (2, 1));
        assert_eq!(p.status.phase, Some(Phase::Provisioning));
        assert_eq!(p.requeue, Requeue::Poll);
        assert_eq!(cond(&p.status, "Progressing").reason, "WaitingForMachines");
    }

    #[test]
    fn only_the_missing_units_are_launched() {
        let (s, t) = (spec(10), template());
        let observed = [
            obs("i-1", Running, "m5.xlarge", 0),
            obs("i-2", Running, "m5.xlarge", 0),
            obs("i-3", Pending, "m5.xlarge", 0),
        ];
        let p = plan(&frame(&s, &t, 5), &MachineRequestStatus::default(), &observed);
        assert!(matches!(p.step, Step::Launch { units: 4, .. }), "{:?}", p.step);
    }

    #[test]
    fn machines_launched_moments_ago_but_not_yet_listed_are_kept_and_not_relaunched() {
        let (s, t) = (spec(2), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        record_launch(
            &f,
            &mut status,
            &Ok(ProvisionOutcome {
                launched: vec![obs("i-1", Pending, "m5.large", 0), obs("i-2", Pending, "m5.large", 0)],
                ..Default::default()
            }),
        );
        // The cloud's describe lags: it lists nothing yet.
        let p = plan(&frame(&s, &t, 30), &status, &[]);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.status.machines.len(), 2);
        // Long after, a machine that never showed up is dropped and its capacity relaunched.
        let p = plan(&frame(&s, &t, 300), &status, &[obs("i-1", Running, "m5.large", 0)]);
        assert!(matches!(p.step, Step::Launch { units: 1, .. }), "{:?}", p.step);
    }

    #[test]
    fn scale_down_returns_pending_before_running_and_newest_first() {
        let (s, t) = (spec(2), template());
        let observed = [
            obs("i-old", Running, "m5.large", 0),
            obs("i-new", Running, "m5.large", 50),
            obs("i-mid", Running, "m5.large", 20),
            obs("i-pend", Pending, "m5.large", 10),
        ];
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Return(vec!["i-new".into(), "i-pend".into()]));
        assert_eq!(returning(&p.status), ["i-new", "i-pend"]);
        assert_eq!(
            p.status.machines.iter().find(|m| m.instance_id == "i-new").unwrap().message.as_deref(),
            Some("returning: scale-down")
        );
    }

    #[test]
    fn scale_down_never_takes_weighted_capacity_below_the_request() {
        let (s, t) = (spec(3), template());
        let observed = [obs("i-1", Running, "m5.xlarge", 0), obs("i-2", Running, "m5.xlarge", 10)];
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Wait, "excess 1 is smaller than any machine (weight 2)");
        assert_eq!(p.status.phase, Some(Phase::Fulfilled));
    }

    #[test]
    fn a_named_machine_goes_first_on_scale_down_and_only_it() {
        let (mut s, t) = (spec(4), template());
        s.return_machines = vec!["i-2".into()];
        let observed: Vec<_> = (1..=5).map(|n| obs(&format!("i-{n}"), Running, "m5.large", n)).collect();
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Return(vec!["i-2".into()]));
        assert_eq!(
            p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap().message.as_deref(),
            Some("returning: named in spec.returnMachines")
        );
    }

    #[test]
    fn a_named_machine_is_replaced_while_capacity_is_unchanged() {
        let (mut s, t) = (spec(3), template());
        s.return_machines = vec!["i-2".into()];
        let observed: Vec<_> = (1..=3).map(|n| obs(&format!("i-{n}"), Running, "m5.large", n)).collect();
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Return(vec!["i-2".into()]));
        // Next reconcile: the cloud is terminating it; its unit is launched again.
        let mut observed = observed;
        observed[1].state = ShuttingDown;
        let p2 = replan(&frame(&s, &t, 101), &p.status, &observed);
        assert!(matches!(p2.step, Step::Launch { units: 1, .. }), "{:?}", p2.step);
        // Once terminated it is a completed return, not a loss, and it stays listed while the
        // cloud reports it.
        observed[1].state = Terminated;
        observed.push(obs("i-4", Running, "m5.large", 200));
        let p3 = replan(&frame(&s, &t, 102), &p2.status, &observed);
        let returned = p3.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        assert_eq!((returned.result, returned.returning), (Some(MachineResult::Succeed), true));
        assert_eq!(returned.message.as_deref(), Some("returned: named in spec.returnMachines"));
        assert_eq!(cond(&p3.status, "Degraded").status, "False", "a return is not a loss");
        assert_eq!(p3.status.phase, Some(Phase::Fulfilled));
        // Further passes change nothing; when the cloud forgets it, it leaves the list.
        let p4 = replan(&frame(&s, &t, 500), &p3.status, &observed);
        assert_eq!(p4.status, p3.status);
        observed.remove(1);
        let p5 = replan(&frame(&s, &t, 4000), &p4.status, &observed);
        assert!(!p5.status.machines.iter().any(|m| m.instance_id == "i-2"));
        assert_eq!(p5.step, Step::Wait);
    }

    #[test]
    fn named_ids_that_are_already_gone_are_ignored() {
        let (mut s, t) = (spec(1), template());
        s.return_machines = vec!["i-0123456789abcdef0".into()];
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &[obs("i-1", Running, "m5.large", 0)]);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.status.phase, Some(Phase::Fulfilled));
    }

    #[test]
    fn a_machine_terminated_outside_the_operator_fails_and_its_capacity_is_replaced() {
        let (s, t) = (spec(2), template());
        let mut gone = obs("i-2", Terminated, "m5.large", 0);
        gone.state_reason = Some("Server.SpotInstanceTermination".into());
        let p =
            plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &[obs("i-1", Running, "m5.large", 0), gone]);
        assert!(matches!(p.step, Step::Launch { units: 1, .. }), "{:?}", p.step);
        let lost = p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        assert_eq!(lost.result, Some(MachineResult::Fail));
        assert!(lost.message.as_deref().unwrap().contains("SpotInstanceTermination"));
        assert_eq!(cond(&p.status, "Degraded").reason, "MachinesLost");
    }

    fn warned(id: &str, kind: NoticeKind) -> ObservedMachine {
        let deadline = Some(Time(at(220)));
        ObservedMachine {
            capacity_type: Some("spot".into()),
            notice: Some(MachineNotice { kind, deadline, replaced: false }),
            ..obs(id, Running, "m5.large", 0)
        }
    }

    #[test]
    fn a_spot_warning_launches_the_replacement_before_the_loss_and_nothing_more() {
        let (s, t) = (spec(2), template());
        let steady = plan(
            &frame(&s, &t, 50),
            &MachineRequestStatus::default(),
            &[obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)],
        );
        assert_eq!(steady.step, Step::Wait);
        // The warning: i-2 stops counting, one unit is launched now.
        let seen = [obs("i-1", Running, "m5.large", 0), warned("i-2", NoticeKind::SpotInterruption)];
        let p = plan(&frame(&s, &t, 100), &steady.status, &seen);
        assert!(matches!(p.step, Step::Launch { units: 1, .. }), "{:?}", p.step);
        let i2 = p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        let notice = i2.notice.as_ref().unwrap();
        assert!(notice.replaced && notice.kind == NoticeKind::SpotInterruption);
        assert_eq!(notice.deadline, Some(Time(at(220))));
        assert!(cond(&p.status, "Ready").message.contains("1 machine(s) under an AWS notice replaced ahead"));
        // The replacement runs beside the warned machine: capacity + 1 machines, no scale-down.
        let mut seen = seen.to_vec();
        seen.push(obs("i-3", Running, "m5.large", 101));
        let p = plan(&frame(&s, &t, 110), &p.status, &seen);
        assert_eq!((p.step.clone(), p.status.phase), (Step::Wait, Some(Phase::Fulfilled)), "{:?}", p.status);
        // The poller forgot the notice (a restart): the status keeps it, and i-2 still does not count.
        seen[1].notice = None;
        let p = plan(&frame(&s, &t, 120), &p.status, &seen);
        assert_eq!(p.step, Step::Wait);
        assert!(p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap().is_replaced());
        // A lesser notice after it changes nothing.
        seen[1] = warned("i-2", NoticeKind::RebalanceRecommendation);
        let p = plan(&frame(&s, &t, 125), &p.status, &seen);
        assert_eq!(p.status.machines[1].notice.as_ref().unwrap().kind, NoticeKind::SpotInterruption);
        // The loss: nothing is launched again, and the gone machine carries no notice.
        seen[1] = obs("i-2", Terminated, "m5.large", 0);
        let p = plan(&frame(&s, &t, 230), &p.status, &seen);
        assert_eq!((p.step.clone(), p.status.phase), (Step::Wait, Some(Phase::Fulfilled)));
        assert_eq!(p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap().notice, None);
    }

    #[test]
    fn a_notice_is_reported_not_replaced_under_report_for_rebalances_and_for_fleets_that_replace_their_own() {
        let replaces = |s: &MachineRequestSpec, t: &MachineTemplateSpec, kind| {
            let seen = [obs("i-1", Running, "m5.large", 0), warned("i-2", kind)];
            let p = plan(&frame(s, t, 100), &MachineRequestStatus::default(), &seen);
            let notice = p.status.machines[1].notice.clone().unwrap();
            assert_eq!(notice.kind, kind, "the notice is shown whatever happens");
            assert_eq!(notice.replaced, matches!(p.step, Step::Launch { .. }), "{:?}", p.step);
            notice.replaced
        };
        let (s, t) = (spec(2), template());
        assert!(replaces(&s, &t, NoticeKind::SpotInterruption));
        assert!(replaces(&s, &t, NoticeKind::ScheduledRetirement));
        assert!(!replaces(&s, &t, NoticeKind::RebalanceRecommendation), "off by default");
        assert!(!replaces(&s, &t, NoticeKind::ScheduledMaintenance), "a reboot gives the machine back");
        let eager = MachineTemplateSpec { replace_on_rebalance: true, ..template() };
        assert!(replaces(&s, &eager, NoticeKind::RebalanceRecommendation));
        let report = MachineRequestSpec { lost_machines: LostMachines::Report, ..spec(2) };
        assert!(!replaces(&report, &t, NoticeKind::SpotInterruption), "HostFactory replaces hosts itself");
        let asg = MachineTemplateSpec { api: crate::api::Api::Asg, ..template() };
        assert!(!replaces(&s, &asg, NoticeKind::SpotInterruption), "the group replaces its own machines");
    }

    #[test]
    fn a_free_text_state_reason_is_cut_to_the_bound_of_a_machine_message() {
        let (s, t) = (spec(1), template());
        let mut gone = obs("i-2", Terminated, "m5.large", 0);
        gone.state_reason = Some(format!("Server.InternalError: {}", "é".repeat(400)));
        let p =
            plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &[obs("i-1", Running, "m5.large", 0), gone]);
        let lost = p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        let message = lost.message.as_deref().unwrap();
        assert!(message.starts_with("terminated outside the operator: Server.InternalError"), "{message}");
        assert!(message.len() <= MAX_MACHINE_MESSAGE && message.len() > MAX_MACHINE_MESSAGE - 2, "{}", message.len());
    }

    #[test]
    fn a_request_that_keeps_losing_machines_lists_only_the_newest_terminated_ones_and_drops_the_rest_for_good() {
        let (s, t) = (spec(2), template());
        // Two running, and 250 lost over time (one a second), every one still reported by EC2.
        let mut observed = vec![obs("i-run-1", Running, "m5.large", 5000), obs("i-run-2", Running, "m5.large", 5000)];
        observed.extend((0..250).map(|k| obs(&format!("i-gone-{k:03}"), Terminated, "m5.large", k)));
        let p = plan(&frame(&s, &t, 6000), &MachineRequestStatus::default(), &observed);
        let terminated: Vec<&str> =
            p.status.machines.iter().filter(|m| m.state == "terminated").map(|m| m.instance_id.as_str()).collect();
        assert_eq!(terminated.len(), MAX_SETTLED_MACHINES);
        assert_eq!(terminated.first(), Some(&"i-gone-050"), "the 50 launched first are dropped");
        assert_eq!(p.status.machines.len(), MAX_SETTLED_MACHINES + 2, "live machines are never dropped");
        // The dropped ones are still reported: they stay dropped, and the status stays put.
        let again = plan(&frame(&s, &t, 6030), &p.status, &observed);
        assert_eq!(again.status, p.status);
        // A new loss pushes out the oldest listed one, and is itself listed.
        observed[0].state = Terminated;
        let after = plan(&frame(&s, &t, 6060), &again.status, &observed);
        let listed = |id: &str| after.status.machines.iter().any(|m| m.instance_id == id);
        assert!(listed("i-run-1") && !listed("i-gone-050") && listed("i-gone-051"));
        assert!(matches!(after.step, Step::Launch { units: 1, .. }), "{:?}", after.step);
    }

    #[test]
    fn an_attempt_interrupted_before_its_result_was_recorded_reuses_its_token() {
        let (s, t) = (spec(3), template());
        let first = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        // Crash: the status with the attempt was written, the result never was.
        let again = plan(&frame(&s, &t, 30), &first.status, &[]);
        assert_eq!(first.step, again.step, "same units, same token: the cloud answers with what it made");
    }

    #[test]
    fn a_completed_attempt_is_followed_by_a_new_token() {
        let (s, t) = (spec(3), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        record_launch(
            &f,
            &mut status,
            &Ok(ProvisionOutcome { launched: vec![obs("i-1", Pending, "m5.large", 0)], ..Default::default() }),
        );
        // It fell short (1 of 3 units): the next attempt comes after the first backoff.
        let p = plan(&frame(&s, &t, 10), &status, &[obs("i-1", Running, "m5.large", 0)]);
        let Step::Launch { units, attempt } = p.step else { panic!("{:?}", p.step) };
        assert_eq!((units, attempt.number), (2, 2));
        assert_eq!(attempt.client_token, client_token(UID, 2));
    }

    fn capacity_error() -> ProviderError {
        ProviderError::Capacity { code: "InsufficientInstanceCapacity".into(), message: "none".into() }
    }

    #[test]
    fn a_failed_attempt_backs_off_doubling_before_the_next() {
        let (s, t) = (spec(2), template());
        let mut status = MachineRequestStatus::default();
        let mut now = 0;
        for (streak, backoff) in [(1, 10), (2, 20), (3, 40)] {
            let f = frame(&s, &t, now);
            let p = plan(&f, &status, &[]);
            assert!(matches!(p.step, Step::Launch { .. }), "at {now}: {:?}", p.step);
            status = p.status;
            record_launch(&f, &mut status, &Err(capacity_error()));
            let attempt = status.attempt.clone().unwrap();
            assert_eq!((attempt.failed_streak, attempt.retry_after), (streak, Some(Time(at(now + backoff)))));
            assert!(attempt.completed, "a capacity answer is definite");
            // Status writes wake the reconciler at once; it must not launch again yet.
            let p = plan(&frame(&s, &t, now + 1), &status, &[]);
            assert_eq!(p.step, Step::Wait);
            assert_eq!(p.requeue, Requeue::After(std::time::Duration::from_secs(backoff as u64 - 1)));
            assert_eq!(cond(&p.status, "Progressing").reason, "BackingOff");
            now += backoff;
        }
    }

    #[test]
    fn the_backoff_is_forgotten_once_capacity_is_met() {
        let (s, t) = (spec(1), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        record_launch(&f, &mut status, &Err(capacity_error()));
        let p = plan(&frame(&s, &t, 20), &status, &[obs("i-1", Running, "m5.large", 0)]);
        let attempt = p.status.attempt.unwrap();
        assert_eq!((attempt.failed_streak, attempt.retry_after), (0, None));
    }

    #[test]
    fn an_ambiguous_failure_retries_with_the_same_token() {
        let (s, t) = (spec(2), template());
        let f = frame(&s, &t, 0);
        let first = plan(&f, &MachineRequestStatus::default(), &[]);
        let mut status = first.status.clone();
        let timeout =
            ProviderError::Transient { code: "Timeout".into(), message: "RunInstances: no answer in time".into() };
        record_launch(&f, &mut status, &Err(timeout));
        assert!(!status.attempt.as_ref().unwrap().completed, "the cloud may have launched");
        let retry = plan(&frame(&s, &t, 10), &status, &[]);
        let (Step::Launch { attempt: a, .. }, Step::Launch { attempt: b, .. }) = (&first.step, &retry.step) else {
            panic!("{:?}", retry.step)
        };
        assert_eq!((a.number, &a.client_token), (b.number, &b.client_token));
    }

    #[test]
    fn after_the_fulfilment_timeout_some_capacity_is_partial_and_none_is_failed() {
        let (s, t) = (spec(3), template());
        let start = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]).status;
        assert_eq!(start.provisioning_since, Some(Time(at(0))));

        let p = plan(&frame(&s, &t, 601), &start, &[obs("i-1", Running, "m5.large", 0)]);
        assert_eq!(p.step, Step::Wait, "no more launches after the timeout");
        assert_eq!(p.status.phase, Some(Phase::Partial));
        assert_eq!(cond(&p.status, "Ready").reason, "FulfilmentTimeout");
        assert_eq!(cond(&p.status, "Degraded").status, "True");

        let p = plan(&frame(&s, &t, 601), &start, &[]);
        assert_eq!((p.step, p.status.phase), (Step::Wait, Some(Phase::Failed)));

        // Just before the deadline it keeps trying.
        let p = plan(&frame(&s, &t, 599), &start, &[]);
        assert!(matches!(p.step, Step::Launch { .. }));
    }

    #[test]
    fn a_spec_change_restarts_the_fulfilment_clock() {
        let (s, t) = (spec(3), template());
        let start = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]).status;
        let mut f = frame(&s, &t, 700);
        f.generation = 2;
        let p = plan(&f, &start, &[]);
        assert!(matches!(p.step, Step::Launch { .. }), "{:?}", p.step);
        assert_eq!(p.status.provisioning_since, Some(Time(at(700))));
    }

    #[test]
    fn a_terminal_error_stops_launching_until_the_request_or_template_changes() {
        let (s, t) = (spec(2), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        let error = ProviderError::invalid(
            "spec.imageId",
            "InvalidAMIID.NotFound",
            "The image id 'ami-12345678' does not exist",
        );
        record_launch(&f, &mut status, &Err(error));
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(cond(&status, "Ready").reason, "InvalidAMIID.NotFound");
        assert!(cond(&status, "Ready").message.contains("spec.imageId"));

        let p = plan(&frame(&s, &t, 10), &status, &[]);
        assert_eq!((p.step.clone(), p.requeue), (Step::Wait, Requeue::AwaitChange));

        let mut changed = frame(&s, &t, 20);
        changed.template_generation = 2;
        assert!(matches!(plan(&changed, &status, &[]).step, Step::Launch { .. }));
    }

    #[test]
    fn capacity_failures_are_recorded_and_degrade_the_request() {
        let (s, t) = (spec(2), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        let failure = LaunchFailure {
            code: "InsufficientInstanceCapacity".into(),
            message: "no m5.large".into(),
            instance_type: Some("m5.large".into()),
            zone: Some("us-east-1a".into()),
        };
        let outcome = ProvisionOutcome {
            launched: vec![obs("i-1", Pending, "m5.xlarge", 0)],
            failures: vec![failure],
            ..Default::default()
        };
        record_launch(&f, &mut status, &Ok(outcome));
        assert_eq!(status.failures.len(), 1);
        assert_eq!(status.failures[0].count, 1);
        assert_eq!(cond(&status, "Degraded").reason, "InsufficientInstanceCapacity");
        assert!(status.attempt.as_ref().unwrap().completed);
        // Once fulfilled, old failures no longer degrade it.
        let p = plan(&frame(&s, &t, 30), &status, &[obs("i-1", Running, "m5.xlarge", 0)]);
        assert_eq!(p.status.phase, Some(Phase::Fulfilled));
        assert_eq!(cond(&p.status, "Degraded").status, "False");
    }

    #[test]
    fn failures_are_bounded_and_sorted() {
        let mut failures = vec![];
        let failure = |n: i64| LaunchFailure {
            code: format!("Code{n:02}"),
            message: "m".into(),
            instance_type: None,
            zone: None,
        };
        for n in 0..15 {
            add_failure(&mut failures, &failure(n), at(n));
        }
        add_failure(&mut failures, &failure(14), at(15));
        assert_eq!(failures.len(), MAX_FAILURES);
        let codes: Vec<_> = failures.iter().map(|f| f.code.clone()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(codes, sorted);
        assert!(failures.iter().any(|f| f.code == "Code14" && f.count == 2), "repeats are counted");
        assert!(!failures.iter().any(|f| f.code == "Code04"), "the oldest are dropped");
        assert!(failures.iter().any(|f| f.code == "Code05"));
    }

    #[test]
    fn a_held_template_launches_nothing_but_still_returns_machines() {
        let (mut s, t) = (spec(3), template());
        let mut f = frame(&s, &t, 0);
        f.launch_hold = Some(("TemplateNotReady".into(), "spec.imageId: no such image".into()));
        let p = plan(&f, &MachineRequestStatus::default(), &[]);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.status.phase, Some(Phase::Pending));
        assert_eq!(cond(&p.status, "Ready").reason, "TemplateNotReady");

        s.capacity = 0;
        let mut f = frame(&s, &t, 0);
        f.launch_hold = Some(("TemplateNotReady".into(), "x".into()));
        let p = plan(&f, &MachineRequestStatus::default(), &[obs("i-1", Running, "m5.large", 0)]);
        assert_eq!(p.step, Step::Return(vec!["i-1".into()]));
    }

    #[test]
    fn max_machines_caps_launches_across_the_templates_requests() {
        let (s, mut t) = (spec(10), template());
        t.max_machines = Some(6);
        let mut f = frame(&s, &t, 0);
        f.machines_elsewhere = 2;
        let observed = [obs("i-1", Running, "m5.large", 0)];
        // 6 allowed, 2 elsewhere, 1 here: 3 more machines, i.e. 3 units at the smallest weight.
        let p = plan(&f, &MachineRequestStatus::default(), &observed);
        assert!(matches!(p.step, Step::Launch { units: 3, .. }), "{:?}", p.step);

        f.machines_elsewhere = 5;
        let p = plan(&f, &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.requeue, Requeue::After(CAP_RECHECK));
        let ready = cond(&p.status, "Ready");
        assert_eq!(ready.reason, "MaxMachinesReached");
        assert!(ready.message.contains("spec.maxMachines"), "{}", ready.message);
        assert_eq!(p.status.phase, Some(Phase::Provisioning), "one machine already runs");
    }

    #[test]
    fn capacity_zero_is_fulfilled_with_nothing_running() {
        let (s, t) = (spec(0), template());
        let p = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        assert_eq!((p.step, p.status.phase), (Step::Wait, Some(Phase::Fulfilled)));
    }

    #[test]
    fn a_scale_down_naming_a_machine_is_a_return_not_a_loss() {
        let (mut s, t) = (spec(4), template());
        s.return_machines = vec!["i-2".into()];
        let mut observed: Vec<_> = (1..=5).map(|n| obs(&format!("i-{n}"), Running, "m5.large", n)).collect();
        let p = plan(&frame(&s, &t, 100), &MachineRequestStatus::default(), &observed);
        assert_eq!(p.step, Step::Return(vec!["i-2".into()]));
        let mut status = p.status;
        for (now, state) in [(101, ShuttingDown), (102, Terminated), (103, Terminated)] {
            observed[1].state = state;
            let p = plan(&frame(&s, &t, now), &status, &observed);
            assert_eq!(p.step, Step::Wait, "at {now}");
            status = p.status;
        }
        let machine = status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        assert_eq!(machine.result, Some(MachineResult::Succeed));
        assert!(!machine.message.as_deref().unwrap_or_default().contains("outside the operator"));
        assert_eq!(cond(&status, "Degraded").status, "False");
        assert_eq!((status.phase, status.fulfilled_capacity), (Some(Phase::Fulfilled), 4));
        // The same machine terminated behind the operator's back is a loss.
        let mut fresh = MachineRequestStatus::default();
        observed[1].state = Running;
        fresh = plan(&frame(&spec(5), &t, 100), &fresh, &observed).status;
        observed[1].state = Terminated;
        let lost = plan(&frame(&spec(5), &t, 101), &fresh, &observed).status;
        let machine = lost.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        assert_eq!(machine.result, Some(MachineResult::Fail));
        assert!(machine.message.as_deref().unwrap().contains("outside the operator"));
        assert_eq!(cond(&lost, "Degraded").reason, "MachinesLost");
    }

    #[test]
    fn an_open_attempt_is_replayed_exactly_even_when_the_listing_shows_part_of_it() {
        let (s, t) = (spec(5), template());
        let first = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        let Step::Launch { attempt: opened, .. } = first.step.clone() else { panic!("{:?}", first.step) };
        // The launch's answer was lost; the tag listing shows two of its machines so far.
        let partial = [obs("i-1", Pending, "m5.large", 0), obs("i-2", Pending, "m5.large", 0)];
        let again = plan(&frame(&s, &t, 5), &first.status, &partial);
        let Step::Launch { units, attempt } = again.step else { panic!("{:?} {:?}", again.step, again.status) };
        assert_eq!(
            (units, &attempt),
            (5, &opened),
            "same units, markets and token: the cloud answers with what it made"
        );
        // Once the listing shows the whole launch the attempt is adopted; the next one is new.
        let all: Vec<_> = (1..=5).map(|n| obs(&format!("i-{n}"), Running, "m5.large", 0)).collect();
        let done = plan(&frame(&s, &t, 10), &again.status, &all);
        assert_eq!(done.step, Step::Wait);
        assert!(done.status.attempt.as_ref().unwrap().completed);
        let mut reclaimed = all.clone();
        reclaimed[4].state = Terminated;
        let lost = plan(&frame(&s, &t, 20), &done.status, &reclaimed);
        let Step::Launch { attempt, .. } = lost.step else { panic!("{:?}", lost.step) };
        assert_eq!(attempt.number, 2, "attempt numbers only go up");
    }

    #[test]
    fn a_token_conflict_ends_the_attempt_without_blocking_the_request() {
        let (s, t) = (spec(2), template());
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        let conflict = ProviderError::TokenConflict { code: "IdempotentParameterMismatch".into(), message: "m".into() };
        record_launch(&f, &mut status, &Err(conflict));
        assert!(status.attempt.as_ref().unwrap().completed && status.blocked.is_none());
        let p = plan(&frame(&s, &t, 60), &status, &[]);
        let Step::Launch { attempt, .. } = p.step else { panic!("{:?}", p.step) };
        assert_eq!(attempt.number, 2);
    }

    #[test]
    fn weights_are_those_of_the_launch_not_of_the_current_template() {
        let (s, t) = (spec(12), template());
        let mut heavy = t.clone();
        heavy.instance_types = vec![InstanceTypeSpec { type_: "m5.xlarge".into(), weight: 4, priority: None }];
        let observed: Vec<_> = (1..=3).map(|n| obs(&format!("i-{n}"), Running, "m5.xlarge", n)).collect();
        let p = plan(&frame(&s, &heavy, 10), &MachineRequestStatus::default(), &observed);
        assert_eq!((p.step.clone(), p.status.fulfilled_capacity), (Step::Wait, 12));
        // m5.xlarge is removed from the template: the running machines keep their 4 units.
        let mut edited = heavy.clone();
        edited.instance_types = vec![InstanceTypeSpec { type_: "m5.large".into(), weight: 1, priority: None }];
        let p = plan(&frame(&s, &edited, 20), &p.status, &observed);
        assert_eq!((p.step, p.status.fulfilled_capacity), (Step::Wait, 12), "nothing more is launched");
    }

    #[test]
    fn a_partial_request_still_replaces_a_machine_lost_after_it_settled() {
        let (s, t) = (spec(3), template());
        let start = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]).status;
        let two = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)];
        let settled = plan(&frame(&s, &t, 901), &start, &two);
        assert_eq!((settled.step.clone(), settled.status.phase), (Step::Wait, Some(Phase::Partial)));
        assert_eq!(cond(&settled.status, "Stalled").status, "True");
        let reclaimed = [two[0].clone(), obs("i-2", Terminated, "m5.large", 0)];
        let p = plan(&frame(&s, &t, 1000), &settled.status, &reclaimed);
        assert!(matches!(p.step, Step::Launch { .. }), "the lost machine is replaced: {:?}", p.step);
    }

    #[test]
    fn a_machine_lost_under_lost_machines_report_is_reported_not_replaced_until_returned() {
        let (mut s, t) = (spec(2), template());
        s.lost_machines = LostMachines::Report;
        let two = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)];
        let fulfilled = plan(&frame(&s, &t, 10), &MachineRequestStatus::default(), &two).status;
        assert_eq!(fulfilled.phase, Some(Phase::Fulfilled));
        let reclaimed = [two[0].clone(), obs("i-2", Terminated, "m5.large", 0)];
        let p = plan(&frame(&s, &t, 20), &fulfilled, &reclaimed);
        assert_eq!(p.step, Step::Wait, "nothing replaces it");
        assert_eq!(p.status.phase, Some(Phase::Partial));
        let ready = cond(&p.status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "MachinesLost"));
        assert!(ready.message.contains("spec.lostMachines: Report"), "{}", ready.message);
        assert_eq!(cond(&p.status, "Degraded").reason, "MachinesLost");
        let again = plan(&frame(&s, &t, 30), &p.status, &reclaimed);
        assert_eq!(again.step, Step::Wait, "nor on a later pass");
        // Returned (named, capacity lowered for it): settled at the smaller capacity.
        s.return_machines = vec!["i-2".into()];
        s.capacity = 1;
        let returned = plan(&frame(&s, &t, 40), &again.status, &reclaimed);
        assert_eq!((returned.step, returned.status.phase), (Step::Wait, Some(Phase::Fulfilled)));
        // Named without lowering capacity: the machine is replaced, as returnMachines says.
        s.capacity = 2;
        let replaced = plan(&frame(&s, &t, 50), &again.status, &reclaimed);
        assert!(matches!(replaced.step, Step::Launch { units: 1, .. }), "{:?}", replaced.step);
    }

    #[test]
    fn an_auth_error_is_retried_after_a_long_backoff_without_a_spec_change() {
        let (mut s, t) = (spec(1), template());
        s.fulfilment_timeout = "1h".into();
        let f = frame(&s, &t, 0);
        let mut status = plan(&f, &MachineRequestStatus::default(), &[]).status;
        let denied = ProviderError::Auth { code: "UnauthorizedOperation".into(), message: "m".into() };
        record_launch(&f, &mut status, &Err(denied));
        let p = plan(&frame(&s, &t, 60), &status, &[]);
        assert_eq!(p.step, Step::Wait);
        assert_eq!(p.requeue, Requeue::After(std::time::Duration::from_secs(540)));
        assert_eq!(cond(&p.status, "Stalled").status, "True");
        let p = plan(&frame(&s, &t, 601), &p.status, &[]);
        assert!(matches!(p.step, Step::Launch { .. }), "{:?}", p.step);
    }

    #[test]
    fn kstatus_sees_provisioning_as_reconciling_and_fulfilled_as_done() {
        let (s, t) = (spec(2), template());
        let p = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        assert_eq!(
            (cond(&p.status, "Reconciling").status.as_str(), cond(&p.status, "Stalled").status.as_str()),
            ("True", "False")
        );
        let running = [obs("i-1", Running, "m5.large", 0), obs("i-2", Running, "m5.large", 0)];
        let p = plan(&frame(&s, &t, 10), &p.status, &running);
        assert_eq!(
            (cond(&p.status, "Reconciling").status.as_str(), cond(&p.status, "Stalled").status.as_str()),
            ("False", "False")
        );
    }

    #[test]
    fn an_unusable_fulfilment_timeout_holds_launching_and_names_the_field() {
        let (mut s, t) = (spec(2), template());
        s.fulfilment_timeout = "0s".into();
        let p = plan(&frame(&s, &t, 0), &MachineRequestStatus::default(), &[]);
        assert_eq!((p.step, p.requeue), (Step::Wait, Requeue::AwaitChange));
        assert!(cond(&p.status, "Ready").message.contains("spec.fulfilmentTimeout"));
    }

    #[test]
    fn machines_found_only_by_id_stay_and_say_so() {
        let (s, t) = (spec(3), template());
        let all = [
            obs("i-1", Running, "m5.large", 0),
            obs("i-2", Running, "m5.large", 0),
            obs("i-3", Pending, "m5.large", 290),
        ];
        let status = plan(&frame(&s, &t, 300), &MachineRequestStatus::default(), &all).status;
        // Found by id (its tags were stripped): it stays, and says so.
        let mut found = all[1].clone();
        found.untagged = true;
        let p = plan(&frame(&s, &t, 301), &status, &[all[0].clone(), found, all[2].clone()]);
        let m = p.status.machines.iter().find(|m| m.instance_id == "i-2").unwrap();
        assert!(m.message.as_deref().unwrap().contains("tracked by instance id"));
        assert_eq!(p.step, Step::Wait, "nothing relaunched");
    }

    #[test]
    fn planning_again_with_nothing_changed_changes_nothing() {
        let (s, t) = (spec(3), template());
        let observed = [obs("i-2", Running, "m5.large", 0), obs("i-1", Running, "m5.xlarge", 0)];
        let first = plan(&frame(&s, &t, 10), &MachineRequestStatus::default(), &observed);
        let second = plan(&frame(&s, &t, 500), &first.status, &observed);
        assert_eq!(first.status, second.status, "a quiet status keeps GitOps diffs and API calls at zero");
        let ids: Vec<_> = first.status.machines.iter().map(|m| m.instance_id.as_str()).collect();
        assert_eq!(ids, ["i-1", "i-2"], "machines are sorted by instance id");
    }
}
