//! Calls gathered across requests.
//!
//! Removals: calls made within `GATHER` of each other share one AWS call per batch of ids —
//! TerminateInstances (1000 ids), DeleteFleets and CancelSpotFleetRequests (100) — so deleting a
//! hundred requests at once costs a call or two, not a hundred. The first caller opens a batch
//! and a task that sends it once nobody joined for `GATHER` (at most `GATHER_AT_MOST` after it
//! opened); every caller waits for the answer. When a shared call fails, each caller sends its
//! own ids again on their own: one request's resource the operator may not remove (an IAM
//! condition, say) never holds back the others' releases.
//!
//! Listings of a whole account (every fleet, every spot fleet request; EC2 filters them by no
//! tag): requests asking within `GATHER` of each other share one listing — after a burst of
//! lost create answers each request looks for what its create made, and one listing serves
//! them all. A caller joins only a listing not yet sent, so it always sees what was made before
//! it asked.

use crate::provider::ProviderError;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a batch waits for others to join it after the last one did...
const GATHER: Duration = Duration::from_millis(50);
/// ...but no longer than this after it opened.
const GATHER_AT_MOST: Duration = Duration::from_millis(500);

/// The listing of a whole account, in as many pages as it takes.
pub type List<C, T> = fn(C) -> BoxFuture<'static, Result<Vec<T>, ProviderError>>;

/// What a listing came to, shared by its callers.
type Listed<T> = Option<Result<Arc<Vec<T>>, ProviderError>>;

/// One account-wide listing, and the one waiting to be sent, if any.
pub struct SharedListing<C, T> {
    list: List<C, T>,
    open: Mutex<Option<watch::Receiver<Listed<T>>>>,
}

impl<C: Clone + std::marker::Send + Sync + 'static, T: std::marker::Send + Sync + 'static> SharedListing<C, T> {
    pub fn new(list: List<C, T>) -> Arc<Self> {
        Arc::new(Self { list, open: Mutex::default() })
    }

    /// Everything listed, by a listing sent after this call was made.
    pub async fn call(self: &Arc<Self>, ops: &C) -> Result<Arc<Vec<T>>, ProviderError> {
        let mut listed = {
            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match open.as_ref() {
                Some(waiting) => waiting.clone(),
                None => {
                    let (sender, waiting) = watch::channel(None);
                    *open = Some(waiting.clone());
                    // Its own task, as for removals: a cancelled caller never strands the others.
                    tokio::spawn(send_listing(self.clone(), ops.clone(), sender));
                    waiting
                }
            }
        };
        match listed.wait_for(Option::is_some).await.ok().and_then(|l| l.clone()) {
            Some(answer) => answer,
            // The task went away without an answer (the runtime shutting down): list alone.
            None => (self.list)(ops.clone()).await.map(Arc::new),
        }
    }
}

/// Lets others join for `GATHER`, closes the listing to newcomers, then sends it.
async fn send_listing<C, T>(shared: Arc<SharedListing<C, T>>, ops: C, answer: watch::Sender<Listed<T>>) {
    tokio::time::sleep(GATHER).await;
    shared.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    answer.send_replace(Some((shared.list)(ops).await.map(Arc::new)));
}

/// The call that removes a batch of ids (in as many AWS calls as its limit needs).
pub type Send<C> = fn(C, Vec<String>) -> BoxFuture<'static, Result<(), ProviderError>>;

/// What a batch's call came to, for its callers.
#[derive(Clone, Debug)]
enum Outcome {
    Done,
    Failed(ProviderError),
    /// The shared call failed: each caller tries its own ids alone.
    Alone,
}

struct Batch {
    /// Each caller's ids.
    parts: Vec<Vec<String>>,
    outcome: watch::Sender<Option<Outcome>>,
}

/// One kind of removal, and the batch of it being gathered, if any.
pub struct Gathered<C> {
    send: Send<C>,
    open: Mutex<Option<Batch>>,
}

