//! One subtask: its operator chain run on one tokio task, from DEPLOYING to a terminal state.
//!
//! The loop reads either its source (a source subtask) or its [`InputGate`], pushes records through the chain's
//! transforms, and hands the output to the sink or the output channels. Between elements it serves control
//! messages from the [`Deployment`](super::Deployment): barrier injection (sources only), checkpoint completion
//! (sinks commit; a source stopped by stop-with-savepoint finishes) and abortion.
//!
//! Checkpoints (aligned, exactly once): a barrier arriving on one channel blocks that channel until the same
//! barrier has arrived on every channel that has not ended. Then the subtask snapshots its operators (the file sink
//! closes its part file as pending), writes its state file, acknowledges, forwards the barrier and unblocks. A
//! barrier with a higher id aborts an older alignment (declining the older checkpoint); an older barrier arriving
//! later is ignored. A source snapshots its position and forwards the barrier between two records.
//!
//! Finished subtasks still take part in checkpoints: at the end a subtask records its final snapshot in the
//! deployment's checkpoint book, and every later (or concurrently triggered) checkpoint gets a state file written
//! from it, so a restore never replays a finished source (Flink ≥ 1.14's checkpoints after tasks finished).
//!
//! Failure: an error fails the subtask (FAILED with the message) and cancels the rest of the deployment, whose
//! subtasks report CANCELED; the JobMaster restarts the job as a whole. A subtask seeing an input close without
//! end of input while the deployment is being cancelled reports CANCELED, not a second failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::channel::{GateEvent, InputGate, Outputs, SendError};
use super::operators::{OperatorError, TransformError, Transforms};
use super::record::{EndReason, Record, StreamElement};
use super::sinks::Sink;
use super::sources::{Source, SourcePoll};
use super::state::{
    barrier_dir, write_snapshot, OperatorSnapshot, OperatorState, RestoredSubtask, SubtaskSnapshot,
    STATE_FORMAT_VERSION,
};
use super::{Barrier, BarrierKind, RuntimeError, TaskEvent, TaskState};

/// A message from the deployment to one subtask.
#[derive(Debug, Clone)]
pub enum Control {
    /// Inject this barrier (sources only).
    Trigger(Arc<Barrier>),
    /// This checkpoint (and every earlier one) completed.
    Complete(u64),
    /// This checkpoint was aborted.
    Aborted(u64),
}

/// Capacity of a subtask's control queue.
pub const CONTROL_CAPACITY: usize = 64;

/// What the deployment knows about checkpoints, under one lock so that a subtask finishing and a checkpoint being
/// triggered never both or neither acknowledge for it.
#[derive(Debug, Default)]
pub struct CheckpointBook {
    /// The latest triggered barrier.
    pub latest: Option<Arc<Barrier>>,
    /// Final snapshots of finished subtasks, by subtask index in the deployment.
    pub finished: BTreeMap<usize, Arc<SubtaskSnapshot>>,
}

/// Deployment-wide state shared by its subtasks.
#[derive(Debug)]
pub struct DeploymentShared {
    /// The job.
    pub job_id: String,
    /// The deployment attempt.
    pub attempt: u32,
    /// Where checkpoint N's state goes: `checkpoint_dir/chk-N`.
    pub checkpoint_dir: std::path::PathBuf,
    /// Where events go.
    pub events: mpsc::Sender<TaskEvent>,
    /// Set to true to cancel every subtask.
    pub cancel: watch::Sender<bool>,
    /// Number of subtasks in a terminal state.
    pub terminal: watch::Sender<usize>,
    /// Checkpoint bookkeeping for finished subtasks.
    pub book: Mutex<CheckpointBook>,
}

impl DeploymentShared {
    /// Sends an event; a dropped receiver is ignored (nobody is listening any more).
    pub async fn emit(&self, event: TaskEvent) {
        let _ = self.events.send(event).await;
    }

