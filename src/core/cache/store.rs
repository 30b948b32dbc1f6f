//! The cache's storage in Envoy shared data: a fixed slot table per route and
//! family, its byte accounting, and the table of requests in flight.
//!
//! Shared data has no delete, so every key is created from a fixed set:
//! `llmcap/<family>/<route>/<slot>` for `max_entries` slots, one accounting
//! record `llmcap/<family>/<route>/meta`, and `llmcap/cfl/<route>/<slot>` for
//! the requests in flight. An entry lives in the slot its digest names (a
//! direct-mapped table): a newer entry replaces an older one in its slot. The
//! accounting record holds every slot's size and a clock hand; a store that
//! would take the family past `max_total_bytes` empties slots from the hand on
//! (an empty value holds no bytes) until it fits. An entry is checked against
//! its full digest and its expiry on every read, so a replaced, expired or
//! colliding entry is never served.

use super::canon::Digest32;
use crate::core::env::{SharedStore, StoreError};

/// Which table: the response cache, or answers kept under an `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Cache,
    Idempotency,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Cache => "cache",
            Family::Idempotency => "idem",
        }
    }
}

/// One stored answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The key it answers (request and scope, or idempotency key and scope).
    pub digest: Digest32,
    /// Idempotency: the digest of the request that produced it.
    pub body_digest: Digest32,
    pub stored_ms: u64,
    pub expires_ms: u64,
    /// Settled usage of the answer: input, output, cached input.
    pub usage: (u64, u64, u64),
    pub streamed: bool,
    pub content_type: String,
    pub model: String,
    pub body: Vec<u8>,
}

const VERSION: u8 = 1;
/// Bytes of an entry's fixed part.
pub const ENTRY_HEADER: usize = 1 + 32 + 32 + 8 * 5 + 1 + 2 + 2;
/// Content type and model are cut to this.
pub const MAX_TEXT: usize = 128;

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn text(s: &str) -> &[u8] {
    crate::core::truncate(s, MAX_TEXT).as_bytes()
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let ct = text(&self.content_type);
        let model = text(&self.model);
        let mut out = Vec::with_capacity(ENTRY_HEADER + ct.len() + model.len() + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.body_digest);
        for v in [
            self.stored_ms,
            self.expires_ms,
            self.usage.0,
            self.usage.1,
            self.usage.2,
        ] {
            put_u64(&mut out, v);
        }
        out.push(u8::from(self.streamed));
        out.extend_from_slice(&(ct.len() as u16).to_le_bytes());
        out.extend_from_slice(&(model.len() as u16).to_le_bytes());
        out.extend_from_slice(ct);
        out.extend_from_slice(model);
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for anything that is not an entry this version wrote (an empty
    /// slot, a cut or foreign value).
    pub fn decode(b: &[u8]) -> Option<Entry> {
        if b.len() < ENTRY_HEADER || b[0] != VERSION {
            return None;
        }
        let arr = |at: usize| -> Option<Digest32> { b.get(at..at + 32)?.try_into().ok() };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let u16_at = |at: usize| -> Option<usize> {
            Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
        };
        let digest = arr(1)?;
        let body_digest = arr(33)?;
        let n = 65;
        let (stored_ms, expires_ms) = (u64_at(n)?, u64_at(n + 8)?);
        let usage = (u64_at(n + 16)?, u64_at(n + 24)?, u64_at(n + 32)?);
        let streamed = match b.get(n + 40)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let (ct_len, model_len) = (u16_at(n + 41)?, u16_at(n + 43)?);
        if ct_len > MAX_TEXT || model_len > MAX_TEXT {
            return None;
        }
        let at = ENTRY_HEADER;
        let ct = std::str::from_utf8(b.get(at..at + ct_len)?).ok()?;
        let model = std::str::from_utf8(b.get(at + ct_len..at + ct_len + model_len)?).ok()?;
        Some(Entry {
            digest,
            body_digest,
            stored_ms,
            expires_ms,
            usage,
            streamed,
            content_type: ct.to_string(),
            model: model.to_string(),
            body: b.get(at + ct_len + model_len..)?.to_vec(),
        })
    }
}

/// A route's table of one family.
pub struct Table<'a> {
    pub store: &'a dyn SharedStore,
    pub route: &'a str,
    pub family: Family,
    pub slots: u32,
    pub max_total_bytes: u64,
}

/// What a store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Other entries emptied or replaced to make room.
    pub evicted: u32,
    /// Bytes the family holds now (its accounting).
    pub bytes_held: u64,
}

/// Why an entry was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Its slot holds another key's answer that must be kept (idempotency).
    SlotTaken,
    Store(StoreError),
}

/// The accounting record: bytes held, the clock hand, each slot's size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    total: u64,
    hand: u32,
    sizes: Vec<u32>,
}

