//! How many ids one DescribeInstances names: instance ids (EC2 takes 1000) or request uids in
//! a tag filter (200). EC2 answers that quickly; but an answer naming a thousand instances is
//! large, and where the service is slow to build it (a struggling region, an emulator with
//! thousands of machines) it can outlast the attempt's time again and again — and a poller
//! that sends the same call every cycle then never refreshes anything. A call that got no
//! answer in time is sent again as two halves (down to one id), and the smaller size is kept
//! for `HOLD` before going back to the most.

use crate::provider::ProviderError;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a size learnt from a timeout is kept.
const HOLD: Duration = Duration::from_secs(10 * 60);

/// Lists of one id in a row that got no answer, after which the sending ends.
const ALONE_UNANSWERED: usize = 3;

/// The ids per call, shared by every describe of one kind (by id, by uid) of one provider.
#[derive(Debug)]
pub struct IdLists {
    most: usize,
    /// A smaller size learnt from a timeout, until when.
    shrunk: Mutex<Option<(usize, Instant)>>,
}

impl IdLists {
    pub fn new(most: usize) -> Self {
        Self { most, shrunk: Mutex::new(None) }
    }

    /// Ids to name in the next call.
    pub fn size(&self) -> usize {
        match *self.shrunk.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some((size, until)) if Instant::now() < until => size,
            _ => self.most,
        }
    }

    /// A call naming `sent` ids got no answer in time: the next calls name half as many.
    /// Returns the new size, or None when a single id got no answer (nothing left to split).
    pub fn timed_out(&self, sent: usize) -> Option<usize> {
        if sent <= 1 {
            return None;
        }
        let size = sent.div_ceil(2);
        let mut shrunk = self.shrunk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let smaller = match *shrunk {
            Some((before, until)) if Instant::now() < until => before.min(size),
            _ => size,
        };
        *shrunk = Some((smaller, Instant::now() + HOLD));
        Some(smaller)
    }

    /// Sends `ids` through `call` in lists of `size()`; a list that got no answer in time is
    /// sent again at once as halves (logged at info). Returns each list sent and what its call
    /// came to, in order. A list that got no answer even alone fails on its own, but
    /// `ALONE_UNANSWERED` in a row mean the service answers nothing, so they end the sending:
    /// each id alone would cost an attempt's time, hours for a thousand. A list that failed
    /// otherwise (throttled, refused: the SDK has already retried it) ends the sending too. The
    /// ids not sent share the error that ended it.
    pub async fn each<T, F, Fut>(
        &self,
        what: &str,
        ids: &[String],
        call: F,
    ) -> Vec<(Vec<String>, Result<T, ProviderError>)>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut outcomes = vec![];
        let mut rest = ids;
        let mut alone_unanswered = 0;
        while !rest.is_empty() {
            let (list, after) = rest.split_at(self.size().min(rest.len()));
            let outcome = call(list.to_vec()).await;
            let timed_out = outcome.as_ref().err().filter(|error| error.is_timeout());
            if let Some(error) = timed_out
                && let Some(size) = self.timed_out(list.len())
            {
                tracing::info!(sent = list.len(), next = size, %error, "{what} got no answer in time; naming fewer ids per call for a while");
                continue;
            }
            alone_unanswered = if timed_out.is_some() { alone_unanswered + 1 } else { 0 };
            let ends = match timed_out {
                Some(error) if alone_unanswered >= ALONE_UNANSWERED => {
                    tracing::info!(%error, "{what} got no answer for one id alone, {ALONE_UNANSWERED} in a row: the service is not answering; the rest waits for the next try");
                    Some(error.clone())
                }
                Some(_) => None,
                None => outcome.as_ref().err().cloned(),
            };
            outcomes.push((list.to_vec(), outcome));
            rest = after;
            if let Some(error) = ends
                && !rest.is_empty()
            {
                outcomes.push((rest.to_vec(), Err(error)));
                break;
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_timeout_halves_the_calls_for_ten_minutes_then_they_grow_back() {
        let lists = IdLists::new(1000);
        assert_eq!(lists.size(), 1000);
        assert_eq!(lists.timed_out(1000), Some(500));
        assert_eq!(lists.timed_out(500), Some(250));
        // A call sent before the first halving timing out later does not grow it back.
        assert_eq!(lists.timed_out(1000), Some(250));
        assert_eq!(lists.size(), 250);
        tokio::time::advance(HOLD - Duration::from_secs(1)).await;
        assert_eq!(lists.size(), 250);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(lists.size(), 1000);
        assert_eq!(lists.timed_out(3), Some(2));
        assert_eq!(lists.timed_out(1), None, "one id cannot be split");
    }

    fn timeout() -> ProviderError {
        ProviderError::Transient { code: "Timeout".into(), message: "no answer within 10s".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn each_list_is_sent_once_halves_after_a_timeout_and_another_failure_ends_the_sending() {
        let lists = IdLists::new(4);
        let ids: Vec<String> = (0..7).map(|i| format!("i-{i}")).collect();
        let sent = Mutex::new(vec![]);
        let outcomes = lists
            .each("DescribeInstances", &ids, |list| {
                sent.lock().unwrap().push(list.len());
                let outcome = match list.as_slice() {
                    // The first list of four never gets an answer; "i-2" always fails.
                    [first, _, _, _] if first == "i-0" => Err(timeout()),
                    _ if list.contains(&"i-2".to_string()) => {
                        Err(ProviderError::Transient { code: "InternalError".into(), message: "no".into() })
                    }
                    _ => Ok(list.len()),
                };
                std::future::ready(outcome)
            })
            .await;
        assert_eq!(*sent.lock().unwrap(), vec![4, 2, 2], "4 timed out, then lists of 2 until one failed");
        let summary: Vec<(usize, bool)> =
            outcomes.iter().map(|(list, outcome)| (list.len(), outcome.is_ok())).collect();
        assert_eq!(summary, vec![(2, true), (2, false), (3, false)], "the ids not sent share the failure");
        assert_eq!(lists.size(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ids_unanswered_alone_three_in_a_row_end_the_sending() {
        let lists = IdLists::new(4);
        let ids: Vec<String> = (0..1000).map(|i| format!("i-{i}")).collect();
        let sent = Mutex::new(vec![]);
        // The service answers nothing at all.
        let outcomes = lists
            .each("DescribeInstances", &ids, |list| {
                sent.lock().unwrap().push(list.len());
                std::future::ready(Err::<usize, _>(timeout()))
            })
            .await;
        assert_eq!(*sent.lock().unwrap(), vec![4, 2, 1, 1, 1], "halved down to one id, then three alone");
        let summary: Vec<usize> = outcomes.iter().map(|(list, _)| list.len()).collect();
        assert_eq!(summary, vec![1, 1, 1, 997], "the ids not sent share the timeout");
        assert!(outcomes.iter().all(|(_, outcome)| outcome.as_ref().is_err_and(ProviderError::is_timeout)));
        assert_eq!(lists.size(), 1, "the size learnt is kept: the next sending ends after three calls");
    }

    #[tokio::test(start_paused = true)]
    async fn ids_unanswered_alone_two_in_a_row_fail_on_their_own_and_the_others_are_sent() {
        let lists = IdLists::new(2);
        let ids: Vec<String> = ["slow", "slower", "a", "b"].map(String::from).to_vec();
        let outcomes = lists
            .each("DescribeInstances by request uid", &ids, |list| {
                let outcome =
                    if list.iter().any(|id| id.starts_with("slow")) { Err(timeout()) } else { Ok(list.len()) };
                std::future::ready(outcome)
            })
            .await;
        let summary: Vec<(Vec<String>, bool)> =
            outcomes.into_iter().map(|(list, outcome)| (list, outcome.is_ok())).collect();
        let list = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![(list(&["slow"]), false), (list(&["slower"]), false), (list(&["a"]), true), (list(&["b"]), true)]
        );
    }
}