impl<C: Clone + std::marker::Send + Sync + 'static> Gathered<C> {
    pub fn new(send: Send<C>) -> Arc<Self> {
        Arc::new(Self { send, open: Mutex::default() })
    }

    /// Removes `ids` together with whatever other callers ask meanwhile.
    pub async fn call(self: &Arc<Self>, ops: &C, ids: &[String]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut outcome = {
            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match open.as_mut() {
                Some(batch) => {
                    batch.parts.push(ids.to_vec());
                    batch.outcome.subscribe()
                }
                None => {
                    let (outcome, waiting) = watch::channel(None);
                    *open = Some(Batch { parts: vec![ids.to_vec()], outcome });
                    // Its own task: a caller that goes away (a cancelled reconcile) never
                    // strands the others.
                    tokio::spawn(send_batch(self.clone(), ops.clone()));
                    waiting
                }
            }
        };
        let settled = outcome.wait_for(Option::is_some).await.ok().and_then(|o| o.clone());
        match settled {
            Some(Outcome::Done) => Ok(()),
            Some(Outcome::Failed(error)) => Err(error),
            Some(Outcome::Alone) | None => (self.send)(ops.clone(), ids.to_vec()).await,
        }
    }
}

/// Waits until nobody joined the open batch for `GATHER` (at most `GATHER_AT_MOST`), then
/// sends it and tells its callers how it went.
async fn send_batch<C: Clone + std::marker::Send + Sync + 'static>(gathered: Arc<Gathered<C>>, ops: C) {
    let opened = tokio::time::Instant::now();
    let joined =
        || gathered.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|b| b.parts.len());
    loop {
        let before = joined();
        tokio::time::sleep(GATHER).await;
        if joined() == before || opened.elapsed() >= GATHER_AT_MOST {
            break;
        }
    }
    let batch = gathered.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(Batch { parts, outcome }) = batch else { return };
    let mut all: Vec<String> = parts.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let settled = match (gathered.send)(ops, all).await {
        Ok(()) => Outcome::Done,
        Err(error) if parts.len() == 1 => Outcome::Failed(error),
        Err(error) => {
            tracing::debug!(callers = parts.len(), %error, "a shared removal failed; each caller's ids go alone");
            Outcome::Alone
        }
    };
    outcome.send_replace(Some(settled));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The listing counts its calls and answers with that count.
    fn counting() -> Arc<SharedListing<Arc<AtomicUsize>, usize>> {
        SharedListing::new(|calls| {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(vec![n])
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn callers_within_the_gathering_share_one_listing_and_a_later_one_gets_a_fresh_listing() {
        let (shared, calls) = (counting(), Arc::new(AtomicUsize::new(0)));
        let first = tokio::spawn({
            let (shared, calls) = (shared.clone(), calls.clone());
            async move { shared.call(&calls).await }
        });
        tokio::time::sleep(GATHER / 2).await;
        let joined = tokio::spawn({
            let (shared, calls) = (shared.clone(), calls.clone());
            async move { shared.call(&calls).await }
        });
        // After the listing was sent: what was made since may be missing from it.
        tokio::time::sleep(GATHER).await;
        let late = shared.call(&calls).await.unwrap();
        assert_eq!(*first.await.unwrap().unwrap(), vec![1]);
        assert_eq!(*joined.await.unwrap().unwrap(), vec![1], "asked within the gathering: the same listing");
        assert_eq!(*late, vec![2], "asked once the listing was sent: a listing of its own");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_listing_is_every_callers_error_and_the_next_caller_lists_again() {
        let shared: Arc<SharedListing<Arc<AtomicUsize>, usize>> = SharedListing::new(|calls| {
            Box::pin(async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(ProviderError::Transient {
                        code: "RequestLimitExceeded".into(),
                        message: "slow down".into(),
                    }),
                    n => Ok(vec![n + 1]),
                }
            })
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(shared.call(&calls), shared.call(&calls));
        for answer in [a, b] {
            assert!(matches!(answer, Err(ProviderError::Transient { ref code, .. }) if code == "RequestLimitExceeded"));
        }
        assert_eq!(*shared.call(&calls).await.unwrap(), vec![2]);
    }
}
