//! A multi-producer, single-consumer channel bounded in bytes *and* items.
//!
//! A channel bounded only by item count holds an unknown amount of memory:
//! 100 items of 4 KiB or 100 items of 40 MiB. This one is bounded by both.
//!
//! # Semantics
//!
//! * [`Sender::send`] waits until the item's bytes fit in the remaining byte
//!   capacity *and* an item slot is free. Senders waiting for bytes are
//!   served in FIFO order, like [`Governor`] waiters.
//! * An item larger than the whole byte capacity is admitted only when the
//!   channel holds no bytes at all, and then fills it alone. It is never
//!   refused: a consumer that streams it can still make progress.
//! * Capacity is returned the moment [`Receiver::recv`] hands an item out.
//! * The channel's own byte bound says how much may *wait* in it. The memory
//!   an item holds is paid for by a governor [`Permit`] that
//!   travels with it: send `(item, permit)` and the permit is released only
//!   when the consumer drops it, after the item is gone.
//!
//! * What an item counts is its [`Footprint`]: the item says how many
//!   bytes it holds, so no caller passes sizes by hand (and none can pass
//!   a wrong one).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use headroom_governor::{channel, Governor};
//!
//! let gov = Governor::new(1 << 20);
//! let (tx, mut rx) = channel::bounded::<(Vec<u8>, headroom_governor::Permit)>(64 << 10, 16);
//! let permit = gov.acquire(4096, "example.chunk").await;
//! tx.send((vec![7; 4096], permit)).await.unwrap(); // counts 4096 bytes
//! let (chunk, permit) = rx.recv().await.unwrap();
//! assert_eq!(chunk.len() as u64, permit.bytes());
//! # }
//! ```

use std::fmt;

use tokio::sync::mpsc;

use crate::{Governor, Permit};

const CHANNEL_TAG: &str = "channel.queued";

/// The bytes an item holds while it waits in a [`bounded`] channel, which
/// is what the channel counts against its byte bound (as Vector's
/// `InMemoryBufferable` does for its buffers).
pub trait Footprint {
    /// Bytes this item holds: its own size and what it owns on the heap.
    fn footprint(&self) -> u64;
}

impl Footprint for Vec<u8> {
    fn footprint(&self) -> u64 {
        (std::mem::size_of::<Self>() + self.capacity()) as u64
    }
}

impl Footprint for String {
    fn footprint(&self) -> u64 {
        (std::mem::size_of::<Self>() + self.capacity()) as u64
    }
}

/// An item with the governor permit that pays for its buffers: the
/// channel counts the item, the permit pays for its memory.
impl<T: Footprint> Footprint for (T, Permit) {
    fn footprint(&self) -> u64 {
        self.0.footprint()
    }
}

/// Results of a stage (an item or a per-item error) weigh what they hold.
impl<T: Footprint, E: Footprint> Footprint for Result<T, E> {
    fn footprint(&self) -> u64 {
        match self {
            Ok(t) => t.footprint(),
            Err(e) => e.footprint(),
        }
    }
}

/// Creates a channel holding at most `max_bytes` bytes and `max_items` items
/// (each at least 1).
pub fn bounded<T>(max_bytes: u64, max_items: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(max_items.max(1));
    let bytes = Governor::new(max_bytes);
    (
        Sender {
            tx,
            bytes: bytes.clone(),
        },
        Receiver { rx, bytes },
    )
}

/// The sending half; clone it for more producers.
pub struct Sender<T> {
    tx: mpsc::Sender<(T, Permit)>,
    bytes: Governor,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
        }
    }
}

/// The receiving half.
pub struct Receiver<T> {
    rx: mpsc::Receiver<(T, Permit)>,
    bytes: Governor,
}

/// The receiver is gone; the item comes back.
#[derive(PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the receiving stage has stopped")
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Why [`Sender::try_send`] did not send; the item comes back.
#[derive(PartialEq, Eq)]
pub enum TrySendError<T> {
    /// No room for the bytes or no free item slot right now.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "Full(..)",
            TrySendError::Closed(_) => "Closed(..)",
        })
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "the channel is full",
            TrySendError::Closed(_) => "the receiving stage has stopped",
        })
    }
}

impl<T> std::error::Error for TrySendError<T> {}

impl<T> Sender<T> {
    /// Sends `item`, counted as its [`Footprint`], waiting while the
    /// channel is full.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaks no capacity, but if it was dropped before
    /// completing, the item was not sent and is dropped with it (as with
    /// `tokio::sync::mpsc::Sender::send`).
    pub async fn send(&self, item: T) -> Result<(), SendError<T>>
    where
        T: Footprint,
    {
        let bytes = item.footprint();
        if self.tx.is_closed() {
            return Err(SendError(item));
        }
        let permit = self.bytes.acquire(bytes, CHANNEL_TAG).await;
        self.tx
            .send((item, permit))
            .await
            .map_err(|e| SendError(e.0.0))
    }

    /// Sends `item` only if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>>
    where
        T: Footprint,
    {
        let bytes = item.footprint();
        if self.tx.is_closed() {
            return Err(TrySendError::Closed(item));
        }
        let Ok(permit) = self.bytes.try_acquire(bytes, CHANNEL_TAG) else {
            return Err(TrySendError::Full(item));
        };
        self.tx.try_send((item, permit)).map_err(|e| match e {
            mpsc::error::TrySendError::Full((item, _)) => TrySendError::Full(item),
            mpsc::error::TrySendError::Closed((item, _)) => TrySendError::Closed(item),
        })
    }

