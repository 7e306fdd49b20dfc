//! Shard stats on request, for the admin thread.
//!
//! The admin thread ("sluice-admin", tokio) owns one `ProbeClient` with a
//! bounded channel to each shard; each shard runs one probe task (glommio)
//! parked on its receiver. A request wakes the shard's executor, the task
//! answers with a `ShardProbe` snapshot on a oneshot. Nothing is published
//! periodically and no lock is shared with the shards: an idle node gets no
//! wake-ups from this path.

use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::connection::{Rejected, TimedOut};
use crate::plane::{Shard, ShardStats};
use crate::server::Connections;

/// Stats requests queued per shard; a scrape finding the queue full skips
/// the shard (and says so) rather than waiting.
pub const PROBE_REQUESTS_MAX: usize = 4;
/// How long the admin thread waits for one shard's answer.
const PROBE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's answer.
#[derive(Debug)]
pub struct ShardProbe {
    pub stats: ShardStats,
    /// Open Kafka connections of the shard.
    pub connections: u64,
    /// Connections closed at accept for `--connections-per-shard-max`.
    pub connections_refused: u64,
    /// Requests refused by closing their connection, by reason.
    pub requests_rejected: Vec<(&'static str, u64)>,
    /// Connections closed for a deadline, by reason.
    pub connections_timed_out: Vec<(&'static str, u64)>,
    /// SASL authentications: ("succeeded", n), ("failed", n).
    pub sasl_authentications: Vec<(&'static str, u64)>,
    pub tls_handshakes_failed: u64,
}

/// A request for one snapshot.
pub struct ProbeRequest {
    reply: oneshot::Sender<ShardProbe>,
}

/// The admin thread's side: one sender per shard, in shard order.
#[derive(Clone)]
pub struct ProbeClient {
    shards: Vec<mpsc::Sender<ProbeRequest>>,
}

/// The shard's side, moved into its executor thread.
pub struct ProbeServer {
    rx: mpsc::Receiver<ProbeRequest>,
}

/// Channels for `shards` shards.
pub fn channels(shards: u32) -> (ProbeClient, Vec<ProbeServer>) {
    let (senders, servers) = (0..shards)
        .map(|_| {
            let (tx, rx) = mpsc::channel(PROBE_REQUESTS_MAX);
            (tx, ProbeServer { rx })
        })
        .unzip();
    (ProbeClient { shards: senders }, servers)
}

impl ProbeServer {
    /// Answers requests until the admin side is gone. Runs as one task on
    /// the shard's executor.
    pub async fn run(mut self, shard: Rc<Shard>, connections: Rc<Connections>) {
        while let Some(req) = self.rx.recv().await {
            let probe = ShardProbe {
                stats: shard.stats(),
                connections: connections.open(),
                connections_refused: connections.refused(),
                requests_rejected: Rejected::ALL
                    .iter()
                    .map(|&r| (r.label(), connections.closes.rejected(r)))
                    .collect(),
                connections_timed_out: TimedOut::ALL
                    .iter()
                    .map(|&t| (t.label(), connections.closes.timed_out(t)))
                    .collect(),
                sasl_authentications: {
                    let (succeeded, failed) = crate::handlers::sasl::authentications();
                    vec![("succeeded", succeeded), ("failed", failed)]
                },
                tls_handshakes_failed: connections.tls_failed.get(),
            };
            // The scrape may have timed out and gone; nothing to do then.
            let _ = req.reply.send(probe);
        }
    }
}

impl ProbeClient {
    /// Snapshots of every shard that answered in time, in shard order.
    /// `Err(shard)` marks a shard that did not.
    pub async fn collect(&self) -> Vec<Result<ShardProbe, u32>> {
        let asks = self.shards.iter().enumerate().map(|(id, tx)| async move {
            let id = id as u32;
            let (reply, rx) = oneshot::channel();
            tx.try_send(ProbeRequest { reply }).map_err(|_| id)?;
            match tokio::time::timeout(PROBE_REPLY_TIMEOUT, rx).await {
                Ok(Ok(probe)) => Ok(probe),
                _ => Err(id),
            }
        });
        futures::future::join_all(asks).await
    }
}
