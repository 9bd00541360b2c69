//! The governor: a byte budget handed out as RAII permits.
//!
//! # Semantics
//!
//! * **All or nothing.** [`Governor::acquire`] grants a request whole, never
//!   in parts, so no task ever holds some bytes while waiting for more (no
//!   hold-and-wait deadlock between acquirers).
//! * **FIFO.** Waiters are served strictly in arrival order. A request that
//!   does not fit blocks every request behind it, even small ones that would
//!   fit: this is what keeps a large request from being starved by a stream
//!   of small ones. A new request only skips the queue when the queue is
//!   empty.
//! * **Clamping.** A request larger than the working budget (the budget
//!   minus fixed reservations, below) is clamped to it when it is granted:
//!   it waits until nothing else but the fixed reservations is held and
//!   then runs alone. It never waits forever and is never refused. The
//!   permit says it was clamped ([`Permit::requested`] >
//!   [`Permit::bytes`]); a caller that can stream in smaller pieces sizes its
//!   buffers from [`Permit::bytes`].
//! * **Fixed reservations.** What a job holds for its whole run (a listing
//!   queue, batch buffers, worker stacks) is taken with
//!   [`Governor::reserve_fixed`], which never waits: it succeeds at once or
//!   says how much is missing. Fixed bytes are taken out of what any later
//!   request is clamped to, so a job that holds its queue and then asks
//!   for an oversized buffer is granted it once its *other* permits are
//!   back. Without this, the clamped request would wait for the job's own
//!   queue to be released: a hold-and-wait deadlock with itself.
//! * **Release wakes waiters.** Dropping or shrinking a permit returns its
//!   bytes and grants as many queued requests, in order, as now fit.
//! * **Run-time budget changes.** [`Governor::set_budget`] never revokes a
//!   granted permit. Lowering the budget only stops new grants until enough
//!   permits are dropped; raising it grants waiters at once.
//! * **Circuit breaker.** While the breaker is open
//!   ([`Governor::open_breaker`]), nothing new is granted, whatever the
//!   budget; permits already held are unaffected.
//!
//! # Cancel safety
//!
//! [`Acquire`] is cancel safe: dropping it at any point, before or after
//! it was queued, and even after its bytes were granted but before it was
//! polled again, returns every byte it was given and lets the next waiter
//! proceed. This is what makes `tokio::time::timeout(..., gov.acquire(..))`
//! and `select!` safe to use.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::ByteSize;

/// What a reservation is for, e.g. `"copy.part"` or `"ingest.event"`.
///
/// Tags are static so that per-tag statistics stay a small, fixed set.
pub type Tag = &'static str;

/// How many top consumers an [`AcquireTimeout`] names.
const TOP_CONSUMERS: usize = 5;

/// A memory budget shared by every task of a process.
///
/// Cloning is cheap and every clone refers to the same budget.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use headroom_governor::Governor;
///
/// let gov = Governor::new(64 << 20);
/// let permit = gov.acquire(8 << 20, "copy.part").await;
/// let buffer = vec![0u8; permit.bytes() as usize]; // paid for by `permit`
/// assert_eq!(gov.reserved(), 8 << 20);
/// drop(buffer);
/// drop(permit);
/// assert_eq!(gov.reserved(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Governor {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

struct State {
    budget: u64,
    reserved: u64,
    /// Bytes held by [`FixedReservation`]s (included in `reserved`).
    fixed: u64,
    peak_reserved: u64,
    /// Why the breaker is open; `None` while it is closed.
    breaker: Option<String>,
    breaker_trips: u64,
    /// Waiter slots in arrival order; only ungranted waiters are here.
    queue: VecDeque<usize>,
    /// Every live waiter, granted or not.
    waiters: Slab,
    admitted: u64,
    clamped: u64,
    timed_out: u64,
    total_wait: Duration,
    tags: TagTable,
}

