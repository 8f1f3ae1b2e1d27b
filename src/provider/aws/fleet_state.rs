//! The state of every tracked EC2 fleet, spot fleet request and Auto Scaling group of one
//! provider, refreshed by the poller's cycle: all of them described together — one
//! DescribeFleets, one DescribeSpotFleetRequests (per 100 ids) and one
//! DescribeAutoScalingGroups (per 50 names) — and each one's members and errors read again only
//! when what it reports has changed, or a member it named is gone. A fleet that holds steady
//! costs no call of its own; a reconcile reads its request's view from memory.

use super::ops::Ops;
use super::{asg, ec2_fleet, spot_fleet};
use crate::provider::{FleetView, LaunchFailure, ProviderError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Fleet ids or spot fleet request ids per DescribeFleets / DescribeSpotFleetRequests call.
const IDS_PER_CALL: usize = 100;
/// Group names per DescribeAutoScalingGroups call.
const GROUPS_PER_CALL: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ec2Fleet,
    SpotFleet,
    Group,
}

/// What one describe says of a fleet, spot fleet request or group, reduced to what a view needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    pub id: String,
    /// Over (deleted, cancelled, failed): it launches nothing more and is not described again.
    pub finished: bool,
    /// Active and holding members worth listing (instant fleets: their instances carry the
    /// request's tags).
    pub working: bool,
    /// Capacity units it is still working to launch.
    pub outstanding: u32,
    /// Whether its errors are worth reading (short of its target, or reporting errors).
    pub troubled: bool,
    /// What, unchanged, means its members and errors are unchanged too.
    pub signature: String,
    /// Members the describe itself names (groups); fleets' members take a call of their own.
    pub members: Option<Vec<String>>,
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
}

/// Every fleet's memo, by kind and id.
pub type Book = HashMap<(Kind, String), Memo>;

/// Whether any fleet of `book` is still working towards its target: the poller keeps the
/// short interval.
pub fn busy(book: &Book) -> bool {
    book.values().any(|m| m.described.outstanding > 0)
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
        .filter(|(kind, id)| *kind != Kind::Ec2Fleet || !ops.not_instant(std::slice::from_ref(id)).is_empty())
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
/// since `book` (or that named a member now in `gone`). Returns the new memos; a key EC2 no
/// longer knows gets none.
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
    for (kind, d) in described {
        let key = (kind, d.id.clone());
        let prior = book.get(&key).filter(|m| m.described.signature == d.signature);
        let members = match (&d.members, d.working) {
            (Some(listed), _) => listed.clone(),
            (None, false) => vec![],
            (None, true) => match prior.filter(|m| !m.members.iter().any(|id| gone.contains(id))) {
                Some(m) => m.members.clone(),
                None => members(ops, kind, &d.id).await?,
            },
        };
        let failures = match (d.troubled, prior) {
            (false, _) => vec![],
            (true, Some(m)) => m.failures.clone(),
            (true, None) => errors(ops, kind, &d.id).await?,
        };
        let memo = Memo { described: d, members, failures };
        fresh.insert(key, memo);
    }
    Ok(fresh)
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
