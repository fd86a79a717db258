//! Opening a queue whose segment ends in a corrupt length word allocates what
//! the file holds, not what the length word claims.

use otwatch_agent::queue::{DiskQueue, QueueConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Records the largest allocation made on each thread.
struct Probe;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.with(|l| l.set(l.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

#[test]
fn a_corrupt_length_word_does_not_allocate_what_it_claims() {
    let dir = tempfile::tempdir().unwrap();
    // One record header claiming a 48 MiB body (under the 64 MiB record
    // maximum), followed by 10 bytes.
    let mut segment = (48u32 << 20).to_le_bytes().to_vec();
    segment.extend_from_slice(&[0; 4]);
    segment.extend_from_slice(b"0123456789");
    std::fs::write(dir.path().join(format!("{:020}.q", 1)), &segment).unwrap();

    LARGEST.with(|l| l.set(0));
    let q = DiskQueue::open(dir.path(), QueueConfig::default()).unwrap();
    let largest = LARGEST.with(|l| l.get());
    // The torn record is cut off the newest segment, as any torn tail.
    assert_eq!(q.next_seq(), 1);
    assert_eq!(q.bytes(), 0);
    assert!(
        largest < 1 << 20,
        "opening allocated {largest} bytes at once for a {} byte segment",
        segment.len()
    );
}