struct Waiter {
    requested: u64,
    tag: Tag,
    enqueued: Instant,
    waker: Option<Waker>,
    /// Bytes granted; set when the waiter leaves the queue.
    granted: Option<u64>,
}

/// Live waiters by slot. A slot is freed only by the [`Acquire`] that owns
/// it, so its index needs no generation. Slots are reused; the vector grows
/// to the largest number of simultaneous waiters and stays there.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<Waiter>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, w: Waiter) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(w);
                i
            }
            None => {
                self.slots.push(Some(w));
                self.slots.len() - 1
            }
        }
    }

    fn get_mut(&mut self, i: usize) -> &mut Waiter {
        self.slots[i].as_mut().expect("waiter slot is live")
    }

    fn remove(&mut self, i: usize) -> Waiter {
        let w = self.slots[i].take().expect("waiter slot is live");
        self.free.push(i);
        w
    }
}

/// Per-tag counters. Tags are few (one per kind of operation), so a short
/// vector searched by pointer first is cheaper than hashing the tag string
/// on every grant and release.
#[derive(Default)]
struct TagTable {
    entries: Vec<(Tag, TagCounters)>,
}

impl TagTable {
    fn get_mut(&mut self, tag: Tag) -> &mut TagCounters {
        let pos = self
            .entries
            .iter()
            .position(|(t, _)| std::ptr::eq(*t, tag))
            .or_else(|| self.entries.iter().position(|(t, _)| *t == tag));
        let i = pos.unwrap_or_else(|| {
            self.entries.push((tag, TagCounters::default()));
            self.entries.len() - 1
        });
        &mut self.entries[i].1
    }
}

#[derive(Default, Clone, Copy)]
struct TagCounters {
    reserved: u64,
    peak: u64,
    admitted: u64,
}

/// Wakers collected under the lock and woken after it is released, so a
/// woken task never contends with the waker for the lock.
struct WakeList {
    wakers: [Option<Waker>; 32],
    len: usize,
}

impl WakeList {
    fn new() -> Self {
        WakeList {
            wakers: Default::default(),
            len: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.len == self.wakers.len()
    }
    fn push(&mut self, w: Waker) {
        self.wakers[self.len] = Some(w);
        self.len += 1;
    }
    fn wake_all(&mut self) {
        for w in self.wakers[..self.len].iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        self.len = 0;
    }
}

impl State {
    /// The most one request may hold: the budget less fixed reservations
    /// (at least one byte, so a clamped request is still granted).
    fn working(&self) -> u64 {
        self.budget.saturating_sub(self.fixed).max(1)
    }

    /// Bytes a request of `requested` will hold if granted now.
    fn grant_size(&self, requested: u64) -> u64 {
        requested.min(self.working())
    }

    fn fits(&self, requested: u64) -> bool {
        self.breaker.is_none() && self.reserved + self.grant_size(requested) <= self.budget
    }

    /// Books a grant; returns the bytes granted.
    fn book(&mut self, requested: u64, tag: Tag) -> u64 {
        let bytes = self.grant_size(requested);
        self.reserved += bytes;
        self.peak_reserved = self.peak_reserved.max(self.reserved);
        self.admitted += 1;
        if bytes < requested {
            self.clamped += 1;
        }
        let t = self.tags.get_mut(tag);
        t.reserved += bytes;
        t.peak = t.peak.max(t.reserved);
        t.admitted += 1;
        bytes
    }

    fn unbook(&mut self, bytes: u64, tag: Tag) {
        self.reserved -= bytes;
        self.tags.get_mut(tag).reserved -= bytes;
    }

    /// Grants queued waiters, in order, while the head fits. Stops early
    /// when `wakes` is full; returns whether more may be grantable.
    fn dispatch(&mut self, wakes: &mut WakeList) -> bool {
        while let Some(&id) = self.queue.front() {
            if wakes.is_full() {
                return true;
            }
            let w = self.waiters.get_mut(id);
            let (requested, tag) = (w.requested, w.tag);
            if !self.fits(requested) {
                return false;
            }
            self.queue.pop_front();
            let bytes = self.book(requested, tag);
            let w = self.waiters.get_mut(id);
            self.total_wait += w.enqueued.elapsed();
            w.granted = Some(bytes);
            if let Some(waker) = w.waker.take() {
                wakes.push(waker);
            }
        }
        false
    }

