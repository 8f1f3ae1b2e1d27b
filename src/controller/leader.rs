//! Leader election: only the replica holding the `coordination.k8s.io` Lease `orb-operator`
//! reconciles; the others wait on standby. The lease is renewed every few seconds and lapses
//! `LEASE_SECONDS` after its holder stops renewing it, so a standby replica takes over within
//! about that long of a leader's death (a leader shutting down releases it at once). A leader
//! that loses the lease — or cannot confirm it for most of its validity, cut off from the API
//! server — exits: two reconcilers must never act on the same requests.
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
/// A leader that could not confirm its lease for this long stops: the lease may lapse (after
/// `LEASE_SECONDS`) while it cannot reach the API server, and another replica take over.
const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(LEASE_SECONDS - 3);

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
    /// holder, or this replica could not confirm it for `UNCONFIRMED_LIMIT` (cut off from the
    /// API server, it would not learn in time that another replica took over).
    pub async fn lost(&mut self) {
        let told = async {
            loop {
                if self.leading.changed().await.is_err() || !*self.leading.borrow() {
                    return;
                }
            }
        };
        let confirmed = async {
            let mut last_confirmed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(CONFIRM_EVERY).await;
                match tokio::time::timeout(CONFIRM_EVERY, self.leases.get_opt(LEASE)).await {
                    Ok(Ok(lease)) => {
                        let holder = lease.and_then(|l| l.spec?.holder_identity);
                        if holder.as_deref() != Some(self.identity.as_str()) {
                            tracing::warn!(?holder, "the lease names another holder");
                            return;
                        }
                        last_confirmed = tokio::time::Instant::now();
                    }
                    _ if last_confirmed.elapsed() > UNCONFIRMED_LIMIT => {
                        tracing::warn!(unconfirmed_for = ?last_confirmed.elapsed(), "cannot confirm the lease");
                        return;
                    }
                    _ => {}
                }
            }
        };
        tokio::select! {
            () = told => {}
            () = confirmed => {}
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
