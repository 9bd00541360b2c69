//! # headroom-governor
//!
//! Admit work by bytes, not by workers.
//!
//! Data movers get OOM-killed because they bound *concurrency* (50 workers,
//! then 25, then 10, then 3) while what runs out is *memory*. This crate
//! bounds memory directly: every operation asks a [`Governor`] for the bytes
//! its buffers will hold, before it allocates them, and holds the returned
//! [`Permit`] until the buffers are gone. Concurrency is then whatever fits
//! in the budget, decided at run time by the actual sizes involved.
//!
//! | piece | what it is for |
//! |---|---|
//! | [`Governor`], [`Permit`] | a byte budget handed out whole, FIFO, as RAII permits that can shrink, split, merge and grow |
//! | [`channel::bounded`] | an mpsc channel bounded in bytes *and* items, so queues between stages hold a known amount of memory |
//! | [`BudgetPolicy`], [`CgroupMemory`], [`parse_size`] | where the budget comes from: `--memory 512MiB`, the container's cgroup limit, or physical memory |
//! | [`MemoryProbe`], [`breaker`] | what the kernel really sees (RSS, cgroup usage, PSI); stops admissions near the real limit |
//! | [`CountingAlloc`], [`alloc::measure_peak`] | a global allocator that counts bytes, to *test* that reservations are honest |
//!
//! ## Example
//!
//! Copy many chunks concurrently, each paying for its buffer; at most
//! `budget` bytes of buffers exist at any moment whatever the number of
//! tasks:
//!
//! ```
//! use headroom_governor::Governor;
//!
//! # #[tokio::main]
//! # async fn main() {
//! let gov = Governor::new(4 << 20); // 4 MiB for buffers
//! let mut tasks = Vec::new();
//! for i in 0..64u8 {
//!     let gov = gov.clone();
//!     tasks.push(tokio::spawn(async move {
//!         let permit = gov.acquire(1 << 20, "example.chunk").await;
//!         let buf = vec![i; permit.bytes() as usize]; // paid for
//!         tokio::task::yield_now().await;
//!         buf.len()
//!     }));
//! }
//! for t in tasks {
//!     assert_eq!(t.await.unwrap(), 1 << 20);
//! }
//! let stats = gov.stats();
//! assert!(stats.peak_reserved <= 4 << 20);
//! assert_eq!((stats.reserved, stats.admitted), (0, 64));
//! # }
//! ```
//!
//! ## Honest reservations
//!
//! A governor is only as good as the numbers it is given. The footprint of
//! each operation must be a named function of its real buffers, and a test
//! must run the real code path under [`CountingAlloc`] and assert that the
//! measured peak stays within what was reserved (see
//! `tests/honest_reservation.rs` for the pattern).

#![warn(missing_docs)]

pub mod alloc;
pub mod breaker;
pub mod budget;
pub mod channel;
pub mod governor;
pub mod probe;
pub mod size;

pub use alloc::CountingAlloc;
pub use budget::{BudgetDecision, BudgetPolicy, BudgetSource, CgroupMemory, CgroupVersion};
pub use governor::{
    Acquire, AcquireTimeout, FixedReservation, Governor, GovernorStats, Permit, ReserveFixedError,
    Tag, TagStats, TryAcquireError,
};
pub use probe::{MemoryProbe, MemorySample};
pub use size::{ByteSize, SizeError, parse_size};