    fn top_consumers(&self) -> Vec<(Tag, u64)> {
        let mut top: Vec<(Tag, u64)> = self
            .tags
            .entries
            .iter()
            .filter(|(_, t)| t.reserved > 0)
            .map(|(tag, t)| (*tag, t.reserved))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(TOP_CONSUMERS);
        top
    }
}

impl Governor {
    /// A governor that hands out at most `budget` bytes at a time. A budget
    /// of 0 is raised to 1 byte so that clamped requests still make progress.
    pub fn new(budget: u64) -> Self {
        Governor {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    budget: budget.max(1),
                    reserved: 0,
                    fixed: 0,
                    peak_reserved: 0,
                    breaker: None,
                    breaker_trips: 0,
                    queue: VecDeque::new(),
                    waiters: Slab::default(),
                    admitted: 0,
                    clamped: 0,
                    timed_out: 0,
                    total_wait: Duration::ZERO,
                    tags: TagTable::default(),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Waits until `bytes` can be reserved whole, then returns a permit that
    /// holds them until it is dropped. See the [module docs](self) for
    /// fairness and clamping.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the returned future at any point leaks nothing.
    pub fn acquire(&self, bytes: u64, tag: Tag) -> Acquire {
        Acquire {
            inner: self.inner.clone(),
            requested: bytes,
            tag,
            state: AcquireState::Idle,
        }
    }

    /// Like [`acquire`](Self::acquire), but gives up after `timeout` with an
    /// error that says what was asked, what is held and by whom.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`acquire`](Self::acquire).
    pub async fn acquire_timeout(
        &self,
        bytes: u64,
        tag: Tag,
        timeout: Duration,
    ) -> Result<Permit, AcquireTimeout> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.acquire(bytes, tag)).await {
            Ok(permit) => Ok(permit),
            Err(_) => {
                // The acquire future is dropped by now: its bytes are back.
                let mut st = self.lock();
                st.timed_out += 1;
                Err(AcquireTimeout {
                    requested: bytes,
                    tag,
                    reserved: st.reserved,
                    budget: st.budget,
                    waiters: st.queue.len(),
                    waited: started.elapsed(),
                    breaker: st.breaker.clone(),
                    top_consumers: st.top_consumers(),
                })
            }
        }
    }

    /// Reserves `bytes` only if that is possible right now without waiting
    /// and without overtaking a queued waiter.
    pub fn try_acquire(&self, bytes: u64, tag: Tag) -> Result<Permit, TryAcquireError> {
        let mut st = self.lock();
        if st.queue.is_empty() && st.fits(bytes) {
            let granted = st.book(bytes, tag);
            drop(st);
            return Ok(Permit::new(self.inner.clone(), granted, bytes, tag));
        }
        Err(TryAcquireError {
            requested: bytes,
            reserved: st.reserved,
            budget: st.budget,
            waiters: st.queue.len(),
            breaker_open: st.breaker.is_some(),
        })
    }

