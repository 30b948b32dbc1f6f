//! What one worker's VM keeps between requests: the wait queue, the global
//! tier's renewals, the calibration cache and the upstream attempts' ledger.
//! Everything is bounded; VMs are single-threaded, so cells are enough. No
//! borrow is held across a host call (a resumed request may run at once).

use super::admit::{self, WaitQueue};
use crate::core::config::GlobalConfig;
use crate::core::env::{SharedStore, StoreError};
use crate::core::host::Host;
use crate::core::limits::global::Hits;
use crate::core::tokens::calibrate;
use crate::core::tokens::estimate::TextClass;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// How long a VM reuses a calibration read, and how often it feeds a sample per
/// model and kind of text: a shared-data read and a CAS write saved on most requests under load,
/// while the ratio (a slow-moving average) still learns from every worker.
pub const CALIBRATION_CACHE_MS: u64 = 100;
/// Entries in each per-VM calibration map before it is cleared (bounded memory).
pub const CALIBRATION_CACHE_ENTRIES: usize = 256;
/// A VM reports its linear memory with its first request and every this many
/// after (counted, so the report needs no clock read).
pub const MEMORY_REPORT_EVERY: u32 = 256;

/// Requests waiting for an identical one per VM, at most.
pub const MAX_COLLAPSED: usize = 4096;
/// Body bytes the requests waiting for an identical one may hold per VM
/// (each keeps its body to go on its own); past it a request is not collapsed.
pub const MAX_COLLAPSED_BYTES: usize = 8 << 20;

/// A shared-data read (value and CAS token, `None` if never written) and when it was made.
type CachedRead = (Option<(Vec<u8>, u32)>, u64);

/// Per-VM state shared by the VM's root contexts and every stream of them.
pub struct Worker {
    /// Requests of this worker waiting for capacity.
    pub queue: RefCell<WaitQueue>,
    /// Global-tier renewals wanted and in flight.
    pub renewals: RefCell<Renewals>,
    /// Upstream attempts waiting for their stream's end, and quota sampling.
    pub attempts: RefCell<Ledger>,
    /// The queue's tick period as last set, restored after a renewal's tick.
    pub queue_poll_ms: Cell<u32>,
    /// A queued request left before its time: said once per VM.
    pub warned_not_held: Cell<bool>,
    /// Requests waiting for an identical one in flight (response cache), by context.
    pub collapsed: RefCell<Vec<u32>>,
    collapsed_bytes: Cell<usize>,
    since_memory_report: Cell<u32>,
    calibration_reads: RefCell<HashMap<String, CachedRead>>,
    calibration_sampled: RefCell<HashMap<String, u64>>,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            queue: RefCell::default(),
            renewals: RefCell::default(),
            attempts: RefCell::default(),
            queue_poll_ms: Cell::new(20),
            warned_not_held: Cell::new(false),
            collapsed: RefCell::default(),
            collapsed_bytes: Cell::new(0),
            since_memory_report: Cell::new(0),
            calibration_reads: RefCell::default(),
            calibration_sampled: RefCell::default(),
        }
    }
}

impl Worker {
    /// The root context's tick: makes the renewals streams asked for, resumes
    /// the requests whose turn has come, and sets the next tick.
    pub fn on_tick(&self, h: &mut dyn Host) {
        let renewed = self.make_renewals(h);
        let waiting = admit::on_tick(&self.queue, h) || !self.collapsed.borrow().is_empty();
        if !waiting {
            // Nobody waits: stop ticking until a stream enqueues again.
            let _ = h.set_tick_period(0);
        } else if renewed {
            // Back from the renewal's 1 ms tick to the queue's poll.
            let _ = h.set_tick_period(self.queue_poll_ms.get());
        }
    }

    /// Adds a request waiting for an identical one, for the next tick to wake;
    /// `false` when [`MAX_COLLAPSED`] wait on this VM already (it goes on its own).
    pub fn collapse_wait(&self, context_id: u32) -> bool {
        let mut c = self.collapsed.borrow_mut();
        if c.contains(&context_id) {
            return true;
        }
        if c.len() >= MAX_COLLAPSED {
            return false;
        }
        c.push(context_id);
        true
    }