impl Meta {
    fn fresh(n: u32) -> Self {
        Meta {
            total: 0,
            hand: 0,
            sizes: vec![0; n as usize],
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 4 * self.sizes.len());
        put_u64(&mut out, self.total);
        out.extend_from_slice(&self.hand.to_le_bytes());
        for s in &self.sizes {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 12 || !(b.len() - 12).is_multiple_of(4) {
            return None;
        }
        let total = u64::from_le_bytes(b[0..8].try_into().ok()?);
        let hand = u32::from_le_bytes(b[8..12].try_into().ok()?);
        let sizes = b[12..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Meta { total, hand, sizes })
    }
}

/// CAS attempts on the accounting record before a store gives up.
const CAS_TRIES: u32 = 8;

impl Table<'_> {
    fn slot_key(&self, i: u32) -> String {
        format!("llmcap/{}/{}/{i}", self.family.as_str(), self.route)
    }

    fn meta_key(&self) -> String {
        format!("llmcap/{}/{}/meta", self.family.as_str(), self.route)
    }

    /// The slot a digest lives in.
    pub fn slot_of(&self, digest: &Digest32) -> u32 {
        u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % self.slots.max(1)
    }

    /// The entry for `digest`, if one is stored and unexpired at `now`.
    pub fn lookup(&self, digest: &Digest32, now: u64) -> Result<Option<Entry>, StoreError> {
        let Some((v, _)) = self.store.get(&self.slot_key(self.slot_of(digest)))? else {
            return Ok(None);
        };
        Ok(Entry::decode(&v).filter(|e| e.digest == *digest && now < e.expires_ms))
    }

    /// Stores `e` in its slot, emptying others from the clock hand on while the
    /// family would hold more than `max_total_bytes`. With `keep_live`, an
    /// unexpired entry of another key in the slot is kept (and `e` is not stored).
    pub fn put(&self, e: &Entry, now: u64, keep_live: bool) -> Result<Stored, NotStored> {
        let value = e.encode();
        let n = value.len() as u64;
        let s = self.slot_of(&e.digest);
        let key = self.slot_key(s);
        let current = self.store.get(&key).map_err(NotStored::Store)?;
        let old = current.as_ref().and_then(|(v, _)| Entry::decode(v));
        if keep_live
            && old
                .as_ref()
                .is_some_and(|o| o.digest != e.digest && now < o.expires_ms)
        {
            return Err(NotStored::SlotTaken);
        }
        let replaced = old.is_some_and(|o| o.digest != e.digest && now < o.expires_ms);
        let meta_key = self.meta_key();
        let mut evict: Vec<u32> = Vec::new();
        let mut stale: Vec<u32> = Vec::new();
        let mut held = 0;
        let mut done = false;
        for _ in 0..CAS_TRIES {
            let (mut meta, cas) = match self.store.get(&meta_key).map_err(NotStored::Store)? {
                Some((v, cas)) => (Meta::decode(&v).unwrap_or_else(|| Meta::fresh(0)), cas),
                None => (Meta::fresh(self.slots), 0),
            };
            stale.clear();
            if meta.sizes.len() != self.slots as usize {
                // The table was resized (a new config): the old slots are
                // emptied, so what they held is not left behind uncounted.
                stale = (0..meta.sizes.len() as u32)
                    .filter(|&i| meta.sizes[i as usize] > 0)
                    .collect();
                meta = Meta::fresh(self.slots);
            }
            evict.clear();
            let old_size = u64::from(meta.sizes[s as usize]);
            let mut total = meta.total.saturating_sub(old_size).saturating_add(n);
            let mut steps = 0;
            while total > self.max_total_bytes && steps < self.slots {
                let i = meta.hand % self.slots;
                meta.hand = (i + 1) % self.slots;
                steps += 1;
                let size = u64::from(meta.sizes[i as usize]);
                if i != s && size > 0 {
                    total = total.saturating_sub(size);
                    meta.sizes[i as usize] = 0;
                    evict.push(i);
                }
            }
            if total > self.max_total_bytes {
                return Err(NotStored::SlotTaken); // cannot happen: n <= max_total_bytes
            }
            meta.sizes[s as usize] = n as u32;
            meta.total = total;
            match self.store.set(&meta_key, &meta.encode(), cas) {
                Ok(()) => {
                    held = total;
                    done = true;
                    break;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(NotStored::Store(e)),
            }
        }
        if !done {
            return Err(NotStored::Store(StoreError::CasMismatch));
        }
        // Emptied slots first: the bytes they held are already counted out.
        for i in stale.iter().chain(evict.iter()) {
            let k = format!("llmcap/{}/{}/{i}", self.family.as_str(), self.route);
            let _ = self.store.set(&k, &[], 0);
        }
        self.store.set(&key, &value, 0).map_err(NotStored::Store)?;
        Ok(Stored {
            evicted: evict.len() as u32 + u32::from(replaced),
            bytes_held: held,
        })
    }
}

/// A request in flight for a key, as the table of flights holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flight {
    pub digest: Digest32,
    pub state: FlightState,
    /// After this the flight is given up (its leader may be gone).
    pub deadline_ms: u64,
    pub waiters: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlightState {
    Pending,
    /// Its answer was stored.
    Stored,
    /// It ended without an answer to store.
    Failed,
}

impl Flight {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45);
        out.extend_from_slice(&self.digest);
        out.push(match self.state {
            FlightState::Pending => 0,
            FlightState::Stored => 1,
            FlightState::Failed => 2,
        });
        put_u64(&mut out, self.deadline_ms);
        out.extend_from_slice(&self.waiters.to_le_bytes());
        out
    }
    fn decode(b: &[u8]) -> Option<Flight> {
        if b.len() != 45 {
            return None;
        }
        Some(Flight {
            digest: b[0..32].try_into().ok()?,
            state: match b[32] {
                0 => FlightState::Pending,
                1 => FlightState::Stored,
                2 => FlightState::Failed,
                _ => return None,
            },
            deadline_ms: u64::from_le_bytes(b[33..41].try_into().ok()?),
            waiters: u32::from_le_bytes(b[41..45].try_into().ok()?),
        })
    }
    fn live(&self, digest: &Digest32, now: u64) -> bool {
        self.digest == *digest && self.state == FlightState::Pending && now < self.deadline_ms
    }
}