    /// Reserves `bytes` for buffers held for a whole job, at once or not
    /// at all: it fails, without waiting, unless `bytes` fit now *and* at
    /// least `leave` bytes of working budget remain beside every fixed
    /// reservation (so that the job's per-item requests can be granted).
    /// Fixed bytes are taken out of what later requests are clamped to; see
    /// the [module docs](self).
    ///
    /// ```
    /// use headroom_governor::Governor;
    ///
    /// let gov = Governor::new(8 << 20);
    /// let queue = gov.reserve_fixed(1 << 20, "job.queue", 4 << 20).unwrap();
    /// assert_eq!(gov.working_budget(), 7 << 20);
    /// // More than is left beside the queue: refused, with the numbers.
    /// let e = gov.reserve_fixed(4 << 20, "job.batches", 4 << 20).unwrap_err();
    /// assert_eq!(e.short_by(), 1 << 20);
    /// drop(queue);
    /// assert_eq!(gov.working_budget(), 8 << 20);
    /// ```
    pub fn reserve_fixed(
        &self,
        bytes: u64,
        tag: Tag,
        leave: u64,
    ) -> Result<FixedReservation, ReserveFixedError> {
        let mut st = self.lock();
        let needed = st.fixed + bytes + leave;
        let fits_now = st.queue.is_empty()
            && st.breaker.is_none()
            && st.reserved + bytes <= st.budget
            && needed <= st.budget;
        if !fits_now {
            return Err(ReserveFixedError {
                requested: bytes,
                tag,
                leave,
                fixed: st.fixed,
                reserved: st.reserved,
                budget: st.budget,
            });
        }
        st.book(bytes, tag);
        st.fixed += bytes;
        drop(st);
        Ok(FixedReservation {
            inner: self.inner.clone(),
            bytes,
            tag,
        })
    }

    /// The current budget in bytes.
    pub fn budget(&self) -> u64 {
        self.lock().budget
    }

    /// The most a single request can be granted: the budget less what
    /// [`FixedReservation`]s hold. Size per-item buffers from this.
    pub fn working_budget(&self) -> u64 {
        self.lock().working()
    }

    /// Bytes held by [`FixedReservation`]s now.
    pub fn fixed(&self) -> u64 {
        self.lock().fixed
    }

    /// Bytes held by live permits now.
    pub fn reserved(&self) -> u64 {
        self.lock().reserved
    }

    /// Changes the budget. Lowering it revokes nothing: new grants stop
    /// until held permits drop below the new budget. Raising it grants
    /// queued requests that now fit.
    pub fn set_budget(&self, budget: u64) {
        let mut st = self.lock();
        st.budget = budget.max(1);
        dispatch_and_wake(st, &self.inner);
    }

    /// Stops all new grants until [`close_breaker`](Self::close_breaker).
    /// `reason` is reported by [`stats`](Self::stats) and in timeout errors.
    pub fn open_breaker(&self, reason: impl Into<String>) {
        let mut st = self.lock();
        if st.breaker.is_none() {
            st.breaker_trips += 1;
        }
        st.breaker = Some(reason.into());
    }

    /// Resumes granting after [`open_breaker`](Self::open_breaker).
    pub fn close_breaker(&self) {
        let mut st = self.lock();
        st.breaker = None;
        dispatch_and_wake(st, &self.inner);
    }

    /// Whether the breaker is open now.
    pub fn breaker_open(&self) -> bool {
        self.lock().breaker.is_some()
    }

    /// A consistent snapshot of the governor's counters.
    pub fn stats(&self) -> GovernorStats {
        let st = self.lock();
        let mut tags: Vec<TagStats> = st
            .tags
            .entries
            .iter()
            .map(|(tag, t)| TagStats {
                tag,
                reserved: t.reserved,
                peak: t.peak,
                admitted: t.admitted,
            })
            .collect();
        tags.sort_by(|a, b| a.tag.cmp(b.tag));
        GovernorStats {
            budget: st.budget,
            fixed: st.fixed,
            reserved: st.reserved,
            peak_reserved: st.peak_reserved,
            waiters: st.queue.len(),
            admitted: st.admitted,
            clamped: st.clamped,
            timed_out: st.timed_out,
            total_wait: st.total_wait,
            breaker: st.breaker.clone(),
            breaker_trips: st.breaker_trips,
            tags,
        }
    }
}

impl fmt::Debug for Governor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Governor")
            .field("budget", &st.budget)
            .field("reserved", &st.reserved)
            .field("waiters", &st.queue.len())
            .finish()
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave the counters half
    // updated (every update is a few arithmetic steps), so poisoning is
    // ignored rather than spreading the panic to every task.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs [`State::dispatch`] until it is done, waking granted waiters
/// outside the lock.
fn dispatch_and_wake<'a>(mut st: MutexGuard<'a, State>, inner: &'a Inner) {
    if st.queue.is_empty() {
        return;
    }
    let mut wakes = WakeList::new();
    loop {
        let more = st.dispatch(&mut wakes);
        drop(st);
        wakes.wake_all();
        if !more {
            return;
        }
        st = lock(inner);
    }
}

