//! How many instance ids one DescribeInstances names. EC2 takes 1000, and answers that quickly;
//! but an answer naming a thousand instances is large, and where the service is slow to build
//! it (a struggling region, an emulator with thousands of machines) it can outlast the
//! attempt's time again and again — and a poller that sends the same call every cycle then
//! never refreshes anything. A call that got no answer in time is sent again as two halves
//! (down to one id), and the smaller size is kept for `HOLD` before going back to 1000.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a size learnt from a timeout is kept.
const HOLD: Duration = Duration::from_secs(10 * 60);

/// The ids per call, shared by every describe of one provider.
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
        let mut shrunk = self.shrunk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *shrunk {
            Some((size, until)) if Instant::now() < until => size,
            _ => {
                *shrunk = None;
                self.most
            }
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
}
