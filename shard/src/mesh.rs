//! The shard mesh: a full mesh of bounded SPSC channels between the shards
//! of a node (glommio's `channel_mesh`), carrying typed `ShardMsg`s. Record
//! batches travel as `Bytes` (no copy); every request carries a oneshot
//! sender for its answer (a `futures` oneshot is `Send` and wakes the
//! requesting executor).
//!
//! glommio numbers mesh peers by executor id, not by shard id, so after
//! joining every shard sends `Hello { shard_id }` to every peer; a shard is
//! ready once it heard from all of them.
//!
//! Inbox handlers only do local work and answer on oneshots: they never send
//! on the mesh themselves, so full channels cannot deadlock two shards.
//! Bound: `SHARD_INBOX_MESSAGES_MAX` messages per channel; a sender waits
//! (in its own task) while the channel is full, and the waits are counted.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;

use crate::waiters::WaitSlot;
use crate::{
    FetchPartition, FetchPartitionResult, ListOffsetsPartition, ListOffsetsResult,
    ProducePartition, ProducePartitionResult, ShardError,
};

/// Messages per channel between two shards.
pub const SHARD_INBOX_MESSAGES_MAX: usize = 1024;

/// The mesh of one node. Built once in main before the shard threads start;
/// each shard thread gets a clone and passes it to `Shard::start`.
#[derive(Clone)]
pub struct ShardMesh {
    builder: MeshBuilder<ShardMsg, Full>,
    shards: u32,
}

impl ShardMesh {
    pub fn shards(&self) -> u32 {
        self.shards
    }
}

/// Creates the mesh for `shards` shards (>= 1).
pub fn new_mesh(shards: u32) -> ShardMesh {
    assert!(shards >= 1, "a node has at least one shard");
    ShardMesh {
        builder: MeshBuilder::full(shards as usize, SHARD_INBOX_MESSAGES_MAX),
        shards,
    }
}

/// Identifies one fetch across shards, so its origin can cancel the waits of
/// the other owners once it has enough data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FetchKey {
    pub origin: u32,
    pub seq: u64,
}

/// The part of a fetch served by one owner shard.
#[derive(Clone, Debug)]
pub struct OwnerFetch {
    pub partitions: Vec<FetchPartition>,
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    /// 0 read_uncommitted, 1 read_committed (`FetchRequest`).
    pub isolation_level: i8,
    /// The follower node of a replica fetch.
    pub replica_id: Option<u64>,
}

/// A request from one shard to another.
pub enum ShardMsg {
    Hello {
        shard_id: u32,
    },
    Produce {
        req: ProducePartition,
        reply: oneshot::Sender<ProducePartitionResult>,
    },
    Fetch {
        key: FetchKey,
        req: OwnerFetch,
        reply: oneshot::Sender<Vec<FetchPartitionResult>>,
    },
    CancelFetch {
        key: FetchKey,
    },
    ListOffsets {
        req: ListOffsetsPartition,
        reply: oneshot::Sender<ListOffsetsResult>,
    },
    DeleteRecords {
        req: crate::DeleteRecordsPartition,
        reply: oneshot::Sender<crate::DeleteRecordsResult>,
    },
    /// OffsetForLeaderEpoch on the owning shard.
    EndOffsetForEpoch {
        topic: std::sync::Arc<sluice_raft::TopicMeta>,
        partition: i32,
        epoch: i32,
        reply: oneshot::Sender<Result<(i32, i64), ShardError>>,
    },
    /// Answer (with the applied version) once metadata `version` is applied.
    AwaitVersion {
        version: u64,
        reply: oneshot::Sender<u64>,
    },
    /// The partitions the receiving shard holds, with their sizes.
    PartitionDisk {
        reply: oneshot::Sender<Vec<crate::stats::PartitionDisk>>,
    },
    /// A request for the group coordinator on the receiving shard.
    Group {
        req: crate::group::GroupRequest,
        reply: crate::group::GroupReply,
    },
    /// A request for the transaction coordinator on the receiving shard.
    Txn {
        req: crate::txn::TxnRequest,
        reply: crate::txn::TxnReply,
    },
}