fn release(inner: &Inner, bytes: u64, tag: Tag) {
    let mut st = lock(inner);
    st.unbook(bytes, tag);
    dispatch_and_wake(st, inner);
}

/// Bytes reserved from a [`Governor`], returned when this is dropped.
#[must_use = "a permit releases its bytes as soon as it is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
    bytes: u64,
    requested: u64,
    tag: Tag,
}

impl Permit {
    fn new(inner: Arc<Inner>, bytes: u64, requested: u64, tag: Tag) -> Self {
        Permit {
            inner,
            bytes,
            requested,
            tag,
        }
    }

    /// Bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes originally asked for; larger than [`bytes`](Self::bytes) when
    /// the request was clamped to the budget.
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// Whether the request was larger than the budget and was clamped.
    pub fn is_clamped(&self) -> bool {
        self.bytes < self.requested
    }

    /// What the bytes are for.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Gives back everything above `bytes` now (no-op if already smaller),
    /// waking waiters that now fit.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let freed = self.bytes - bytes;
            self.bytes = bytes;
            self.requested = self.requested.min(bytes);
            release(&self.inner, freed, self.tag);
        }
    }

    /// Moves `bytes` (at most all of them) out of this permit into a new one
    /// with the same tag. The total reserved does not change.
    pub fn split(&mut self, bytes: u64) -> Permit {
        let moved = bytes.min(self.bytes);
        self.bytes -= moved;
        self.requested = self.requested.saturating_sub(moved);
        Permit::new(self.inner.clone(), moved, moved, self.tag)
    }

    /// Adds `other`'s bytes to this permit; they are re-tagged with this
    /// permit's tag. Returns `other` unchanged if it belongs to another
    /// governor.
    pub fn merge(&mut self, other: Permit) -> Result<(), Permit> {
        if !Arc::ptr_eq(&self.inner, &other.inner) {
            return Err(other);
        }
        self.requested += other.requested;
        self.absorb(other);
        Ok(())
    }

    /// Takes over `other`'s bytes (same governor). `other` is left empty,
    /// so dropping it releases nothing.
    fn absorb(&mut self, mut other: Permit) {
        let moved = std::mem::take(&mut other.bytes);
        if other.tag != self.tag && moved > 0 {
            let mut st = lock(&self.inner);
            st.tags.get_mut(other.tag).reserved -= moved;
            let t = st.tags.get_mut(self.tag);
            t.reserved += moved;
            t.peak = t.peak.max(t.reserved);
        }
        self.bytes += moved;
    }

    /// Grows this permit by `additional` bytes, waiting in the FIFO queue
    /// like a new [`Governor::acquire`]. The total is clamped to the working
    /// budget ([`Governor::working_budget`]):
    /// a permit never asks for more than the whole budget, so growing never
    /// waits forever.
    ///
    /// While it waits, this permit keeps what it holds: growing is a
    /// hold-and-wait, so a task should not grow one permit while another
    /// task waits on bytes this task could release.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, this permit is unchanged and
    /// any bytes granted to the growth are returned.
    pub async fn grow(&mut self, additional: u64) {
        let working = lock(&self.inner).working();
        let want = additional.min(working.saturating_sub(self.bytes));
        let extra = Acquire {
            inner: self.inner.clone(),
            requested: want,
            tag: self.tag,
            state: AcquireState::Idle,
        }
        .await;
        self.requested += additional;
        self.absorb(extra);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.bytes > 0 {
            release(&self.inner, self.bytes, self.tag);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tag", &self.tag)
            .field("bytes", &self.bytes)
            .field("requested", &self.requested)
            .finish()
    }
}

