//! The published state as the public side serves it: serialised once per change, with the id
//! that `/events` sends and `status.json`'s `ETag` is made of.
//!
//! The driver only replaces the value of a `watch` (O(1), whoever watches). One task here
//! turns each new state into a [`Snapshot`] on a second `watch`; every `/events` stream and
//! every `status.json` request reads that `Arc`, so fan-out costs the driver nothing and a slow
//! reader can only ever miss intermediate states, never queue them.

use crate::state::StateDoc;
use std::sync::Arc;
use tokio::sync::watch;

/// One published state, serialised.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `<start>-<sequence>`: unique for this run of the bridge and across restarts (the start
    /// part is random), so a `Last-Event-ID` from before a restart never matches.
    pub id: String,
    /// The state document as `status.json` serves it.
    pub json: String,
}

impl Snapshot {
    /// The strong `ETag` of [`Snapshot::json`].
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.id)
    }
}

/// The latest [`Snapshot`], `None` before the first state.
pub type Feed = watch::Receiver<Option<Arc<Snapshot>>>;

/// Starts following `state`: returns the feed and the task that fills it (it ends when the
/// driver's sender is dropped).
pub fn follow(
    mut state: watch::Receiver<Option<StateDoc>>,
) -> (Feed, impl std::future::Future<Output = ()>) {
    let start = fastrand::u32(..);
    let first = snapshot(start, 0, state.borrow_and_update().as_ref());
    let (tx, rx) = watch::channel(first);
    let task = async move {
        let mut seq: u64 = 0;
        while state.changed().await.is_ok() {
            seq += 1;
            let next = snapshot(start, seq, state.borrow_and_update().as_ref());
            tx.send_replace(next);
        }
    };
    (rx, task)
}

fn snapshot(start: u32, seq: u64, doc: Option<&StateDoc>) -> Option<Arc<Snapshot>> {
    doc.map(|doc| {
        Arc::new(Snapshot {
            id: format!("{start:08x}-{seq}"),
            json: doc.to_json(),
        })
    })
}