/// The route's table of requests in flight (one per slot).
pub struct Flights<'a> {
    pub store: &'a dyn SharedStore,
    pub route: &'a str,
    pub slots: u32,
}

/// What claiming a key's flight found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This request leads: identical ones wait for it.
    Leader,
    /// Another identical request is in flight.
    InFlight(Flight),
    /// Another key's request holds the slot: this one goes uncollapsed.
    Busy,
}

impl Flights<'_> {
    fn key(&self, digest: &Digest32) -> String {
        let s =
            u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % self.slots.max(1);
        format!("llmcap/cfl/{}/{s}", self.route)
    }

    fn read(&self, key: &str) -> Result<(Option<Flight>, u32), StoreError> {
        Ok(match self.store.get(key)? {
            Some((v, cas)) => (Flight::decode(&v), cas),
            None => (None, 0),
        })
    }

    /// Leads the flight for `digest` until `deadline_ms`, unless one is live.
    pub fn claim(
        &self,
        digest: &Digest32,
        now: u64,
        deadline_ms: u64,
    ) -> Result<Claim, StoreError> {
        let key = self.key(digest);
        for _ in 0..CAS_TRIES {
            let (f, cas) = self.read(&key)?;
            match f {
                Some(f) if f.live(digest, now) => return Ok(Claim::InFlight(f)),
                Some(f) if f.state == FlightState::Pending && now < f.deadline_ms => {
                    return Ok(Claim::Busy)
                }
                _ => {}
            }
            let mine = Flight {
                digest: *digest,
                state: FlightState::Pending,
                deadline_ms,
                waiters: 0,
            };
            match self.store.set(&key, &mine.encode(), cas) {
                Ok(()) => return Ok(Claim::Leader),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::CasMismatch)
    }

    /// Joins the live flight for `digest` as a waiter, if it has room under `max`.
    /// `Some(deadline)` when joined.
    pub fn join(&self, digest: &Digest32, now: u64, max: u32) -> Result<Option<u64>, StoreError> {
        let key = self.key(digest);
        for _ in 0..CAS_TRIES {
            let (f, cas) = self.read(&key)?;
            let Some(mut f) = f.filter(|f| f.live(digest, now) && f.waiters < max) else {
                return Ok(None);
            };
            f.waiters += 1;
            match self.store.set(&key, &f.encode(), cas) {
                Ok(()) => return Ok(Some(f.deadline_ms)),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The flight for `digest` as it stands (`None`: none, or another key's).
    pub fn state(&self, digest: &Digest32) -> Result<Option<Flight>, StoreError> {
        Ok(self
            .read(&self.key(digest))?
            .0
            .filter(|f| f.digest == *digest))
    }

    /// The leader ends its flight: its answer was stored, or there is none.
    pub fn finish(&self, digest: &Digest32, stored: bool) -> Result<(), StoreError> {
        let key = self.key(digest);
        for _ in 0..CAS_TRIES {
            let (f, cas) = self.read(&key)?;
            let Some(mut f) = f.filter(|f| f.digest == *digest && f.state == FlightState::Pending)
            else {
                return Ok(()); // taken over by another key, or ended already
            };
            f.state = if stored {
                FlightState::Stored
            } else {
                FlightState::Failed
            };
            match self.store.set(&key, &f.encode(), cas) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::CasMismatch)
    }
}