/// Bytes held for a whole job, taken out of the working budget; see
/// [`Governor::reserve_fixed`]. Returned when dropped.
#[must_use = "a fixed reservation releases its bytes as soon as it is dropped"]
pub struct FixedReservation {
    inner: Arc<Inner>,
    bytes: u64,
    tag: Tag,
}

impl FixedReservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What they are for.
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

impl Drop for FixedReservation {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        st.fixed -= self.bytes;
        st.unbook(self.bytes, self.tag);
        // The working budget grew: a clamped waiter may now be granted more,
        // and any waiter may now fit.
        dispatch_and_wake(st, &self.inner);
    }
}

impl fmt::Debug for FixedReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedReservation")
            .field("tag", &self.tag)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// [`Governor::reserve_fixed`] could not reserve what a job needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReserveFixedError {
    /// Bytes asked for.
    pub requested: u64,
    /// What they were for.
    pub tag: Tag,
    /// Working budget that had to remain.
    pub leave: u64,
    /// Fixed bytes already held.
    pub fixed: u64,
    /// Bytes reserved at the time (fixed included).
    pub reserved: u64,
    /// The budget.
    pub budget: u64,
}

impl ReserveFixedError {
    /// The smallest budget with which this reservation would have
    /// succeeded on an otherwise idle governor.
    pub fn budget_needed(&self) -> u64 {
        self.fixed + self.requested + self.leave
    }

    /// How many bytes the budget lacks.
    pub fn short_by(&self) -> u64 {
        self.budget_needed().saturating_sub(self.budget)
    }
}

impl fmt::Display for ReserveFixedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reserve {} for {} and keep {} for the rest of the job: the budget is {}, {} already fixed, {} reserved; it needs at least {}",
            ByteSize(self.requested),
            self.tag,
            ByteSize(self.leave),
            ByteSize(self.budget),
            ByteSize(self.fixed),
            ByteSize(self.reserved),
            ByteSize(self.budget_needed())
        )
    }
}

impl std::error::Error for ReserveFixedError {}

enum AcquireState {
    Idle,
    Queued(usize),
    Done,
}

/// The future returned by [`Governor::acquire`].
///
/// # Cancel safety
///
/// Dropping it returns any bytes it was granted and removes it from the
/// queue, waking the waiters behind it if they now fit.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    inner: Arc<Inner>,
    requested: u64,
    tag: Tag,
    state: AcquireState,
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let this = self.get_mut();
        match this.state {
            AcquireState::Idle => {
                let mut st = lock(&this.inner);
                if st.queue.is_empty() && st.fits(this.requested) {
                    let bytes = st.book(this.requested, this.tag);
                    drop(st);
                    this.state = AcquireState::Done;
                    return Poll::Ready(Permit::new(
                        this.inner.clone(),
                        bytes,
                        this.requested,
                        this.tag,
                    ));
                }
                let id = st.waiters.insert(Waiter {
                    requested: this.requested,
                    tag: this.tag,
                    enqueued: Instant::now(),
                    waker: Some(cx.waker().clone()),
                    granted: None,
                });
                st.queue.push_back(id);
                this.state = AcquireState::Queued(id);
                Poll::Pending
            }
            AcquireState::Queued(id) => {
                let mut st = lock(&this.inner);
                let w = st.waiters.get_mut(id);
                if let Some(bytes) = w.granted {
                    st.waiters.remove(id);
                    drop(st);
                    this.state = AcquireState::Done;
                    return Poll::Ready(Permit::new(
                        this.inner.clone(),
                        bytes,
                        this.requested,
                        this.tag,
                    ));
                }
                match &mut w.waker {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            AcquireState::Done => panic!("`Acquire` polled after it completed"),
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let AcquireState::Queued(id) = self.state else {
            return;
        };
        let mut st = lock(&self.inner);
        let w = st.waiters.remove(id);
        match w.granted {
            // Granted but never observed: give the bytes back.
            Some(bytes) => st.unbook(bytes, w.tag),
            None => {
                if let Some(pos) = st.queue.iter().position(|&q| q == id) {
                    st.queue.remove(pos);
                }
            }
        }
        // Either bytes came back or the head of the queue may have changed.
        dispatch_and_wake(st, &self.inner);
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("tag", &self.tag)
            .field("requested", &self.requested)
            .finish()
    }
}

/// [`Governor::acquire_timeout`] gave up. The message names the request,
/// what is reserved against what budget, how long it waited and who holds
/// the most.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcquireTimeout {
    /// Bytes asked for.
    pub requested: u64,
    /// What they were for.
    pub tag: Tag,
    /// Bytes reserved (by all holders) when it gave up.
    pub reserved: u64,
    /// The budget when it gave up.
    pub budget: u64,
    /// Requests still waiting.
    pub waiters: usize,
    /// How long it waited.
    pub waited: Duration,
    /// Why the breaker was open, if it was.
    pub breaker: Option<String>,
    /// The largest holders by tag, largest first.
    pub top_consumers: Vec<(Tag, u64)>,
}

