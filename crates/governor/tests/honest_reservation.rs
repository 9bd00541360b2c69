//! The honest-reservation pattern: run the *real* allocating path under the
//! counting allocator and check that the heap it used never exceeded what
//! it reserved from the governor.
//!
//! Every data path of headroom copies this shape:
//!
//! 1. The path's footprint is a named function of its real buffers
//!    (`chunked_copy_footprint`), never a constant that "seems enough".
//! 2. Work is admitted *before* it allocates anything, including its task:
//!    the permit is acquired first and moved into the spawned task, so the
//!    task's own state is paid for too.
//! 3. Nothing outlives its permit: tasks are detached (a kept `JoinHandle`
//!    would keep each finished task's memory alive, unpaid, until the end).
//! 4. The test asserts `measured peak heap <= peak reserved`, and a
//!    deliberately dishonest variant proves the same check fails when a path
//!    allocates more than it reserves (the failure this guards against: an
//!    encrypting proxy reserved one 8 MiB part per request while three
//!    buffers, plaintext, ciphertext and the transport's copy, were live at
//!    once, so its governor admitted about three times too much, and unit
//!    tests that asserted the reservation equal to the part size had
//!    encoded the under-count as correct).

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use headroom_governor::alloc::measure_peak_async;
use headroom_governor::{CountingAlloc, Governor};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

/// The counters are process-wide; measurements must not overlap when the
/// tests of this file share a process (`cargo test` runs them as threads).
static SERIAL: Mutex<()> = Mutex::new(());

const CHUNK: usize = 64 * 1024;
const OBJECT: usize = 1024 * 1024;
const COPIES: usize = 48;
const IN_FLIGHT: u64 = 8;

/// Heap a spawned copy task holds besides its chunk buffer: tokio's task
/// cell (header, the future's state machine, its output slot). Measured at
/// well under 2 KiB here; 4 KiB leaves room for runtime versions.
const TASK_STATE: u64 = 4 * 1024;

/// Everything one chunked copy holds at once: one chunk buffer and its task.
fn chunked_copy_footprint(chunk: usize) -> u64 {
    chunk as u64 + TASK_STATE
}

/// A sink that hashes what it is given (FNV-1a) and, like a network peer,
/// makes the writer wait once per write so that every admitted copy is
/// mid-flight at the same time.
struct SlowDigest {
    hash: u64,
    ready: bool,
}

impl SlowDigest {
    fn new() -> Self {
        SlowDigest {
            hash: 0xcbf2_9ce4_8422_2325,
            ready: false,
        }
    }
}

fn fnv(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

impl AsyncWrite for SlowDigest {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        self.hash = fnv(self.hash, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Copies `src` to a digest sink in `chunk`-sized pieces; returns the hash.
/// With `transport_copy`, each chunk is also copied into an owned buffer
/// that lives until the write completes, as an HTTP client's body would,
/// and which `chunked_copy_footprint` does not pay for.
async fn chunked_copy(mut src: &[u8], chunk: usize, transport_copy: bool) -> io::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut sink = SlowDigest::new();
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            return Ok(sink.hash);
        }
        if transport_copy {
            let owned = buf[..n].to_vec();
            sink.write_all(&owned).await?;
        } else {
            sink.write_all(&buf[..n]).await?;
        }
    }
}

struct Run {
    peak_heap: u64,
    peak_reserved: u64,
    verified: u64,
}

/// Copies `COPIES` objects, `IN_FLIGHT` copies' worth of budget at a time.
async fn run_copies(
    objects: &'static [Vec<u8>],
    want: &'static [u64],
    transport_copy: bool,
) -> Run {
    let gov = Governor::new(IN_FLIGHT * chunked_copy_footprint(CHUNK));
    let verified: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let ((), peak_heap) = measure_peak_async(async {
        for (i, object) in objects.iter().enumerate() {
            let permit = gov
                .acquire(chunked_copy_footprint(CHUNK), "test.copy")
                .await;
            // Detached: the task's memory is freed when it ends.
            drop(tokio::spawn(async move {
                let _paid = permit;
                if chunked_copy(object, CHUNK, transport_copy).await.ok() == Some(want[i]) {
                    verified.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        // Acquiring the whole budget waits until every copy has finished.
        drop(gov.acquire(u64::MAX, "test.drain").await);
    })
    .await;
    Run {
        peak_heap,
        peak_reserved: gov.stats().peak_reserved,
        verified: verified.load(Ordering::SeqCst),
    }
}

fn dataset() -> (&'static [Vec<u8>], &'static [u64]) {
    let objects: Vec<Vec<u8>> = (0..COPIES)
        .map(|i| (0..OBJECT).map(|j| (j * 31 + i * 7) as u8).collect())
        .collect();
    let hashes: Vec<u64> = objects
        .iter()
        .map(|o| fnv(0xcbf2_9ce4_8422_2325, o))
        .collect();
    (
        Box::leak(objects.into_boxed_slice()),
        Box::leak(hashes.into_boxed_slice()),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

#[test]
fn concurrent_chunked_copies_stay_within_their_reservations() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (objects, hashes) = dataset();
    let rt = runtime();
    // Warm up: the runtime allocates lazily on first use; that is not the
    // path's memory.
    rt.block_on(run_copies(objects, hashes, false));
    let run = rt.block_on(run_copies(objects, hashes, false));

    eprintln!(
        "honest: peak heap {} B, peak reserved {} B",
        run.peak_heap, run.peak_reserved
    );
    assert_eq!(run.verified, COPIES as u64, "every copy is byte-identical");
    assert!(
        run.peak_heap >= 4 * CHUNK as u64,
        "the measurement saw real concurrency (peak heap {} B); otherwise this test proves nothing",
        run.peak_heap
    );
    assert!(
        run.peak_heap <= run.peak_reserved,
        "heap peaked at {} B but only {} B were reserved: the footprint function under-counts",
        run.peak_heap,
        run.peak_reserved
    );
}

#[test]
fn a_path_that_allocates_more_than_it_reserved_is_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (objects, hashes) = dataset();
    let rt = runtime();
    rt.block_on(run_copies(objects, hashes, true));
    let run = rt.block_on(run_copies(objects, hashes, true));

    eprintln!(
        "dishonest: peak heap {} B, peak reserved {} B",
        run.peak_heap, run.peak_reserved
    );
    assert_eq!(run.verified, COPIES as u64);
    assert!(
        run.peak_heap > run.peak_reserved,
        "the transport copy is not reserved, so the check must fail: heap {} B, reserved {} B",
        run.peak_heap,
        run.peak_reserved
    );
}