    /// Takes `n` body bytes from the VM's collapse budget; `false` past
    /// [`MAX_COLLAPSED_BYTES`] (the request goes on its own).
    pub fn collapse_reserve(&self, n: usize) -> bool {
        let held = self.collapsed_bytes.get();
        if held.saturating_add(n) > MAX_COLLAPSED_BYTES {
            return false;
        }
        self.collapsed_bytes.set(held + n);
        true
    }

    /// Gives back what [`Worker::collapse_reserve`] took.
    pub fn collapse_release(&self, n: usize) {
        self.collapsed_bytes
            .set(self.collapsed_bytes.get().saturating_sub(n));
    }

    /// Body bytes held by requests waiting for an identical one on this VM.
    pub fn collapsed_bytes(&self) -> usize {
        self.collapsed_bytes.get()
    }

    /// The requests to wake at this tick (each adds itself again to wait on).
    pub fn take_collapsed(&self) -> Vec<u32> {
        std::mem::take(&mut *self.collapsed.borrow_mut())
    }

    /// Whether this request reports the VM's memory (its first, then every
    /// [`MEMORY_REPORT_EVERY`]).
    pub fn memory_report_due(&self) -> bool {
        let n = self.since_memory_report.get();
        self.since_memory_report
            .set(if n + 1 >= MEMORY_REPORT_EVERY {
                0
            } else {
                n + 1
            });
        n == 0
    }

    /// Whether this VM feeds a calibration sample for `model` and kind of text
    /// `class` now: at most one per [`CALIBRATION_CACHE_MS`] for each stream
    /// ([`calibrate::stream`]), so a model receiving two kinds of text learns
    /// both rather than the more frequent one alone.
    pub fn calibration_sample_due(&self, model: &str, class: TextClass, now: u64) -> bool {
        // Bounded: `calibrate::stream` cuts the model name to 128 bytes.
        let stream = calibrate::stream(model, class);
        let mut m = self.calibration_sampled.borrow_mut();
        if let Some(at) = m.get_mut(&stream) {
            if now.saturating_sub(*at) < CALIBRATION_CACHE_MS {
                return false;
            }
            *at = now;
            return true;
        }
        if m.len() >= CALIBRATION_CACHE_ENTRIES {
            m.clear();
        }
        m.insert(stream, now);
        true
    }

    /// Shared data for the pre-flight's calibration lookups, through this VM's
    /// short cache.
    pub fn calibration_reads<'a>(&'a self, host: &'a dyn Host) -> CalibrationReads<'a> {
        CalibrationReads { worker: self, host }
    }
}

/// Shared data for the pre-flight's calibration lookups, through a short
/// per-VM cache. Only reads are cached: writes go straight to the host.
pub struct CalibrationReads<'a> {
    worker: &'a Worker,
    host: &'a dyn Host,
}

impl SharedStore for CalibrationReads<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let now = self.host.now_ms();
        let hit = self
            .worker
            .calibration_reads
            .borrow()
            .get(key)
            .filter(|(_, at)| now.saturating_sub(*at) < CALIBRATION_CACHE_MS)
            .map(|(v, _)| v.clone());
        if let Some(v) = hit {
            return Ok(v);
        }
        let v = self.host.get(key)?;
        let mut m = self.worker.calibration_reads.borrow_mut();
        if m.len() >= CALIBRATION_CACHE_ENTRIES {
            m.clear();
        }
        m.insert(key.to_string(), (v.clone(), now));
        Ok(v)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.host.set(key, value, cas)
    }
}

/// An attempt that ended without response headers.
pub struct Unanswered {
    pub stream: u32,
    pub at_ms: u64,
    pub cluster: String,
    pub probe: bool,
    pub latency_ms: u64,
    /// It ran out of the router's time for it (`timeout`, not `reset`).
    pub timed_out: bool,
    /// Where its end falls in the VM's order of attempt events: after the
    /// answer the client got means the router cancelled it (a hedge's loser).
    pub ended_seq: u64,
}

