//! Data exchange between subtasks: one bounded channel per (upstream subtask, downstream subtask) pair.
//!
//! A downstream subtask reads its channels through an [`InputGate`], which polls them fairly (round robin) and can
//! *block* a channel: a blocked channel is simply not polled, so its sender fills the bounded buffer and stops —
//! that is how barrier alignment holds back records after a barrier without buffering them (Flink's credit-based
//! alignment), and how backpressure reaches the sources. The gate also combines the channels' watermarks: the
//! minimum over channels that have not ended.
//!
//! An upstream subtask writes through [`Outputs`], one [`OutputEdge`] per outgoing edge, routing each record by the
//! edge's partitioning: `forward` to the same-index subtask, `rebalance` round robin, `hash` by the key group of the
//! downstream vertex's key field (see `partition.rs`). Watermarks, barriers and end of input go to every channel.
//!
//! Invariant: a channel closed without an [`StreamElement::EndOfInput`] means its sender died (failed or was
//! cancelled); the gate reports it as [`GateEvent::Closed`] and the subtask fails unless it is being cancelled.

use std::future::poll_fn;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::operators::{KeyCtx, OperatorError};
use super::partition::subtask_for_key_group;
use super::record::{describe_record, EndReason, Record, StreamElement};
use crate::jobgraph::Partitioning;

/// Capacity of each channel, in elements: enough to keep both sides busy, small enough to bound memory and make
/// backpressure and barrier alignment quick.
pub const CHANNEL_CAPACITY: usize = 256;

/// One input channel as the gate sees it.
#[derive(Debug)]
struct InputChannel {
    /// The receiving end.
    rx: mpsc::Receiver<StreamElement>,
    /// Not polled while set (barrier alignment).
    blocked: bool,
    /// Set once the channel delivered end of input.
    ended: Option<EndReason>,
    /// The last watermark received on it.
    watermark: i64,
}

/// What the gate delivered.
#[derive(Debug)]
pub enum GateEvent {
    /// An element from channel `.0`.
    Element(usize, StreamElement),
    /// Channel `.0` closed without end of input: its sender died.
    Closed(usize),
    /// Every channel has ended; the reasons combined.
    AllEnded(EndReason),
}

/// The input channels of one subtask.
#[derive(Debug)]
pub struct InputGate {
    /// The channels, in input-edge then upstream-subtask order.
    channels: Vec<InputChannel>,
    /// Where the next round-robin poll starts.
    next: usize,
    /// The combined watermark last reported.
    combined: i64,
}