    /// Whether the deployment is being cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Locks the book; a poisoned lock is still usable (the book is always consistent between statements).
    pub fn book(&self) -> std::sync::MutexGuard<'_, CheckpointBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `snapshot` as the state of `barrier` and acknowledges it, or declines on failure.
    pub async fn write_and_ack(&self, cell: &SubtaskCell, barrier: &Barrier, mut snapshot: SubtaskSnapshot) {
        snapshot.checkpoint_id = barrier.checkpoint_id;
        let dir = barrier_dir(&self.checkpoint_dir, barrier);
        let written = crate::blocking::run(move || write_snapshot(&dir, &snapshot)).await;
        let (vertex, subtask, checkpoint_id) = (cell.vertex.clone(), cell.subtask, barrier.checkpoint_id);
        let (job_id, attempt) = (self.job_id.clone(), self.attempt);
        let event = match written {
            Ok(Ok((path, state_size))) => {
                cell.last_acked.fetch_max(checkpoint_id, Ordering::AcqRel);
                let handle = path.to_string_lossy().into_owned();
                TaskEvent::CheckpointAcked { job_id, attempt, checkpoint_id, vertex, subtask, handle, state_size }
            }
            Ok(Err(e)) => {
                let reason = format!("writing the state file failed: {e}");
                TaskEvent::CheckpointDeclined { job_id, attempt, checkpoint_id, vertex, subtask, reason }
            }
            Err(e) => {
                let reason = format!("the state writer failed: {e}");
                TaskEvent::CheckpointDeclined { job_id, attempt, checkpoint_id, vertex, subtask, reason }
            }
        };
        self.emit(event).await;
    }
}

/// A subtask's identity and live counters, read by `Deployment::status`.
#[derive(Debug)]
pub struct SubtaskCell {
    /// The vertex id.
    pub vertex: String,
    /// The subtask index.
    pub subtask: u32,
    /// Whether it runs a source.
    pub is_source: bool,
    /// Its [`TaskState`] as a number.
    state: AtomicU8,
    /// Records that entered the chain.
    pub records_in: AtomicU64,
    /// Records that left the chain (sent downstream or written by the sink).
    pub records_out: AtomicU64,
    /// Time spent processing, in microseconds.
    pub busy_us: AtomicU64,
    /// Late records dropped by windows.
    pub late_dropped: Arc<AtomicU64>,
    /// Highest checkpoint acknowledged.
    pub last_acked: AtomicU64,
}

impl SubtaskCell {
    /// A cell in state CREATED.
    pub fn new(vertex: String, subtask: u32, is_source: bool) -> Self {
        SubtaskCell {
            vertex,
            subtask,
            is_source,
            state: AtomicU8::new(TaskState::Created as u8),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            late_dropped: Arc::new(AtomicU64::new(0)),
            last_acked: AtomicU64::new(0),
        }
    }

    /// The current state.
    pub fn state(&self) -> TaskState {
        TaskState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state.
    pub fn set_state(&self, state: TaskState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Moves to CANCELING unless already terminal.
    pub fn mark_canceling(&self) {
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (!TaskState::from_u8(s).is_terminal()).then_some(TaskState::Canceling as u8)
        });
    }

