//! The state of every tracked EC2 fleet, spot fleet request and Auto Scaling group of one
//! provider, refreshed by the poller's cycle: all of them described together — one
//! DescribeFleets, one DescribeSpotFleetRequests (per 100 ids) and one
//! DescribeAutoScalingGroups (per 50 names) — and each one's members and errors read again only
//! when what it reports has changed, or a member it named is gone. A fleet that holds steady
//! costs no call of its own; a reconcile reads its request's view from memory.

use crate::provider::aws::calls::ops::Ops;
use crate::provider::aws::handlers::fleet::Described;
use crate::provider::aws::handlers::{asg, ec2_fleet, spot_fleet};
use crate::provider::{FleetView, LaunchFailure, ProviderError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Fleet ids or spot fleet request ids per DescribeFleets / DescribeSpotFleetRequests call.
const IDS_PER_CALL: usize = 100;
/// Group names per DescribeAutoScalingGroups call.
const GROUPS_PER_CALL: usize = 50;
/// How often the errors of a fleet short of its target are read again while it says the same.
const ERRORS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a fleet just recorded may be unknown to EC2's describe before it is taken to be
/// over (a fleet id EC2 no longer knows, deleted long ago, would otherwise be asked for — one
/// call of its own, as a missing id fails a batch — in every cycle).
const UNSEEN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ec2Fleet,
    SpotFleet,
    Group,
}

/// The fleets, spot fleet requests and group one request holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub fleets: BTreeSet<String>,
    pub spot_fleets: BTreeSet<String>,
    pub group: Option<String>,
}

impl Held {
    fn keys(&self) -> impl Iterator<Item = (Kind, String)> + '_ {
        let fleets = self.fleets.iter().map(|id| (Kind::Ec2Fleet, id.clone()));
        let spot = self.spot_fleets.iter().map(|id| (Kind::SpotFleet, id.clone()));
        fleets.chain(spot).chain(self.group.iter().map(|g| (Kind::Group, g.clone())))
    }

    /// Whether it holds something `other` does not.
    pub fn keys_not_in(&self, other: &Held) -> bool {
        let theirs: BTreeSet<(Kind, String)> = other.keys().collect();
        self.keys().any(|key| !theirs.contains(&key))
    }

    pub fn is_empty(&self) -> bool {
        self.fleets.is_empty() && self.spot_fleets.is_empty() && self.group.is_none()
    }
}

/// What the last cycle learnt of one fleet.
#[derive(Clone, Debug)]
pub struct Memo {
    described: Described,
    members: Vec<String>,
    failures: Vec<LaunchFailure>,
    /// Asked for since then and never described (EC2 may not show a new fleet at once).
    unseen_since: Option<tokio::time::Instant>,
    /// When `failures` were read.
    errors_read: Option<tokio::time::Instant>,
}

impl Memo {
    /// A fleet EC2 did not describe: over (`finished`), or not seen yet.
    fn absent(id: &str, finished: bool, unseen_since: Option<tokio::time::Instant>) -> Self {
        let described = Described {
            id: id.to_string(),
            finished,
            working: false,
            outstanding: 0,
            troubled: false,
            signature: ABSENT.into(),
            members: None,
        };
        Self { described, members: vec![], failures: vec![], unseen_since, errors_read: None }
    }

    /// Recorded, and never described yet.
    fn unlisted(&self) -> bool {
        self.unseen_since.is_some() && self.described.signature == ABSENT
    }
}

/// The signature of a fleet no describe has shown.
const ABSENT: &str = "absent";

/// Every fleet's memo, by kind and id.
pub type Book = HashMap<(Kind, String), Memo>;

/// Whether any fleet of `book` is still working towards its target: the poller keeps the
/// short interval.
pub fn busy(book: &Book) -> bool {
    let now = tokio::time::Instant::now();
    book.values().any(|m| {
        m.described.outstanding > 0 || m.unseen_since.is_some_and(|since| now.duration_since(since) < UNSEEN_LIMIT)
    })
}

/// A fleet of `held` recorded but never described yet: its units and members are unknown, so
/// no plan may be made (it could launch them a second time).
pub fn unlisted<'a>(book: &'a Book, held: &Held) -> Option<&'a str> {
    held.keys()
        .filter(|(kind, _)| *kind != Kind::Group)
        .find_map(|key| book.get(&key).filter(|m| m.unlisted()).map(|m| m.described.id.as_str()))
}

