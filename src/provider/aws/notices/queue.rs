//! The consumer of one AWS provider's interruption queue (`interruptionQueue`): long-polls SQS
//! (at most 10 messages, 20 s waits: one call per 20 s while the queue is empty), hands what
//! each message says to the poller (`Notices`), and deletes every message it has read — acted
//! on, about an instance it does not know, foreign or malformed: nothing stays to be read again
//! forever. A queue that is gone or denied is reported (`problem`), and read again with backoff.

use super::events::{self, Event};
use crate::metrics::Metrics;
use crate::provider::aws::calls::errors::classify;
use crate::provider::aws::state::poller::{Noted, Notices};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SQS's longest long poll.
const WAIT_SECONDS: i32 = 20;
/// SQS's largest batch.
const BATCH: i32 = 10;
/// After a failed call: 1 s, doubling, at most a minute.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The consumer; it reads from `start` on and stops when dropped.
pub struct InterruptionQueue {
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    reader: Arc<Reader>,
}

impl InterruptionQueue {
    /// A consumer of `queue` (a queue URL, or a name looked up once) for the provider of
    /// `region`, not reading yet.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue: String,
        region: String,
        notices: Notices,
        provider: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reader = Arc::new(Reader { sqs, queue, region, notices, provider, metrics, problem: Mutex::default() });
        Self { task: std::sync::OnceLock::new(), reader }
    }

    /// Starts reading, once. Called when the provider first serves a request: a standby replica
    /// never does, so it never takes (and deletes) the leader's messages. Needs a Tokio runtime.
    pub fn start(&self) {
        self.task.get_or_init(|| tokio::spawn(self.reader.clone().run()).abort_handle());
    }

    /// Why the queue cannot be read right now, if it cannot: spot warnings are not received.
    pub fn problem(&self) -> Option<String> {
        self.reader.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for InterruptionQueue {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Waits `backoff` after a failed call, and doubles it for the next (at most `MAX_BACKOFF`).
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

struct Reader {
    sqs: aws_sdk_sqs::Client,
    queue: String,
    region: String,
    notices: Notices,
    provider: String,
    metrics: Arc<Metrics>,
    problem: Mutex<Option<String>>,
}

impl Reader {
    async fn run(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        let url = loop {
            match self.url().await {
                Ok(url) => break url,
                Err(problem) => {
                    self.failing(problem);
                    back_off(&mut backoff).await;
                }
            }
        };
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(BATCH)
                .wait_time_seconds(WAIT_SECONDS)
                .send()
                .await;
            match received {
                Ok(out) => {
                    self.working(&url);
                    backoff = FIRST_BACKOFF;
                    let mut read = vec![];
                    for message in out.messages() {
                        self.handle(message.body().unwrap_or_default());
                        read.extend(message.receipt_handle().map(str::to_string));
                    }
                    self.delete(&url, read).await;
                }
                Err(error) => {
                    self.failing(format!("interruption queue {url}: {}", classify("ReceiveMessage", error)));
                    back_off(&mut backoff).await;
                }
            }
        }
    }

    /// The queue's URL: as given, or looked up by its name.
    async fn url(&self) -> Result<String, String> {
        if self.queue.starts_with("https://") || self.queue.starts_with("http://") {
            return Ok(self.queue.clone());
        }
        let found = self.sqs.get_queue_url().queue_name(&self.queue).send().await;
        let found = found.map_err(|e| format!("interruption queue {}: {}", self.queue, classify("GetQueueUrl", e)))?;
        found.queue_url().map(str::to_string).ok_or_else(|| format!("interruption queue {}: no URL", self.queue))
    }

    /// Acts on one message's events, and counts them.
    fn handle(&self, body: &str) {
        let count = |kind: &str, outcome: &str| self.metrics.queue_message(&self.provider, kind, outcome);
        let message = match events::parse(body) {
            Ok(message) => message,
            Err(why) => {
                tracing::warn!(provider = %self.provider, %why, "interruption queue: not an EventBridge event; deleted");
                return count("malformed", "malformed");
            }
        };
        if message.region.as_deref().is_some_and(|r| r != self.region) {
            tracing::debug!(provider = %self.provider, region = ?message.region, "interruption queue: an event of another region; deleted");
            return count(message.kind, "foreign");
        }
        if message.events.is_empty() {
            return count(message.kind, "ignored");
        }
        for event in message.events {
            let (noted, id) = match &event {
                Event::Notice { instance_id, notice, action } => {
                    let noted = self.notices.notice(instance_id, notice.clone());
                    if noted == Noted::Applied {
                        tracing::info!(provider = %self.provider, instance = %instance_id, notice = notice.kind.as_str(), deadline = ?notice.deadline.as_ref().map(|t| t.0), action = ?action, "notice received");
                    }
                    (noted, instance_id)
                }
                Event::StateChange { instance_id, state } => {
                    let noted = self.notices.state_changed(instance_id);
                    if noted == Noted::Applied {
                        tracing::debug!(provider = %self.provider, instance = %instance_id, %state, "state change received; refreshing");
                    }
                    (noted, instance_id)
                }
            };
            if noted == Noted::Unknown {
                tracing::debug!(provider = %self.provider, instance = %id, "interruption queue: not a machine of this cluster; deleted");
            }
            count(message.kind, if noted == Noted::Applied { "applied" } else { "unknown" });
        }
    }

    /// Deletes what was read, in one call. A message whose deletion fails comes back after the
    /// queue's visibility timeout and is handled again: every act is idempotent.
    async fn delete(&self, url: &str, handles: Vec<String>) {
        if handles.is_empty() {
            return;
        }
        let entries: Vec<_> = handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        match self.sqs.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await {
            Ok(out) if out.failed().is_empty() => {}
            Ok(out) => {
                let first = &out.failed()[0];
                tracing::warn!(provider = %self.provider, failed = out.failed().len(), code = first.code(), message = ?first.message(), "interruption queue: messages not deleted; they come back and are handled again");
            }
            Err(error) => {
                let error = classify("DeleteMessageBatch", error);
                tracing::warn!(provider = %self.provider, %error, "interruption queue: messages not deleted; they come back and are handled again");
            }
        }
    }

    fn failing(&self, problem: String) {
        let mut current = self.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_deref() != Some(problem.as_str()) {
            tracing::warn!(provider = %self.provider, %problem, "interruption queue unreadable: spot warnings and scheduled changes are not received; retrying");
            *current = Some(problem);
        }
    }

    fn working(&self, url: &str) {
        let mut current = self.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.take().is_some() {
            tracing::info!(provider = %self.provider, queue = %url, "interruption queue readable again");
        }
    }
}