    /// Adds processing time.
    fn add_busy(&self, since: Instant) {
        self.busy_us.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// A barrier alignment in progress.
#[derive(Debug)]
struct Alignment {
    /// The barrier being aligned.
    barrier: Arc<Barrier>,
    /// Per channel: whether the barrier arrived on it.
    arrived: Vec<bool>,
}

/// One subtask, ready to run.
#[derive(Debug)]
pub struct Subtask {
    /// Deployment-wide state.
    pub shared: Arc<DeploymentShared>,
    /// This subtask's identity and counters.
    pub cell: Arc<SubtaskCell>,
    /// Index in the deployment (vertex then subtask order).
    pub index: usize,
    /// The vertex's parallelism.
    pub parallelism: u32,
    /// The vertex's max parallelism.
    pub max_parallelism: u32,
    /// The chain's operator names, in order (for snapshots and errors).
    pub operator_names: Vec<&'static str>,
    /// The source, if the chain starts with one.
    pub source: Option<Source>,
    /// The transforms.
    pub transforms: Transforms,
    /// The sink, if the chain ends with one.
    pub sink: Option<Sink>,
    /// State to restore, consumed while initializing.
    pub restored: Option<RestoredSubtask>,
    /// The input channels (none for a source).
    pub inputs: InputGate,
    /// Control messages from the deployment.
    pub control: mpsc::Receiver<Control>,
    /// Whether the control queue is still open.
    control_open: bool,
    /// The alignment in progress.
    alignment: Option<Alignment>,
    /// Highest barrier id started (aligned or injected).
    last_barrier: u64,
    /// Set when a stop-with-savepoint barrier went through this source: it emits nothing until that savepoint
    /// completes (then it ends) or is aborted (then it resumes).
    stopped_for: Option<u64>,
    /// Set when the source should end.
    end: Option<EndReason>,
    /// Highest watermark forwarded downstream.
    forwarded_watermark: i64,
    /// Reused output buffer of the chain.
    buffer: Vec<Record>,
}

impl Subtask {
    /// Assembles a subtask.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<DeploymentShared>,
        cell: Arc<SubtaskCell>,
        index: usize,
        (parallelism, max_parallelism): (u32, u32),
        operator_names: Vec<&'static str>,
        (source, transforms, sink): (Option<Source>, Transforms, Option<Sink>),
        restored: Option<RestoredSubtask>,
        inputs: InputGate,
        control: mpsc::Receiver<Control>,
    ) -> Self {
        Subtask {
            shared,
            cell,
            index,
            parallelism,
            max_parallelism,
            operator_names,
            source,
            transforms,
            sink,
            restored,
            inputs,
            control,
            control_open: true,
            alignment: None,
            last_barrier: 0,
            stopped_for: None,
            end: None,
            forwarded_watermark: i64::MIN,
            buffer: Vec::new(),
        }
    }

    /// Runs the subtask to a terminal state, reporting every transition. Consumes the outputs last, so that on
    /// failure the deployment is cancelled before downstream subtasks see their inputs close.
    pub async fn run_to_end(mut self, mut outputs: Outputs) {
        self.report(TaskState::Deploying, None).await;
        let mut cancel = self.shared.cancel.subscribe();
        let result = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => Err(RuntimeError::Canceled),
            r = self.run(&mut outputs) => r,
        };
        match result {
            Ok(()) => self.report(TaskState::Finished, None).await,
            Err(RuntimeError::Canceled) => self.report(TaskState::Canceled, None).await,
            Err(e) => {
                tracing::warn!(vertex = %self.cell.vertex, subtask = self.cell.subtask, error = %e, "subtask failed");
                self.cell.set_state(TaskState::Failed);
                self.shared.cancel.send_replace(true);
                self.report(TaskState::Failed, Some(e.to_string())).await;
            }
        }
        drop(outputs);
        self.shared.terminal.send_modify(|n| *n += 1);
    }

    /// Sets the state and reports it.
    async fn report(&self, state: TaskState, error: Option<String>) {
        self.cell.set_state(state);
        self.shared
            .emit(TaskEvent::StateChanged {
                job_id: self.shared.job_id.clone(),
                attempt: self.shared.attempt,
                vertex: self.cell.vertex.clone(),
                subtask: self.cell.subtask,
                state,
                error,
            })
            .await;
    }

    /// INITIALIZING, RUNNING, then the main loop and the end.
    async fn run(&mut self, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        self.report(TaskState::Initializing, None).await;
        self.initialize().await?;
        self.report(TaskState::Running, None).await;
        let reason =
            if self.source.is_some() { self.run_source(outputs).await? } else { self.run_inputs(outputs).await? };
        self.finish(reason, outputs).await
    }

    /// Restores operator state and prepares the sink.
    async fn initialize(&mut self) -> Result<(), RuntimeError> {
        let restored = self.restored.take().unwrap_or_default();
        if let Some(watermark) = restored.input_watermark {
            self.transforms.set_input_watermark(watermark);
        }
        let mut states = restored.operators.into_iter();
        if let Some(source) = &mut self.source {
            if let Some(state) = states.next() {
                source.restore(state);
            }
        }
        self.transforms.restore(states.by_ref().take(self.transforms.ops.len()).collect());
        let sink_state = states.next();
        if let Some(sink) = &mut self.sink {
            let result = sink.initialize(sink_state).await;
            result.map_err(|e| self.sink_error(e))?;
        }
        Ok(())
    }

    /// The main loop of a source subtask.
    async fn run_source(&mut self, outputs: &mut Outputs) -> Result<EndReason, RuntimeError> {
        loop {
            while let Ok(control) = self.control.try_recv() {
                self.on_control(control, outputs).await?;
            }
            if let Some(reason) = self.end {
                return Ok(reason);
            }
            if self.stopped_for.is_some() {
                self.wait_for_control(None, outputs).await?;
                continue;
            }
            let Some(source) = self.source.as_mut() else { return Ok(EndReason::Drained) };
            let polled = source.poll().await.map_err(|e| self.operator_error(0, e))?;
            match polled {
                SourcePoll::Record(record) => {
                    self.cell.records_in.fetch_add(1, Ordering::Relaxed);
                    self.process_record(record, outputs).await?;
                }
                SourcePoll::WaitUntil(at) => self.wait_for_control(Some(at), outputs).await?,
                SourcePoll::Finished => return Ok(EndReason::Drained),
            }
        }
    }