/// The view of `held` as of `book`.
pub fn view(book: &Book, held: &Held) -> FleetView {
    let mut view = FleetView::default();
    for key in held.keys() {
        let Some(memo) = book.get(&key) else { continue };
        if memo.described.finished {
            view.finished.push(key.1.clone());
        }
        view.outstanding += memo.described.outstanding;
        view.members.extend(memo.members.iter().cloned());
        view.failures.extend(memo.failures.iter().cloned());
    }
    view.members.sort();
    view.members.dedup();
    view
}

/// Keys `refresh` must describe: those held by some request and not known to be over (nor
/// instant EC2 fleets, whose instances carry tags and which change no more).
pub fn due(book: &Book, held: &[Held], ops: &Ops) -> BTreeSet<(Kind, String)> {
    held.iter()
        .flat_map(Held::keys)
        .filter(|key| !book.get(key).is_some_and(|m| m.described.finished))
        .filter(|(kind, id)| *kind != Kind::Ec2Fleet || !ops.is_instant(id))
        .collect()
}

/// The book after a refresh of `asked`: their fresh memos (none for those EC2 no longer
/// knows), the finished ones kept as they were, and only what some request of `held` holds.
pub fn merged(old: Book, fresh: Book, asked: &BTreeSet<(Kind, String)>, held: &[Held]) -> Book {
    let holding: HashSet<(Kind, String)> = held.iter().flat_map(Held::keys).collect();
    let kept = old.into_iter().filter(|(key, memo)| memo.described.finished && !asked.contains(key));
    kept.chain(fresh).filter(|(key, _)| holding.contains(key)).collect()
}

/// Describes `keys` in batches, and reads members and errors of those whose signature changed
/// since `book` (or that named a member now in `gone`). Returns the new memos. A fleet or spot
/// fleet request EC2 has not described for `UNSEEN_LIMIT` is over; a group that does not
/// exist is only absent (asking for it costs nothing).
pub async fn refresh(
    ops: &Ops,
    keys: &BTreeSet<(Kind, String)>,
    book: &Book,
    gone: &HashSet<String>,
) -> Result<Book, ProviderError> {
    let ids = |kind| keys.iter().filter(|(k, _)| *k == kind).map(|(_, id)| id.clone()).collect::<Vec<_>>();
    let mut described = vec![];
    for chunk in ids(Kind::Ec2Fleet).chunks(IDS_PER_CALL) {
        described.extend(ec2_fleet::assess(ops, chunk).await?.into_iter().map(|d| (Kind::Ec2Fleet, d)));
    }
    for chunk in ids(Kind::SpotFleet).chunks(IDS_PER_CALL) {
        described.extend(spot_fleet::assess(ops, chunk).await?.into_iter().map(|d| (Kind::SpotFleet, d)));
    }
    for chunk in ids(Kind::Group).chunks(GROUPS_PER_CALL) {
        described.extend(asg::assess(ops, chunk).await?.into_iter().map(|d| (Kind::Group, d)));
    }
    let mut fresh = Book::new();
    let now = tokio::time::Instant::now();
    for (kind, d) in described {
        let key = (kind, d.id.clone());
        let known = book.get(&key);
        let prior = known.filter(|m| m.described.signature == d.signature);
        let members = match (&d.members, d.working) {
            (Some(listed), _) => listed.clone(),
            (None, false) => vec![],
            (None, true) => match prior.filter(|m| !m.members.iter().any(|id| gone.contains(id))) {
                Some(m) => m.members.clone(),
                None => match members(ops, kind, &d.id).await {
                    Ok(members) => members,
                    // Members last read still count; a fleet never read fails the cycle (its
                    // machines unknown, a plan could launch them twice).
                    Err(error) => match known.filter(|m| !m.unlisted()) {
                        Some(m) => {
                            tracing::warn!(fleet = %d.id, %error, "cannot list the fleet's members; keeping the last ones");
                            m.members.clone()
                        }
                        None => return Err(error),
                    },
                },
            },
        };
        // Errors are read while the fleet is short of its target: when what it reports
        // changed, and every `ERRORS_EVERY` meanwhile (it may keep failing as it stands).
        let fresh_errors = prior
            .and_then(|m| m.errors_read)
            .filter(|at| now.duration_since(*at) < ERRORS_EVERY)
            .map(|at| (prior.map(|m| m.failures.clone()).unwrap_or_default(), Some(at)));
        let (failures, errors_read) = match (d.troubled, fresh_errors) {
            (false, _) => (vec![], None),
            (true, Some(known)) => known,
            (true, None) => match errors(ops, kind, &d.id).await {
                Ok(failures) => (failures, Some(now)),
                // Why it falls short is worth knowing, not worth failing every request for.
                Err(error) => {
                    tracing::warn!(fleet = %d.id, %error, "cannot read the fleet's errors");
                    (known.map(|m| m.failures.clone()).unwrap_or_default(), None)
                }
            },
        };
        let memo = Memo { described: d, members, failures, unseen_since: None, errors_read };
        fresh.insert(key, memo);
    }
    let absent: Vec<&(Kind, String)> = keys.iter().filter(|key| !fresh.contains_key(*key)).collect();
    for key in absent {
        let (kind, id) = key;
        // An instant fleet `assess` just learnt of: remembered there, never described again.
        if *kind == Kind::Ec2Fleet && ops.is_instant(id) {
            continue;
        }
        fresh.insert(key.clone(), absent_memo(*kind, id, book.get(key), now));
    }
    Ok(fresh)
}

