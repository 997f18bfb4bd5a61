//! What the metrics recorder holds when nobody scrapes it: a test binary of its own, because it
//! counts every byte the process holds (a global allocator), and tests running beside it in one
//! process (the library's) would count theirs too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tenure::telemetry::{self, metric};

/// The system allocator, counting the bytes this test process holds.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn histogram_observations_are_let_go_without_a_scrape() {
    // The exporter keeps each observation (16 bytes: the value and when it was observed)
    // until it is folded into its buckets or summary: at a `/metrics` scrape, or by upkeep.
    // A replica nobody scrapes must not keep them: at 200 runs a second that grew by about
    // 0.4 MB a minute.
    let recorder = telemetry::recorder();
    let histogram = metrics::with_local_recorder(&recorder, || metrics::histogram!(metric::RUN_DURATION));
    let before = HELD.load(Ordering::Relaxed);
    for i in 0..1_000_000 {
        histogram.record(f64::from(i % 1000) / 1000.0);
    }
    let held = HELD.load(Ordering::Relaxed) - before;
    assert!(held >= 12 << 20, "1,000,000 observations held only {held} bytes: not what this test measures");
    // Recording goes on, as on a replica (a run a millisecond): what was folded in is freed
    // as the recording threads pass by (the blocks are reclaimed through crossbeam's epochs,
    // once the upkeep that folded them in has let go of its own).
    let deadline = std::time::Instant::now() + 6 * telemetry::UPKEEP_EVERY;
    loop {
        let still = HELD.load(Ordering::Relaxed) - before;
        if still < 4 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{still} bytes still held {:?} after 1,000,000 observations ({held} bytes), never scraped",
            6 * telemetry::UPKEEP_EVERY
        );
        histogram.record(0.5);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // What upkeep folded in is still exported.
    let text = recorder.handle().render();
    let count =
        text.lines().find_map(|line| line.strip_prefix("tenure_run_duration_seconds_count ")?.parse::<u64>().ok());
    assert!(count.is_some_and(|n| n >= 1_000_000), "{count:?} in\n{text}");
}
