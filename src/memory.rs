//! How the replica's threads give memory back to its allocator (mimalloc, the binary's global
//! allocator).
//!
//! A block freed by a thread other than the one that allocated it (a run's record built on one
//! worker, dropped on another) goes onto its page's list of foreign frees; the page is free again
//! only once its owning thread collects that list. mimalloc (v3) collects a thread's heap on its
//! own only every 10,000 allocations that miss its fast path, and its normal collect leaves pages
//! it considers full alone. A worker that goes quiet between bursts held the pages of the last one
//! for as long as it stayed quiet, and which worker that was changed from burst to burst: resident
//! memory rose and fell by megabytes over tens of minutes while what tenure held stayed flat.
//! So each worker thread collects its own heap as it goes idle, at most once every
//! [`COLLECT_EVERY`]: the pages whose blocks all came back are free for any thread again, and go
//! back to the OS after the purge delay the binary sets.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often at most a thread collects its heap as it goes idle: a thread parks many times a
/// second under load, and a collect walks the thread's pages.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

unsafe extern "C" {
    /// mimalloc's collect of the calling thread's heap (`force`: visit every page and purge the
    /// arena at once).
    fn mi_collect(force: bool);
}

/// Make every thread of the runtime `builder` builds collect its own heap as it parks (goes idle),
/// at most once every [`COLLECT_EVERY`].
pub fn collect_when_idle(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder.on_thread_park(|| {
        collect_own_heap();
    })
}

/// Collect the calling thread's heap unless it did within [`COLLECT_EVERY`]; whether it did.
fn collect_own_heap() -> bool {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_some_and(|at| now.duration_since(at) < COLLECT_EVERY) {
            return false;
        }
        last.set(Some(now));
        // SAFETY: mimalloc's own entry point, safe from any thread at any time; it touches only
        // the calling thread's heap (and, not forced, nothing of another thread's).
        unsafe { mi_collect(false) };
        true
    })
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};
    use std::collections::HashSet;

    use super::*;

    /// mimalloc's pages are 64 KiB; a block's page is its address rounded down.
    const PAGE: usize = 64 * 1024;
    const BLOCK: usize = 1024;
    const BLOCKS: usize = 4096;

    fn layout() -> Layout {
        Layout::from_size_align(BLOCK, 8).unwrap()
    }

    /// On a runtime thread (with or without the collect as it idles): allocate `BLOCKS` blocks and
    /// have another thread free them all; let the runtime thread go idle for a while; then a fresh
    /// thread allocates as many blocks of the same size. How many of the pages the first blocks
    /// were on the fresh thread's blocks are on, and how many pages that was.
    fn pages_reused_after_foreign_frees(collect: bool) -> (usize, usize) {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if collect {
            collect_when_idle(&mut builder);
        }
        let runtime = builder.build().unwrap();
        let (pages_tx, pages_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // The owner stays alive until the fresh thread is done: a thread that ends gives its whole
        // heap up, which is not what is tested.
        let owner = std::thread::spawn(move || {
            runtime.block_on(async {
                // SAFETY: a nonzero-sized layout; each block is freed once, below, with it.
                let blocks: Vec<usize> =
                    (0..BLOCKS).map(|_| unsafe { mimalloc::MiMalloc.alloc(layout()) } as usize).collect();
                let pages: HashSet<usize> = blocks.iter().map(|block| block / PAGE).collect();
                std::thread::spawn(move || {
                    for block in blocks {
                        // SAFETY: allocated above with this layout, freed once.
                        unsafe { mimalloc::MiMalloc.dealloc(block as *mut u8, layout()) };
                    }
                })
                .join()
                .unwrap();
                // Idle: the runtime parks its thread, more than once.
                for _ in 0..3 {
                    tokio::time::sleep(COLLECT_EVERY).await;
                }
                pages_tx.send(pages).unwrap();
            });
            done_rx.recv().unwrap();
        });
        let pages = pages_rx.recv().unwrap();
        let reused = std::thread::spawn(move || {
            // SAFETY: as above; the blocks are freed once each before the thread ends.
            let fresh: Vec<usize> =
                (0..BLOCKS).map(|_| unsafe { mimalloc::MiMalloc.alloc(layout()) } as usize).collect();
            let reused: HashSet<usize> =
                fresh.iter().map(|block| block / PAGE).filter(|page| pages.contains(page)).collect();
            for block in fresh {
                // SAFETY: allocated above with this layout, freed once.
                unsafe { mimalloc::MiMalloc.dealloc(block as *mut u8, layout()) };
            }
            (reused.len(), pages.len())
        })
        .join()
        .unwrap();
        done_tx.send(()).unwrap();
        owner.join().unwrap();
        reused
    }

    #[test]
    fn blocks_freed_by_other_threads_are_free_for_every_thread_once_their_owner_idles() {
        let (reused, freed) = pages_reused_after_foreign_frees(true);
        assert_eq!(reused, freed, "pages of the freed blocks a fresh thread got back");
    }

    #[test]
    fn a_thread_collects_its_heap_at_most_once_every_period() {
        std::thread::spawn(|| {
            assert!(collect_own_heap());
            assert!(!collect_own_heap());
            std::thread::sleep(COLLECT_EVERY);
            assert!(collect_own_heap());
        })
        .join()
        .unwrap();
    }
}
