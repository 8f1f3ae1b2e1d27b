//! Leader election: only the replica holding the `coordination.k8s.io` Lease `orb-operator`
//! reconciles; the others wait on standby. The lease is renewed every few seconds and lapses
//! `LEASE_SECONDS` after its holder stops renewing it, so a standby replica takes over within
//! about that long of a leader's death (a leader shutting down releases it at once). A leader
//! that loses the lease — or whose last renewal is so old that a standby with a clock up to
//! `MAX_CLOCK_SKEW` ahead may judge it lapsed — exits: two reconcilers must never act on the
//! same requests.
//!
//! The lease itself is `kube-lease-manager`'s (server-side apply, clock-skew tolerant).

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use std::time::Duration;
use tokio::sync::watch;

/// The lease every replica competes for.
pub const LEASE: &str = "orb-operator";
/// Seconds a lease stays valid after its last renewal: the longest a dead leader's lease holds.
pub const LEASE_SECONDS: u64 = 10;
/// Seconds before expiry the holder renews.
const GRACE_SECONDS: u64 = 4;

/// Where the lease is and who competes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub namespace: String,
    /// This replica's name in the lease's `holderIdentity`.
    pub identity: String,
}

impl Election {
    /// The lease namespace: `--lease-namespace`, else the pod's (`POD_NAMESPACE`, from the
    /// downward API), else `default`. The identity: the pod's name, else the host's, with a
    /// random suffix so two processes on one host never share it.
    pub fn from_env(lease_namespace: Option<String>, env: impl Fn(&str) -> Option<String>) -> Self {
        let namespace = lease_namespace
            .or_else(|| env("POD_NAMESPACE"))
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into());
        let host = env("POD_NAME").or_else(|| env("HOSTNAME")).unwrap_or_else(|| "orb-operator".into());
        let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect();
        Self { namespace, identity: format!("{host}-{suffix}") }
    }
}

/// Held leadership: `lost` resolves if the lease is lost; dropping it releases the lease.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    leases: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    identity: String,
}

/// How often the leader confirms, on its own, that it still holds the lease.
const CONFIRM_EVERY: Duration = Duration::from_secs(2);
/// Clock skew between replicas the lease tolerates. A standby judges the lease lapsed at its
/// `renewTime` (written with the leader's clock) plus `LEASE_SECONDS`, by its own clock: one
/// running this much ahead takes over this much early, so the leader stops this much before.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// Why the leader must stop now, judged by its last *renewal* (the lease's `renewTime`, which
/// it wrote with its own clock) and not by its last successful read: a lease it can read but
/// no longer renews still lapses, and a standby then takes over.
fn must_stop(holder: Option<&str>, me: &str, renewed: jiff::Timestamp, now: jiff::Timestamp) -> Option<String> {
    if holder != Some(me) {
        return Some(format!("the lease names another holder ({})", holder.unwrap_or("none")));
    }
    let valid = LEASE_SECONDS.saturating_sub(MAX_CLOCK_SKEW.as_secs());
    let fence = renewed + jiff::SignedDuration::from_secs(valid as i64);
    (now >= fence).then(|| format!("the lease was last renewed at {renewed} and may lapse for a replica whose clock runs up to {MAX_CLOCK_SKEW:?} ahead"))
}

/// Waits until this replica holds the lease.
pub async fn lead(client: Client, election: &Election) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        // One field manager per replica: taking a free lease is a server-side apply that must
        // conflict with another replica's, or two replicas racing for it could both lead.
        .with_field_manager(format!("{}-{}", super::MANAGER, election.identity))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot use Lease {}/{LEASE} for leader election: {e}", election.namespace))?;
    let leases = kube::Api::namespaced(client.clone(), &election.namespace);
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %format!("{}/{LEASE}", election.namespace), identity = %election.identity, "standing by until this replica holds the lease");
    while !*leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            anyhow::bail!("leader election on Lease {}/{LEASE} ended before this replica led", election.namespace);
        }
    }
    tracing::info!(identity = %election.identity, "leading: reconciling from now on");
    Ok(Leadership { leading, task, leases, identity: election.identity.clone() })
}

impl Leadership {
    /// Resolves when the lease is lost: the lease manager says so, the lease names another
    /// holder, or its last renewal is too old (`must_stop`): cut off from the API server, or
    /// with renewals failing, this replica would not learn in time that another took over.
    pub async fn lost(&mut self) {
        let told = async {
            loop {
                if self.leading.changed().await.is_err() || !*self.leading.borrow() {
                    return;
                }
            }
        };
        let fenced = async {
            // Just acquired: renewed about now.
            let (mut holder, mut renewed) = (Some(self.identity.clone()), jiff::Timestamp::now());
            loop {
                if let Ok(Ok(lease)) = tokio::time::timeout(CONFIRM_EVERY, self.leases.get_opt(LEASE)).await {
                    let spec = lease.and_then(|l| l.spec);
                    holder = spec.as_ref().and_then(|s| s.holder_identity.clone());
                    renewed = spec.and_then(|s| s.renew_time).map_or(renewed, |t| t.0);
                }
                if let Some(why) = must_stop(holder.as_deref(), &self.identity, renewed, jiff::Timestamp::now()) {
                    tracing::warn!(reason = %why, "no longer leading");
                    return;
                }
                tokio::time::sleep(CONFIRM_EVERY).await;
            }
        };
        tokio::select! {
            () = told => {}
            () = fenced => {}
        }
    }

    /// Gives the lease up now, so a standby replica need not wait for it to lapse.
    pub async fn release(self) {
        let Self { leading, task, .. } = self;
        drop(leading);
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("the lease was not released in time; it lapses on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_is_fenced_on_the_last_renewal_not_the_last_read() {
        let now = jiff::Timestamp::now();
        let ago = |secs: i64| now - jiff::SignedDuration::from_secs(secs);
        // Renewed 3 s ago: leading.
        assert_eq!(must_stop(Some("me"), "me", ago(3), now), None);
        // Read just now, but last renewed 8 s ago (renewals failing while reads work): a
        // standby whose clock runs 2 s ahead sees the 10 s lease lapse now. Stop.
        let why = must_stop(Some("me"), "me", ago(LEASE_SECONDS as i64 - MAX_CLOCK_SKEW.as_secs() as i64), now);
        assert!(why.is_some_and(|w| w.contains("last renewed")));
        assert!(must_stop(Some("other"), "me", ago(0), now).is_some_and(|w| w.contains("other")));
        assert!(must_stop(None, "me", ago(0), now).is_some());
    }

    #[test]
    fn the_lease_lives_in_the_named_namespace_else_the_pods_else_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        };
        let pod = env(&[("POD_NAMESPACE", "orb-system"), ("POD_NAME", "orb-operator-7c9f-abcde")]);
        assert_eq!(Election::from_env(Some("ops".into()), pod).namespace, "ops");
        let e = Election::from_env(None, pod);
        assert_eq!(e.namespace, "orb-system");
        assert!(e.identity.starts_with("orb-operator-7c9f-abcde-"), "{}", e.identity);
        assert_eq!(Election::from_env(None, env(&[])).namespace, "default");
        assert_ne!(Election::from_env(None, pod).identity, e.identity, "two processes never share an identity");
    }
}
