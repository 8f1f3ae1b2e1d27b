//! Condition helpers shared by both kinds: build a `metav1.Condition` and put it into a list
//! without disturbing `lastTransitionTime` unless the status actually flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// kstatus: the object is still being worked on (Flux, kpt and Argo CD wait while it is True).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the object cannot make progress without a change (tools report it as failed).
pub const STALLED: &str = "Stalled";

/// A condition's message is cut to this many bytes: it quotes AWS errors, which are free text.
pub const MAX_MESSAGE: usize = 2048;

/// A condition as the operator means it; `upsert` fills in the bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// Sets `cond` in `conditions`, keeping `lastTransitionTime` from the previous condition of the
/// same type when its status did not change. The list stays sorted by type.
pub fn upsert(conditions: &mut Vec<Condition>, cond: Cond, generation: Option<i64>, now: &Time) {
    let status = if cond.status { "True" } else { "False" }.to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == cond.type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != cond.type_);
    conditions.push(Condition {
        type_: cond.type_.to_string(),
        status,
        reason: cond.reason,
        message: super::truncate(cond.message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays_the_same() {
        let mut conds = vec![];
        upsert(&mut conds, Cond::new(READY, false, "Provisioning", "1/3"), Some(1), &t(10));
        upsert(&mut conds, Cond::new(READY, false, "Provisioning", "2/3"), Some(1), &t(20));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(10));
        assert_eq!(conds[0].message, "2/3");
        upsert(&mut conds, Cond::new(READY, true, "Fulfilled", "3/3"), Some(2), &t(30));
        assert_eq!(conds[0].last_transition_time, t(30));
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn conditions_stay_sorted_by_type() {
        let mut conds = vec![];
        upsert(&mut conds, Cond::new(READY, true, "A", ""), None, &t(1));
        upsert(&mut conds, Cond::new(DEGRADED, false, "B", ""), None, &t(1));
        upsert(&mut conds, Cond::new(PROGRESSING, false, "C", ""), None, &t(1));
        let types: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Progressing", "Ready"]);
    }
}