impl InputGate {
    /// A gate over `receivers`; every channel starts at `watermark`.
    pub fn new(receivers: Vec<mpsc::Receiver<StreamElement>>, watermark: Option<i64>) -> Self {
        let watermark = watermark.unwrap_or(i64::MIN);
        let channels =
            receivers.into_iter().map(|rx| InputChannel { rx, blocked: false, ended: None, watermark }).collect();
        InputGate { channels, next: 0, combined: watermark }
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// The next element of any unblocked channel. Cancel safe.
    pub async fn next(&mut self) -> GateEvent {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls the unblocked, live channels round robin from `next`.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<GateEvent> {
        if let Some(reason) = self.all_ended() {
            return Poll::Ready(GateEvent::AllEnded(reason));
        }
        let n = self.channels.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            let channel = &mut self.channels[i];
            if channel.blocked || channel.ended.is_some() {
                continue;
            }
            match channel.rx.poll_recv(cx) {
                Poll::Ready(Some(element)) => {
                    self.next = (i + 1) % n;
                    if let StreamElement::EndOfInput(reason) = element {
                        channel.ended = Some(reason);
                    }
                    return Poll::Ready(GateEvent::Element(i, element));
                }
                Poll::Ready(None) => return Poll::Ready(GateEvent::Closed(i)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// The combined reason if every channel has ended.
    fn all_ended(&self) -> Option<EndReason> {
        self.channels.iter().try_fold(EndReason::Drained, |acc, c| c.ended.map(|r| acc.combine(r)))
    }

    /// Whether channel `i` has ended.
    pub fn is_ended(&self, i: usize) -> bool {
        self.channels.get(i).is_some_and(|c| c.ended.is_some())
    }

    /// Stops reading channel `i` until [`InputGate::unblock_all`].
    pub fn block(&mut self, i: usize) {
        if let Some(c) = self.channels.get_mut(i) {
            c.blocked = true;
        }
    }

    /// Resumes reading every channel.
    pub fn unblock_all(&mut self) {
        for c in &mut self.channels {
            c.blocked = false;
        }
    }

    /// Records a watermark from channel `i`; returns the combined watermark if it advanced.
    pub fn on_watermark(&mut self, i: usize, watermark: i64) -> Option<i64> {
        if let Some(c) = self.channels.get_mut(i) {
            c.watermark = c.watermark.max(watermark);
        }
        self.recombine()
    }

    /// Recomputes the combined watermark (after a watermark or an end); returns it if it advanced.
    pub fn recombine(&mut self) -> Option<i64> {
        let live = self.channels.iter().filter(|c| c.ended.is_none()).map(|c| c.watermark).min();
        // When every channel has ended, event time is complete only if drained; the subtask handles that.
        let combined = live?;
        if combined > self.combined {
            self.combined = combined;
            Some(combined)
        } else {
            None
        }
    }

    /// The combined watermark, if any was received.
    pub fn watermark(&self) -> Option<i64> {
        (self.combined > i64::MIN).then_some(self.combined)
    }
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A record could not be routed.
    #[error(transparent)]
    Route(#[from] OperatorError),
    /// The receiving subtask is gone.
    #[error("downstream subtask {subtask} of vertex `{vertex}` is gone")]
    Gone {
        /// The downstream vertex id.
        vertex: String,
        /// The downstream subtask.
        subtask: u32,
    },
}

/// The channels of one outgoing edge of one subtask.
#[derive(Debug)]
pub struct OutputEdge {
    /// The downstream vertex id (for errors).
    pub target_vertex: String,
    /// How records are routed.
    pub partitioning: Partitioning,
    /// One sender per downstream subtask, or a single one for `forward`.
    pub senders: Vec<mpsc::Sender<StreamElement>>,
    /// The downstream vertex's key field (for `hash`).
    pub key_field: Option<String>,
    /// The downstream vertex's max parallelism (for `hash`).
    pub max_parallelism: u32,
    /// Next round-robin target (for `rebalance`).
    pub round_robin: usize,
    /// The downstream subtask index of `senders[0]` when forwarding.
    pub forward_index: u32,
}

impl OutputEdge {
    /// The index into `senders` for `record`.
    fn route(&mut self, record: &Record) -> Result<usize, OperatorError> {
        Ok(match self.partitioning {
            Partitioning::Forward => 0,
            Partitioning::Rebalance => {
                let target = self.round_robin % self.senders.len().max(1);
                self.round_robin = target + 1;
                target
            }
            Partitioning::Hash => {
                let field = self.key_field.as_deref().unwrap_or_default();
                let key = record.get(field).cloned().ok_or_else(|| OperatorError::MissingKey {
                    field: field.to_string(),
                    record: describe_record(record),
                })?;
                let group = KeyCtx::new(key, self.max_parallelism).group;
                subtask_for_key_group(self.max_parallelism, self.senders.len() as u32, group) as usize
            }
        })
    }

    /// The downstream subtask behind `senders[i]`.
    fn subtask_of(&self, i: usize) -> u32 {
        match self.partitioning {
            Partitioning::Forward => self.forward_index,
            _ => i as u32,
        }
    }

    /// Sends to `senders[i]`.
    async fn send(&self, i: usize, element: StreamElement) -> Result<(), SendError> {
        let gone = || SendError::Gone { vertex: self.target_vertex.clone(), subtask: self.subtask_of(i) };
        let sender = self.senders.get(i).ok_or_else(gone)?;
        sender.send(element).await.map_err(|_| gone())
    }
}

/// All outgoing edges of one subtask.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The edges.
    pub edges: Vec<OutputEdge>,
}

impl Outputs {
    /// Whether there is nowhere to send (a sink vertex).
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Routes a record to one channel of every edge. Waits while a channel is full (backpressure).
    pub async fn send_record(&mut self, record: Record) -> Result<(), SendError> {
        let last = self.edges.len().saturating_sub(1);
        let mut record = Some(record);
        for i in 0..self.edges.len() {
            let r = if i == last { record.take().unwrap_or_default() } else { record.clone().unwrap_or_default() };
            let target = self.edges[i].route(&r)?;
            self.edges[i].send(target, StreamElement::Record(r)).await?;
        }
        Ok(())
    }

    /// Sends a watermark, barrier or end of input to every channel.
    pub async fn broadcast(&self, element: StreamElement) -> Result<(), SendError> {
        for edge in &self.edges {
            for i in 0..edge.senders.len() {
                edge.send(i, element.clone()).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_blocks_combines_watermarks_and_ends() {
        let (tx0, rx0) = mpsc::channel(4);
        let (tx1, rx1) = mpsc::channel(4);
        let mut gate = InputGate::new(vec![rx0, rx1], None);
        tx0.send(StreamElement::Watermark(5)).await.unwrap();
        tx0.send(StreamElement::Watermark(9)).await.unwrap();
        tx1.send(StreamElement::Watermark(7)).await.unwrap();
        let mut combined = Vec::new();
        for _ in 0..3 {
            let GateEvent::Element(i, StreamElement::Watermark(w)) = gate.next().await else { panic!() };
            combined.extend(gate.on_watermark(i, w));
        }
        assert_eq!(combined, vec![5, 7]);

        gate.block(0);
        tx0.send(StreamElement::Watermark(20)).await.unwrap();
        tx1.send(StreamElement::EndOfInput(EndReason::Drained)).await.unwrap();
        assert!(matches!(gate.next().await, GateEvent::Element(1, StreamElement::EndOfInput(_))));
        assert_eq!(gate.recombine(), Some(9), "ended channels do not hold the watermark back");
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), gate.next()).await;
        assert!(pending.is_err(), "blocked channel must not be read");
        gate.unblock_all();
        assert!(matches!(gate.next().await, GateEvent::Element(0, StreamElement::Watermark(20))));
        drop(tx0);
        assert!(matches!(gate.next().await, GateEvent::Closed(0)));
    }

    #[tokio::test]
    async fn hash_routes_by_key_group() {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::channel(16)).unzip();
        let mut outputs = Outputs {
            edges: vec![OutputEdge {
                target_vertex: "down".into(),
                partitioning: Partitioning::Hash,
                senders: txs,
                key_field: Some("k".into()),
                max_parallelism: 128,
                round_robin: 0,
                forward_index: 0,
            }],
        };
        for k in 0..10 {
            let record = serde_json::json!({"k": k}).as_object().cloned().unwrap();
            outputs.send_record(record).await.unwrap();
        }
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(StreamElement::Record(r)) = rx.try_recv() {
                let group = KeyCtx::new(r["k"].clone(), 128).group;
                assert_eq!(subtask_for_key_group(128, 3, group), i as u32);
            }
        }
        let missing = serde_json::json!({"x": 1}).as_object().cloned().unwrap();
        assert!(matches!(outputs.send_record(missing).await, Err(SendError::Route(OperatorError::MissingKey { .. }))));
    }
}