/// Per VM: attempts waiting for their stream's end, streams recently ended,
/// and when each cluster's quota headers were last sampled.
#[derive(Default)]
pub struct Ledger {
    pub(super) unanswered: Vec<Unanswered>,
    /// (stream, whether its client was answered, the answering attempt's
    /// answer in the event order), oldest first.
    pub(super) ended: VecDeque<(u32, bool, Option<u64>)>,
    /// Per cluster: when this VM last read a successful answer's quota
    /// headers, and whether the quota they reported was low.
    pub(super) quota_sampled: HashMap<String, QuotaSample>,
    /// Attempts sent, newest last, until the downstream reads the answering
    /// one or its stream ends: for the timings, and so a later attempt of the
    /// same stream is known as a router retry (gated when it is sent) or a
    /// hedge (sent while an earlier one still waits); at most [`SENT_ATTEMPTS`].
    pub(super) sent: VecDeque<SentAttempt>,
    /// The VM's order of attempt events (sent, answered, ended): one thread,
    /// so a counter orders them where the clock (ms) cannot.
    seq: u64,
}

/// A cluster's last read of a successful answer's quota headers, per VM.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct QuotaSample {
    pub(super) at_ms: u64,
    /// The quota read was low: every answer is read until it is not.
    pub(super) low: bool,
}

/// Attempts remembered per VM (the oldest is forgotten first).
pub const SENT_ATTEMPTS: usize = 1024;

/// One attempt as the upstream instance saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentAttempt {
    pub stream: u32,
    pub at_ms: u64,
    pub cluster: String,
    /// When its response headers came.
    pub answered_ms: Option<u64>,
    /// A streamed success whose circuit outcome waits for the downstream
    /// instance's time to first token: `Some(probe)`.
    pub ttft_pending: Option<bool>,
    /// Its place in the VM's event order when sent: the attempt's id.
    pub sent_seq: u64,
    /// ... when its response headers came.
    pub answered_seq: Option<u64>,
    /// ... when it ended without them.
    pub ended_seq: Option<u64>,
    /// Sent while an earlier attempt of its stream still waited: a hedge.
    pub hedge: bool,
}

/// What the downstream instance learns of its answer's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answering {
    /// The attempt whose answer the client got (else the last one sent).
    pub attempt: SentAttempt,
    /// That answer's place in the event order, when an attempt's answer was
    /// the client's (`None`: the router answered itself, e.g. a timeout).
    pub winner_seq: Option<u64>,
    /// A hedge was sent for this request.
    pub hedged: bool,
}

impl Ledger {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Whether `stream` already sent an attempt: then the next one is a retry.
    pub(super) fn is_retry(&self, stream: u32) -> bool {
        self.sent.iter().rev().any(|a| a.stream == stream)
    }

    /// Whether an earlier attempt of `stream` still waits for its answer: the
    /// next one is then a hedge, not a retry of a failure.
    pub(super) fn is_hedge(&self, stream: u32) -> bool {
        self.sent
            .iter()
            .any(|a| a.stream == stream && a.answered_seq.is_none() && a.ended_seq.is_none())
    }

    /// Whether a hedge was sent for `stream` (while its attempts are remembered).
    pub(super) fn hedged(&self, stream: u32) -> bool {
        self.sent.iter().any(|a| a.stream == stream && a.hedge)
    }

    /// The stream ended: its attempts are over.
    pub(super) fn forget_attempts(&mut self, stream: u32) {
        self.sent.retain(|a| a.stream != stream);
    }

    /// (whether the client was answered, the answering attempt's answer) of a
    /// stream that ended, if remembered.
    pub(super) fn stream_ended(&self, stream: u32) -> Option<(bool, Option<u64>)> {
        self.ended
            .iter()
            .rev()
            .find(|(s, _, _)| *s == stream)
            .map(|&(_, answered, winner)| (answered, winner))
    }