/// This shard's end of the mesh.
pub(crate) struct Peers {
    senders: Senders<ShardMsg>,
    shards: u32,
    /// Mesh peer index of each shard id, learnt from `Hello`s.
    peer_of_shard: RefCell<Vec<Option<usize>>>,
    hellos: Cell<u32>,
    pub ready: Rc<WaitSlot>,
    pub sent: Cell<u64>,
    /// Sends that found the channel full and had to wait.
    pub full_waits: Cell<u64>,
}

pub(crate) type Inbox = (usize, ConnectedReceiver<ShardMsg>);

impl Peers {
    /// Joins the mesh (waits until every shard has joined).
    pub async fn join(mesh: ShardMesh) -> Result<(Peers, Vec<Inbox>), ShardError> {
        let shards = mesh.shards;
        let (senders, mut receivers) = mesh
            .builder
            .join()
            .await
            .map_err(|e| ShardError::Storage(format!("joining the shard mesh: {e}")))?;
        let inboxes = receivers.streams();
        let peers = Peers {
            senders,
            shards,
            peer_of_shard: RefCell::new(vec![None; shards as usize]),
            hellos: Cell::new(0),
            ready: WaitSlot::new(),
            sent: Cell::new(0),
            full_waits: Cell::new(0),
        };
        Ok((peers, inboxes))
    }

    /// Tells every peer which shard this is.
    pub async fn say_hello(&self, shard_id: u32) -> Result<(), ShardError> {
        let me = self.senders.peer_id();
        for idx in (0..self.senders.nr_consumers()).filter(|&i| i != me) {
            self.senders
                .send_to(idx, ShardMsg::Hello { shard_id })
                .await
                .map_err(|e| ShardError::Storage(format!("mesh hello to peer {idx}: {e}")))?;
        }
        Ok(())
    }

    /// A peer said which shard it is.
    pub fn hello(&self, peer: usize, shard_id: u32) {
        let mut map = self.peer_of_shard.borrow_mut();
        let Some(slot) = map.get_mut(shard_id as usize) else {
            tracing::warn!(
                peer,
                shard_id,
                "mesh hello from a shard id beyond the shard count, ignored"
            );
            return;
        };
        if slot.replace(peer).is_none() {
            self.hellos.set(self.hellos.get() + 1);
        }
        if self.is_ready() {
            self.ready.fire();
        }
    }

    pub fn is_ready(&self) -> bool {
        self.hellos.get() + 1 >= self.shards
    }

    /// The mesh peer index of `shard`, once it said hello.
    fn peer(&self, shard: u32) -> Option<usize> {
        self.peer_of_shard
            .borrow()
            .get(shard as usize)
            .copied()
            .flatten()
    }

    /// Sends `msg` to `shard` if its channel has room; false otherwise
    /// (for callers that cannot wait, such as a drop).
    pub fn try_send(&self, shard: u32, msg: ShardMsg) -> bool {
        let Some(peer) = self.peer(shard) else {
            return false;
        };
        let sent = self.senders.try_send_to(peer, msg).is_ok();
        if sent {
            self.sent.set(self.sent.get() + 1);
        }
        sent
    }

    /// Sends `msg` to `shard`, waiting while its channel is full.
    pub async fn send(&self, shard: u32, msg: ShardMsg) -> Result<(), ShardError> {
        let Some(peer) = self.peer(shard) else {
            return Err(ShardError::Storage(format!(
                "shard {shard} is not in the mesh"
            )));
        };
        self.sent.set(self.sent.get() + 1);
        let msg = match self.senders.try_send_to(peer, msg) {
            Ok(()) => return Ok(()),
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => msg,
            Err(_) => return Err(ShardError::ShuttingDown),
        };
        self.full_waits.set(self.full_waits.get() + 1);
        self.senders
            .send_to(peer, msg)
            .await
            .map_err(|_| ShardError::ShuttingDown)
    }

    pub fn close(&self) {
        self.senders.close();
    }
}