    /// Waits for a control message, or until `until`.
    async fn wait_for_control(
        &mut self,
        until: Option<tokio::time::Instant>,
        outputs: &mut Outputs,
    ) -> Result<(), RuntimeError> {
        let sleep = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            control = self.control.recv(), if self.control_open => match control {
                Some(control) => self.on_control(control, outputs).await?,
                None => self.control_open = false,
            },
            _ = sleep => {}
        }
        Ok(())
    }

    /// The main loop of a subtask with inputs.
    async fn run_inputs(&mut self, outputs: &mut Outputs) -> Result<EndReason, RuntimeError> {
        loop {
            tokio::select! {
                biased;
                control = self.control.recv(), if self.control_open => match control {
                    Some(control) => self.on_control(control, outputs).await?,
                    None => self.control_open = false,
                },
                event = self.inputs.next() => match event {
                    GateEvent::Element(channel, element) => self.on_element(channel, element, outputs).await?,
                    GateEvent::AllEnded(reason) => return Ok(reason),
                    GateEvent::Closed(channel) => return Err(self.closed_input(channel)),
                },
            }
        }
    }

    /// The error for an input that closed without end of input.
    fn closed_input(&self, channel: usize) -> RuntimeError {
        if self.shared.is_cancelled() {
            return RuntimeError::Canceled;
        }
        RuntimeError::Exchange {
            vertex: self.cell.vertex.clone(),
            subtask: self.cell.subtask,
            reason: format!("input channel {channel} closed without end of input (its upstream subtask died)"),
        }
    }

    /// Handles one element from input channel `channel`.
    async fn on_element(
        &mut self,
        channel: usize,
        element: StreamElement,
        outputs: &mut Outputs,
    ) -> Result<(), RuntimeError> {
        match element {
            StreamElement::Record(record) => {
                self.cell.records_in.fetch_add(1, Ordering::Relaxed);
                self.process_record(record, outputs).await
            }
            StreamElement::Watermark(watermark) => match self.inputs.on_watermark(channel, watermark) {
                Some(combined) => self.on_input_watermark(combined, outputs).await,
                None => Ok(()),
            },
            StreamElement::Barrier(barrier) => self.on_barrier(channel, barrier, outputs).await,
            StreamElement::EndOfInput(_) => {
                if let Some(combined) = self.inputs.recombine() {
                    self.on_input_watermark(combined, outputs).await?;
                }
                self.check_alignment(outputs).await
            }
        }
    }

    /// Pushes a record through the chain and emits the result.
    async fn process_record(&mut self, record: Record, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.transforms.process(record, &mut buffer);
        self.cell.add_busy(started);
        result.map_err(|e| self.transform_error(e))?;
        self.emit(buffer, outputs).await?;
        if self.transforms.take_fired() {
            self.forward_window_watermark(outputs).await?;
        }
        Ok(())
    }

    /// The combined input watermark advanced.
    async fn on_input_watermark(&mut self, watermark: i64, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.transforms.on_watermark(watermark, &mut buffer);
        result.map_err(|e| self.transform_error(e))?;
        self.emit(buffer, outputs).await?;
        self.transforms.take_fired();
        match self.transforms.window_watermark() {
            Some(_) => self.forward_window_watermark(outputs).await,
            None => self.forward_watermark(watermark, outputs).await,
        }
    }

    /// Forwards the chain's last window's watermark if it advanced.
    async fn forward_window_watermark(&mut self, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        match self.transforms.window_watermark() {
            Some(watermark) => self.forward_watermark(watermark, outputs).await,
            None => Ok(()),
        }
    }

    /// Sends a watermark downstream if it is higher than the last one sent.
    async fn forward_watermark(&mut self, watermark: i64, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        if watermark <= self.forwarded_watermark || outputs.is_empty() {
            return Ok(());
        }
        self.forwarded_watermark = watermark;
        let sent = outputs.broadcast(StreamElement::Watermark(watermark)).await;
        sent.map_err(|e| self.send_error(e))
    }

    /// Hands the chain's output to the sink or the output channels, then returns the buffer for reuse.
    async fn emit(&mut self, mut buffer: Vec<Record>, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        for record in buffer.drain(..) {
            if let Some(sink) = self.sink.as_mut() {
                let started = Instant::now();
                let written = sink.write(&record).await;
                self.cell.add_busy(started);
                written.map_err(|e| self.sink_error(e))?;
            } else if !outputs.is_empty() {
                outputs.send_record(record).await.map_err(|e| self.send_error(e))?;
            }
            self.cell.records_out.fetch_add(1, Ordering::Relaxed);
        }
        self.buffer = buffer;
        Ok(())
    }

    /// A barrier arrived on `channel`.
    async fn on_barrier(
        &mut self,
        channel: usize,
        barrier: Arc<Barrier>,
        outputs: &mut Outputs,
    ) -> Result<(), RuntimeError> {
        let id = barrier.checkpoint_id;
        let aligning = self.alignment.as_ref().map(|a| a.barrier.checkpoint_id);
        if aligning != Some(id) {
            if id <= self.last_barrier {
                return Ok(()); // A barrier of a checkpoint this subtask already finished or abandoned.
            }
            if let Some(old) = self.alignment.take() {
                self.inputs.unblock_all();
                let reason = format!("barrier {id} arrived before the alignment of this checkpoint completed");
                self.decline(old.barrier.checkpoint_id, reason).await;
            }
            self.last_barrier = id;
            self.alignment = Some(Alignment { barrier, arrived: vec![false; self.inputs.len()] });
        }
        if let Some(alignment) = self.alignment.as_mut() {
            if let Some(arrived) = alignment.arrived.get_mut(channel) {
                *arrived = true;
            }
            self.inputs.block(channel);
        }
        self.check_alignment(outputs).await
    }

    /// Completes the alignment if the barrier arrived on every channel that has not ended.
    async fn check_alignment(&mut self, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        let Some(alignment) = &self.alignment else { return Ok(()) };
        let complete = alignment.arrived.iter().enumerate().all(|(i, arrived)| *arrived || self.inputs.is_ended(i));
        if !complete {
            return Ok(());
        }
        let Some(alignment) = self.alignment.take() else { return Ok(()) };
        self.inputs.unblock_all();
        self.checkpoint(&alignment.barrier, outputs).await
    }

    /// Snapshots the chain, writes the state file, acknowledges and forwards the barrier.
    async fn checkpoint(&mut self, barrier: &Arc<Barrier>, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        let sink_state = match self.sink.as_mut() {
            Some(sink) => {
                let closed = sink.snapshot(barrier.checkpoint_id).await;
                Some(closed.map_err(|e| self.sink_error(e))?)
            }
            None => None,
        };
        let snapshot = self.snapshot(sink_state);
        self.shared.write_and_ack(&self.cell, barrier, snapshot).await;
        let sent = outputs.broadcast(StreamElement::Barrier(barrier.clone())).await;
        sent.map_err(|e| self.send_error(e))
    }

    /// The subtask's snapshot (checkpoint id filled in when written).
    fn snapshot(&self, sink_state: Option<OperatorState>) -> SubtaskSnapshot {
        let mut states = Vec::with_capacity(self.operator_names.len());
        states.extend(self.source.as_ref().map(Source::snapshot));
        states.extend(self.transforms.snapshot());
        states.extend(sink_state);
        let operators = self
            .operator_names
            .iter()
            .zip(states)
            .map(|(name, state)| OperatorSnapshot { operator: name.to_string(), state })
            .collect();
        SubtaskSnapshot {
            version: STATE_FORMAT_VERSION,
            job_id: self.shared.job_id.clone(),
            vertex: self.cell.vertex.clone(),
            subtask: self.cell.subtask,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            checkpoint_id: 0,
            input_watermark: self.inputs.watermark(),
            operators,
        }
    }

    /// Reports a declined checkpoint.
    async fn decline(&self, checkpoint_id: u64, reason: String) {
        self.shared
            .emit(TaskEvent::CheckpointDeclined {
                job_id: self.shared.job_id.clone(),
                attempt: self.shared.attempt,
                checkpoint_id,
                vertex: self.cell.vertex.clone(),
                subtask: self.cell.subtask,
                reason,
            })
            .await;
    }

    /// Handles a control message.
    async fn on_control(&mut self, control: Control, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        match control {
            Control::Trigger(barrier) => {
                if self.source.is_none() || barrier.checkpoint_id <= self.last_barrier || self.end.is_some() {
                    return Ok(());
                }
                self.last_barrier = barrier.checkpoint_id;
                self.checkpoint(&barrier, outputs).await?;
                if let BarrierKind::Savepoint { terminate: true, .. } = barrier.kind {
                    self.stopped_for = Some(barrier.checkpoint_id);
                }
            }
            Control::Complete(id) => {
                if let Some(sink) = self.sink.as_mut() {
                    let committed = sink.notify_complete(id).await;
                    committed.map_err(|e| self.sink_error(e))?;
                }
                if self.stopped_for.is_some_and(|stop| id >= stop) {
                    self.end = Some(EndReason::Stopped);
                }
            }
            Control::Aborted(id) => {
                if self.stopped_for == Some(id) {
                    self.stopped_for = None;
                }
                if self.alignment.as_ref().is_some_and(|a| a.barrier.checkpoint_id == id) {
                    self.alignment = None;
                    self.inputs.unblock_all();
                }
            }
        }
        Ok(())
    }

    /// End of input: fire windows (if drained), commit the sink, tell downstream, record the final snapshot.
    async fn finish(&mut self, reason: EndReason, outputs: &mut Outputs) -> Result<(), RuntimeError> {
        if reason == EndReason::Drained {
            let mut buffer = std::mem::take(&mut self.buffer);
            let result = self.transforms.drain(&mut buffer);
            result.map_err(|e| self.transform_error(e))?;
            self.emit(buffer, outputs).await?;
        }
        if let Some(sink) = self.sink.as_mut() {
            let finished = sink.finish().await;
            finished.map_err(|e| self.sink_error(e))?;
        }
        let sent = outputs.broadcast(StreamElement::EndOfInput(reason)).await;
        sent.map_err(|e| self.send_error(e))?;
        self.record_final_snapshot().await;
        Ok(())
    }

    /// Puts the final snapshot in the book and acknowledges the latest checkpoint if this subtask has not.
    async fn record_final_snapshot(&mut self) {
        let sink_state = self.sink.as_ref().map(Sink::current_state);
        let snapshot = Arc::new(self.snapshot(sink_state));
        let latest = {
            let mut book = self.shared.book();
            book.finished.insert(self.index, snapshot.clone());
            book.latest.clone()
        };
        if let Some(barrier) = latest {
            if barrier.checkpoint_id > self.cell.last_acked.load(Ordering::Acquire) {
                self.shared.write_and_ack(&self.cell, &barrier, (*snapshot).clone()).await;
            }
        }
    }

    /// An operator error at chain position `operator`.
    fn operator_error(&self, operator: usize, source: OperatorError) -> RuntimeError {
        RuntimeError::Operator {
            vertex: self.cell.vertex.clone(),
            subtask: self.cell.subtask,
            operator,
            kind: self.operator_names.get(operator).copied().unwrap_or("?"),
            source,
        }
    }

    /// A transform's error, at its chain position.
    fn transform_error(&self, e: TransformError) -> RuntimeError {
        self.operator_error(e.index + usize::from(self.source.is_some()), e.error)
    }

    /// The sink's error, at the last chain position.
    fn sink_error(&self, e: OperatorError) -> RuntimeError {
        self.operator_error(self.operator_names.len().saturating_sub(1), e)
    }

    /// A send error: routing failures belong to the last operator, a vanished receiver to the exchange.
    fn send_error(&self, e: SendError) -> RuntimeError {
        match e {
            SendError::Route(e) => self.operator_error(self.operator_names.len().saturating_sub(1), e),
            SendError::Gone { .. } if self.shared.is_cancelled() => RuntimeError::Canceled,
            SendError::Gone { .. } => RuntimeError::Exchange {
                vertex: self.cell.vertex.clone(),
                subtask: self.cell.subtask,
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::channel::OutputEdge;
    use super::super::expr::ExprEngine;
    use super::*;
    use crate::jobgraph::Partitioning;

    /// A pass-through subtask with two input channels and one output channel, running in the background.
    struct Rig {
        /// Senders of the two input channels.
        inputs: [mpsc::Sender<StreamElement>; 2],
        /// What the subtask sent downstream.
        output: mpsc::Receiver<StreamElement>,
        /// Its events.
        events: mpsc::Receiver<TaskEvent>,
        /// Its control queue, kept open.
        _control: mpsc::Sender<Control>,
        /// Its temporary checkpoint directory.
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (events_tx, events) = mpsc::channel(64);
        let shared = Arc::new(DeploymentShared {
            job_id: "j".into(),
            attempt: 1,
            checkpoint_dir: dir.path().to_path_buf(),
            events: events_tx,
            cancel: watch::channel(false).0,
            terminal: watch::channel(0).0,
            book: Mutex::new(CheckpointBook::default()),
        });
        let cell = Arc::new(SubtaskCell::new("v".into(), 0, false));
        let (tx0, rx0) = mpsc::channel(8);
        let (tx1, rx1) = mpsc::channel(8);
        let (out_tx, output) = mpsc::channel(64);
        let outputs = Outputs {
            edges: vec![OutputEdge {
                target_vertex: "down".into(),
                partitioning: Partitioning::Forward,
                senders: vec![out_tx],
                key_field: None,
                max_parallelism: 1,
                round_robin: 0,
                forward_index: 0,
            }],
        };
        let (control_tx, control_rx) = mpsc::channel(8);
        let chain = (None, Transforms::new(Vec::new(), ExprEngine::shared(), 1), None);
        let gate = InputGate::new(vec![rx0, rx1], None);
        let subtask = Subtask::new(shared, cell, 0, (1, 1), Vec::new(), chain, None, gate, control_rx);
        tokio::spawn(subtask.run_to_end(outputs));
        Rig { inputs: [tx0, tx1], output, events, _control: control_tx, _dir: dir }
    }

    fn record(n: u64) -> StreamElement {
        StreamElement::Record(json!({ "n": n }).as_object().cloned().unwrap_or_default())
    }

    fn barrier(id: u64) -> StreamElement {
        StreamElement::Barrier(Arc::new(Barrier { checkpoint_id: id, timestamp_ms: 0, kind: BarrierKind::Checkpoint }))
    }

    /// The next element sent downstream, as a short label.
    async fn next_out(rig: &mut Rig) -> String {
        match rig.output.recv().await {
            Some(StreamElement::Record(r)) => format!("r{}", r["n"]),
            Some(StreamElement::Barrier(b)) => format!("b{}", b.checkpoint_id),
            other => format!("{other:?}"),
        }
    }

    /// The next checkpoint event, as a short label.
    async fn next_checkpoint_event(rig: &mut Rig) -> String {
        loop {
            match rig.events.recv().await {
                Some(TaskEvent::CheckpointAcked { checkpoint_id, .. }) => return format!("ack{checkpoint_id}"),
                Some(TaskEvent::CheckpointDeclined { checkpoint_id, .. }) => return format!("decline{checkpoint_id}"),
                Some(_) => {}
                None => return "closed".into(),
            }
        }
    }

    #[tokio::test]
    async fn alignment_holds_back_the_channel_that_delivered_the_barrier() {
        let mut rig = rig();
        for element in [record(1), barrier(1), record(2)] {
            rig.inputs[0].send(element).await.unwrap();
        }
        for element in [record(3), barrier(1)] {
            rig.inputs[1].send(element).await.unwrap();
        }
        let mut before = vec![next_out(&mut rig).await, next_out(&mut rig).await];
        before.sort();
        assert_eq!(before, vec!["r1", "r3"]);
        assert_eq!(next_out(&mut rig).await, "b1");
        assert_eq!(next_out(&mut rig).await, "r2", "the record after the barrier waits for the alignment");
        assert_eq!(next_checkpoint_event(&mut rig).await, "ack1");
    }

    #[tokio::test]
    async fn a_newer_barrier_aborts_an_older_alignment() {
        let mut rig = rig();
        rig.inputs[0].send(barrier(2)).await.unwrap();
        rig.inputs[0].send(barrier(3)).await.unwrap();
        rig.inputs[1].send(record(1)).await.unwrap();
        assert_eq!(next_out(&mut rig).await, "r1");
        // Barrier 3 on channel 0 is behind barrier 2, which blocks it; only channel 1 can move things on.
        rig.inputs[1].send(barrier(3)).await.unwrap();
        rig.inputs[1].send(barrier(2)).await.unwrap();
        rig.inputs[1].send(record(2)).await.unwrap();
        assert_eq!(next_checkpoint_event(&mut rig).await, "decline2");
        assert_eq!(next_out(&mut rig).await, "b3");
        assert_eq!(next_checkpoint_event(&mut rig).await, "ack3");
        assert_eq!(next_out(&mut rig).await, "r2", "the stale barrier 2 is ignored");
    }
}
