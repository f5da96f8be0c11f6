//! The crypto worker pool: the readers (TUN, UDP) hand batches of packets
//! to a few worker tasks that encrypt or decrypt them and write the
//! results, so that reading, crypto and writing run on different cores of a
//! multi-threaded runtime.
//!
//! Order: a batch goes to the worker chosen by its key (the peer on the way
//! out, the sending address on the way in), and each worker handles its
//! batches in arrival order, so the packets of one peer (and so of every
//! flow through it) are never reordered. boringtun's `Tunn` holds a peer's
//! send counter and session behind one lock, so one peer's packets are not
//! encrypted in parallel; the pool parallelises across peers and across the
//! pipeline stages.

use std::io;
use std::sync::Mutex;

use tokio::sync::mpsc;

/// Batches a worker may have queued before its reader waits (back-pressure
/// reaches the TUN queue or the socket buffer instead of memory).
const QUEUE: usize = 4;
/// The pool's size: the cores available, at most 4 (the readers and the
/// timers need the rest).
const MAX_WORKERS: usize = 4;

/// How many workers each direction gets.
pub(super) fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS)
}

/// The senders of a set of workers.
pub(super) struct Workers<J> {
    queues: Vec<mpsc::Sender<J>>,
}

impl<J: Send + 'static> Workers<J> {
    /// `count` queues, and the receiving ends for the worker tasks.
    pub(super) fn new(count: usize) -> (Self, Vec<mpsc::Receiver<J>>) {
        let (queues, receivers) = (0..count.max(1)).map(|_| mpsc::channel(QUEUE)).unzip();
        (Workers { queues }, receivers)
    }

    /// Queues `job` on the worker for `key`, waiting while its queue is full.
    pub(super) async fn dispatch(&self, key: usize, job: J) -> io::Result<()> {
        self.queues[key % self.queues.len()]
            .send(job)
            .await
            .map_err(|_| io::Error::other("a crypto worker stopped"))
    }
}

/// Buffers handed back by the workers for the readers to reuse (large
/// buffers would otherwise be mapped and unmapped per batch).
pub(super) struct Buffers<T> {
    free: Mutex<Vec<T>>,
}

impl<T> Buffers<T> {
    pub(super) fn new() -> Self {
        Buffers {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A free buffer, or a new one from `make`.
    pub(super) fn take(&self, make: impl FnOnce() -> T) -> T {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(make)
    }

    /// Hands a buffer back.
    pub(super) fn put(&self, buffer: T) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_always_reaches_the_same_worker_in_order() {
        let (workers, mut receivers) = Workers::new(3);
        for i in 0..4usize {
            workers.dispatch(7, i).await.unwrap();
        }
        let got: Vec<usize> = std::iter::from_fn(|| receivers[7 % 3].try_recv().ok()).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(receivers[0].try_recv().is_err() && receivers[2].try_recv().is_err());
    }

    #[test]
    fn buffers_are_reused() {
        let buffers = Buffers::new();
        let mut made = 0;
        let a: Vec<u8> = buffers.take(|| {
            made += 1;
            Vec::with_capacity(10)
        });
        buffers.put(a);
        let _b: Vec<u8> = buffers.take(|| {
            made += 1;
            Vec::new()
        });
        assert_eq!(made, 1);
    }
}