/// The memo of a fleet EC2 did not describe, given what was known of it before: over once
/// it has gone undescribed for `UNSEEN_LIMIT` in a row (one answer that leaves it out is not
/// enough: a fleet dropped from the status while it runs would be lost).
/// Until then it keeps what was last known of it.
fn absent_memo(kind: Kind, id: &str, before: Option<&Memo>, now: tokio::time::Instant) -> Memo {
    let since = before.and_then(|m| m.unseen_since).unwrap_or(now);
    if kind != Kind::Group && now.duration_since(since) >= UNSEEN_LIMIT {
        return Memo::absent(id, true, None);
    }
    match before {
        // A group not listed does not exist: nothing of it is kept.
        Some(known) if kind != Kind::Group => Memo { unseen_since: Some(since), ..known.clone() },
        _ => Memo::absent(id, false, Some(since)),
    }
}

async fn members(ops: &Ops, kind: Kind, id: &str) -> Result<Vec<String>, ProviderError> {
    match kind {
        Kind::Ec2Fleet => ec2_fleet::members(ops, id).await,
        Kind::SpotFleet => spot_fleet::members(ops, id).await,
        Kind::Group => Ok(vec![]),
    }
}

async fn errors(ops: &Ops, kind: Kind, id: &str) -> Result<Vec<LaunchFailure>, ProviderError> {
    match kind {
        Kind::Ec2Fleet => ec2_fleet::history_errors(ops, id).await,
        Kind::SpotFleet => spot_fleet::errors(ops, id).await,
        Kind::Group => asg::errors(ops, id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str) -> Memo {
        let mut memo = Memo::absent(id, false, None);
        memo.described.signature = "active".into();
        memo
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_ec2_does_not_describe_is_over_once_seen_before_or_unseen_too_long() {
        let now = tokio::time::Instant::now();
        // Just recorded, not shown yet: waited for (the poller stays busy), not over.
        let new = absent_memo(Kind::SpotFleet, "sfr-1", None, now);
        assert!(!new.described.finished);
        assert_eq!(new.unseen_since, Some(now));
        let book: Book = [((Kind::SpotFleet, "sfr-1".to_string()), new.clone())].into();
        assert!(busy(&book));
        let held = Held { spot_fleets: ["sfr-1".into()].into(), ..Default::default() };
        assert_eq!(unlisted(&book, &held), Some("sfr-1"), "no plan while its units are unknown");
        // Still unseen after the limit: over, and no longer waited for.
        tokio::time::advance(UNSEEN_LIMIT).await;
        let later = tokio::time::Instant::now();
        let over = absent_memo(Kind::SpotFleet, "sfr-1", Some(&new), later);
        assert!(over.described.finished);
        let book: Book = [((Kind::SpotFleet, "sfr-1".to_string()), over)].into();
        assert!(!busy(&book));
        assert_eq!(unlisted(&book, &held), None);
        assert_eq!(view(&book, &held).finished, ["sfr-1"]);
        // Described before, left out now: waited for, over only after the limit.
        let gone = absent_memo(Kind::Ec2Fleet, "fleet-1", Some(&seen("fleet-1")), later);
        assert!(!gone.described.finished);
        assert_eq!(gone.described.signature, "active", "what was last known is kept meanwhile");
        tokio::time::advance(UNSEEN_LIMIT).await;
        let much_later = tokio::time::Instant::now();
        assert!(absent_memo(Kind::Ec2Fleet, "fleet-1", Some(&gone), much_later).described.finished);
        // A group that does not exist is only absent: asking for it costs nothing.
        let group = absent_memo(Kind::Group, "g", Some(&seen("g")), later);
        assert!(!group.described.finished && group.described.signature == "absent", "{group:?}");
        assert!(!absent_memo(Kind::Group, "g", Some(&new), later).described.finished);
    }
}