    /// Bytes waiting in the channel.
    pub fn queued_bytes(&self) -> u64 {
        self.bytes.reserved()
    }

    /// Items waiting in the channel.
    pub fn queued_items(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T> Receiver<T> {
    /// Takes the next item, waiting for one; `None` once every sender is
    /// gone and the channel is empty. The item's capacity is returned to
    /// the senders before this returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no item
    /// was taken.
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await.map(|(item, _capacity)| item)
    }

    /// Takes the next item if there is one now.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok().map(|(item, _capacity)| item)
    }

    /// Stops accepting items; items already queued can still be received.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// Bytes waiting in the channel.
    pub fn queued_bytes(&self) -> u64 {
        self.bytes.reserved()
    }

    /// Items waiting in the channel.
    pub fn queued_items(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const SHORT: Duration = Duration::from_millis(50);

    /// An item with an id that says how many bytes it weighs.
    #[derive(Debug, PartialEq, Eq)]
    struct Item(u32, u64);

    impl Footprint for Item {
        fn footprint(&self) -> u64 {
            self.1
        }
    }

    fn id(i: Option<Item>) -> Option<u32> {
        i.map(|i| i.0)
    }

    #[tokio::test]
    async fn send_waits_when_bytes_are_full_and_resumes_when_received() {
        let (tx, mut rx) = bounded::<Item>(100, 10);
        tx.send(Item(1, 60)).await.unwrap();
        tx.send(Item(2, 40)).await.unwrap();
        assert_eq!((tx.queued_bytes(), tx.queued_items()), (100, 2));
        assert!(
            timeout(SHORT, tx.send(Item(3, 1))).await.is_err(),
            "full in bytes"
        );
        assert_eq!(id(rx.recv().await), Some(1));
        assert_eq!(tx.queued_bytes(), 40, "capacity returned on receive");
        timeout(SHORT, tx.send(Item(3, 60))).await.unwrap().unwrap();
        assert_eq!(id(rx.recv().await), Some(2));
        assert_eq!(id(rx.recv().await), Some(3));
    }

    #[tokio::test]
    async fn send_waits_when_items_are_full() {
        let (tx, mut rx) = bounded::<Item>(1 << 20, 2);
        tx.send(Item(1, 1)).await.unwrap();
        tx.send(Item(2, 1)).await.unwrap();
        assert!(
            timeout(SHORT, tx.send(Item(3, 1))).await.is_err(),
            "full in items"
        );
        assert_eq!(
            tx.queued_bytes(),
            2,
            "the cancelled send left nothing behind"
        );
        assert!(matches!(
            tx.try_send(Item(3, 1)),
            Err(TrySendError::Full(Item(3, 1)))
        ));
        rx.recv().await.unwrap();
        tx.try_send(Item(3, 1)).unwrap();
    }

    #[tokio::test]
    async fn oversized_item_enters_only_an_empty_channel() {
        let (tx, mut rx) = bounded::<Item>(100, 10);
        tx.send(Item(1, 10)).await.unwrap();
        let tx2 = tx.clone();
        let big = tokio::spawn(async move { tx2.send(Item(2, 1000)).await });
        tokio::time::sleep(SHORT).await;
        assert!(!big.is_finished(), "must wait for the channel to empty");
        assert_eq!(id(rx.recv().await), Some(1));
        big.await.unwrap().unwrap();
        assert_eq!(
            tx.queued_bytes(),
            100,
            "the big item fills the channel alone"
        );
        assert!(matches!(
            tx.try_send(Item(3, 1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(id(rx.recv().await), Some(2));
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn permits_travel_with_items_until_the_consumer_drops_them() {
        let gov = Governor::new(1000);
        let (tx, mut rx) = bounded(1 << 20, 10);
        let p = gov.acquire(300, "test.item").await;
        tx.send((vec![0u8; 300], p)).await.unwrap();
        assert_eq!(gov.reserved(), 300, "paid for while queued");
        assert!(tx.queued_bytes() >= 300, "the buffer is counted");
        let (buf, permit) = rx.recv().await.unwrap();
        assert_eq!(rx.queued_bytes(), 0);
        assert_eq!(
            gov.reserved(),
            300,
            "still paid for while the consumer holds it"
        );
        drop(buf);
        drop(permit);
        assert_eq!(gov.reserved(), 0);
    }

    #[tokio::test]
    async fn closed_receiver_fails_sends_and_returns_items() {
        let (tx, rx) = bounded::<Item>(100, 10);
        tx.send(Item(1, 100)).await.unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(Item(2, 50)).await });
        tokio::time::sleep(SHORT).await;
        drop(rx);
        let err = blocked.await.unwrap().unwrap_err();
        assert_eq!(err.0, Item(2, 50));
        assert!(matches!(
            tx.try_send(Item(3, 1)),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(
            tx.queued_bytes(),
            0,
            "queued items were dropped with the receiver"
        );
    }

    #[tokio::test]
    async fn recv_returns_none_after_all_senders_are_gone() {
        let (tx, mut rx) = bounded::<Item>(10, 10);
        tx.send(Item(1, 1)).await.unwrap();
        drop(tx);
        assert_eq!(id(rx.recv().await), Some(1));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn footprints_of_buffers_results_and_permitted_items() {
        let v = Vec::with_capacity(100);
        assert_eq!(v.footprint(), 24 + 100);
        let r: Result<Vec<u8>, String> = Err(String::with_capacity(10));
        assert_eq!(r.footprint(), 24 + 10);
    }
}
