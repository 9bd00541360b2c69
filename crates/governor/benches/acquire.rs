//! Governor acquire/release against `tokio::sync::Semaphore::acquire_many`,
//! the closest primitive tokio offers (permits as KiB).
//!
//! `cargo bench -p headroom-governor --bench acquire`

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use divan::Bencher;
use divan::counter::ItemsCount;
use headroom_governor::Governor;
use tokio::sync::Semaphore;

fn main() {
    divan::main();
}

/// Polls a future that is expected to be ready at once.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("uncontended acquire must be ready"),
    }
}

#[divan::bench]
fn uncontended_governor_acquire(b: Bencher) {
    let gov = Governor::new(1 << 30);
    b.bench_local(|| drop(now(gov.acquire(64 << 10, "bench"))));
}

#[divan::bench]
fn uncontended_governor_try_acquire(b: Bencher) {
    let gov = Governor::new(1 << 30);
    b.bench_local(|| drop(gov.try_acquire(64 << 10, "bench").unwrap()));
}

#[divan::bench]
fn uncontended_semaphore_acquire_many(b: Bencher) {
    let sem = Semaphore::new(1 << 20);
    b.bench_local(|| drop(now(sem.acquire_many(64)).unwrap()));
}

const TASKS: u64 = 32;
const ROUNDS: u64 = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Sizes 1..=256 KiB from a per-task xorshift sequence.
fn sizes(task: u64) -> impl Iterator<Item = u64> {
    let mut x = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + x % 256
    })
}

/// 32 tasks x 500 acquire/yield/release of 1-256 KiB against a 1 MiB
/// budget: about 8 requests fit at once, the rest queue.
#[divan::bench(sample_count = 20)]
fn contended_governor(b: Bencher) {
    let rt = runtime();
    b.counter(ItemsCount::new(TASKS * ROUNDS)).bench_local(|| {
        rt.block_on(async {
            let gov = Governor::new(1 << 20);
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let gov = gov.clone();
                    tokio::spawn(async move {
                        for kib in sizes(t).take(ROUNDS as usize) {
                            let _p = gov.acquire(kib << 10, "bench").await;
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}

#[divan::bench(sample_count = 20)]
fn contended_semaphore(b: Bencher) {
    let rt = runtime();
    b.counter(ItemsCount::new(TASKS * ROUNDS)).bench_local(|| {
        rt.block_on(async {
            let sem = Arc::new(Semaphore::new(1024));
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let sem = sem.clone();
                    tokio::spawn(async move {
                        for kib in sizes(t).take(ROUNDS as usize) {
                            let _p = sem.acquire_many(kib as u32).await.unwrap();
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}