    /// Notes that an attempt of `stream` went to `cluster` at `at_ms`; returns
    /// its id.
    pub(super) fn attempt_sent(
        &mut self,
        stream: u32,
        at_ms: u64,
        cluster: &str,
        hedge: bool,
    ) -> u64 {
        if self.sent.len() >= SENT_ATTEMPTS {
            self.sent.pop_front();
        }
        let seq = self.next_seq();
        self.sent.push_back(SentAttempt {
            stream,
            at_ms,
            cluster: cluster.to_string(),
            answered_ms: None,
            ttft_pending: None,
            sent_seq: seq,
            answered_seq: None,
            ended_seq: None,
            hedge,
        });
        seq
    }

    /// Attempt `id` of `stream` got its response headers at `at_ms`;
    /// `ttft_pending`: see [`SentAttempt::ttft_pending`]. False if the attempt
    /// is no longer remembered.
    pub(super) fn attempt_answered(
        &mut self,
        stream: u32,
        id: u64,
        at_ms: u64,
        ttft_pending: Option<bool>,
    ) -> bool {
        let seq = self.next_seq();
        match self
            .sent
            .iter_mut()
            .rev()
            .find(|a| a.stream == stream && a.sent_seq == id)
        {
            Some(a) => {
                a.answered_ms = Some(at_ms);
                a.answered_seq = Some(seq);
                a.ttft_pending = ttft_pending;
                true
            }
            None => false,
        }
    }

    /// Attempt `id` of `stream` ended without response headers; returns the
    /// end's place in the event order.
    pub(super) fn attempt_ended(&mut self, stream: Option<u32>, id: Option<u64>) -> u64 {
        let seq = self.next_seq();
        if let (Some(stream), Some(id)) = (stream, id) {
            if let Some(a) = self
                .sent
                .iter_mut()
                .rev()
                .find(|a| a.stream == stream && a.sent_seq == id)
            {
                a.ended_seq = Some(seq);
            }
        }
        seq
    }

    /// The attempt that answered `stream`: the last one to get response
    /// headers, if no attempt was sent after them (else the router went on,
    /// and its own answer, or the last attempt's, is the client's). Forgets
    /// the stream's attempts.
    pub(super) fn answering_attempt(&mut self, stream: u32) -> Option<Answering> {
        let mine = || self.sent.iter().filter(|a| a.stream == stream);
        let hedged = mine().any(|a| a.hedge);
        let last_sent = mine().map(|a| a.sent_seq).max()?;
        let answered = mine()
            .filter(|a| a.answered_seq.is_some())
            .max_by_key(|a| a.answered_seq)
            .filter(|a| a.answered_seq.is_some_and(|s| s > last_sent))
            .cloned();
        let out = match answered {
            Some(a) => Answering {
                winner_seq: a.answered_seq,
                attempt: a,
                hedged,
            },
            None => Answering {
                attempt: mine().find(|a| a.sent_seq == last_sent)?.clone(),
                winner_seq: None,
                hedged,
            },
        };
        self.sent.retain(|a| a.stream != stream);
        Some(out)
    }

    /// Attempts waiting for their stream's end.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }
}

/// A renewal to make at the next tick.
pub struct Renewal {
    pub(super) route: String,
    pub(super) global: Rc<GlobalConfig>,
}

/// A renewal call in flight.
pub struct RenewalCall {
    pub(super) route: String,
    pub(super) key: String,
    pub(super) lease: Hits,
    pub(super) retry_interval_ms: u64,
    pub(super) timeout_ms: u32,
    pub(super) at: u64,
}

/// The worker's renewals: wanted by streams, in flight by token.
#[derive(Default)]
pub struct Renewals {
    pub(super) wanted: Vec<Renewal>,
    pub(super) calls: HashMap<u32, RenewalCall>,
}

impl Renewals {
    /// Renewal calls waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }
}