impl fmt::Display for AcquireTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1?} waiting to reserve {} for {}: {} of {} reserved, {} other request(s) waiting",
            self.waited,
            ByteSize(self.requested),
            self.tag,
            ByteSize(self.reserved),
            ByteSize(self.budget),
            self.waiters
        )?;
        if let Some(reason) = &self.breaker {
            write!(f, "; memory breaker open: {reason}")?;
        }
        if !self.top_consumers.is_empty() {
            write!(f, "; top consumers:")?;
            for (i, (tag, bytes)) in self.top_consumers.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{tag} {}", ByteSize(*bytes))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for AcquireTimeout {}

/// [`Governor::try_acquire`] could not reserve without waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TryAcquireError {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes reserved at the time.
    pub reserved: u64,
    /// The budget at the time.
    pub budget: u64,
    /// Requests queued ahead.
    pub waiters: usize,
    /// Whether the breaker was open.
    pub breaker_open: bool,
}

impl fmt::Display for TryAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reserve {} now: {} of {} reserved, {} request(s) queued{}",
            ByteSize(self.requested),
            ByteSize(self.reserved),
            ByteSize(self.budget),
            self.waiters,
            if self.breaker_open {
                ", memory breaker open"
            } else {
                ""
            }
        )
    }
}

impl std::error::Error for TryAcquireError {}

/// A snapshot of a governor's counters; see [`Governor::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GovernorStats {
    /// The budget in bytes.
    pub budget: u64,
    /// Bytes held by fixed reservations (part of `reserved`).
    pub fixed: u64,
    /// Bytes held by live permits.
    pub reserved: u64,
    /// The most ever held at once.
    pub peak_reserved: u64,
    /// Requests waiting in the queue.
    pub waiters: usize,
    /// Requests granted so far.
    pub admitted: u64,
    /// Granted requests that were clamped to the budget.
    pub clamped: u64,
    /// `acquire_timeout` calls that gave up.
    pub timed_out: u64,
    /// Total time granted requests spent queued.
    pub total_wait: Duration,
    /// Why the breaker is open, if it is.
    pub breaker: Option<String>,
    /// How many times the breaker has opened.
    pub breaker_trips: u64,
    /// Per-tag counters, sorted by tag.
    pub tags: Vec<TagStats>,
}

/// Counters for one [`Tag`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TagStats {
    /// The tag.
    pub tag: Tag,
    /// Bytes held now.
    pub reserved: u64,
    /// The most held at once.
    pub peak: u64,
    /// Requests granted.
    pub admitted: u64,
}
