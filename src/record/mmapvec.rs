//! A growable array in memory straight from the kernel, for code that must
//! not touch the global allocator: the heap scan runs while other threads
//! are stopped, possibly inside `malloc` holding its locks, so calling
//! `malloc` there could deadlock.

use std::marker::PhantomData;

use super::sys;

/// A `Vec<T>` on `mmap`. `T: Copy`, so nothing needs dropping. Growth
/// doubles; a failed growth makes `push` return false (the caller records
/// what it could not keep).
pub(crate) struct MmapVec<T: Copy> {
    ptr: *mut T,
    len: usize,
    cap: usize,
    _owns: PhantomData<T>,
}

// SAFETY: MmapVec owns its mapping exclusively, like Vec.
unsafe impl<T: Copy + Send> Send for MmapVec<T> {}

impl<T: Copy> MmapVec<T> {
    pub(crate) const fn new() -> MmapVec<T> {
        MmapVec {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
            _owns: PhantomData,
        }
    }

    pub(crate) fn with_capacity(cap: usize) -> MmapVec<T> {
        let mut v = MmapVec::new();
        v.reserve(cap);
        v
    }

    fn bytes(cap: usize) -> usize {
        let b = cap.saturating_mul(std::mem::size_of::<T>());
        let page = 4096;
        b.div_ceil(page) * page
    }

    /// Makes room for `extra` more elements; false if the kernel refused.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let need = self.len.saturating_add(extra);
        if need <= self.cap {
            return true;
        }
        let cap = need.max(self.cap.saturating_mul(2)).max(1024);
        let fresh = sys::map(Self::bytes(cap)).cast::<T>();
        if fresh.is_null() {
            return false;
        }
        if !self.ptr.is_null() {
            // SAFETY: both regions are valid for `len` elements and distinct
            // mappings; the old one is then returned whole.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr, fresh, self.len);
                sys::unmap(self.ptr.cast(), Self::bytes(self.cap));
            }
        }
        self.ptr = fresh;
        self.cap = cap;
        true
    }

    #[inline]
    pub(crate) fn push(&mut self, value: T) -> bool {
        if self.len == self.cap && !self.reserve(1) {
            return false;
        }
        // SAFETY: len < cap after the reserve above.
        unsafe { self.ptr.add(self.len).write(value) };
        self.len += 1;
        true
    }

    /// Forgets the elements, keeping the memory.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` elements (no-op when there are fewer).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the first `len` elements were written by `push`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as above, and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for MmapVec<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the mapping came from `map` with this size.
            unsafe { sys::unmap(self.ptr.cast(), Self::bytes(self.cap)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_keeps_order() {
        let mut v: MmapVec<u64> = MmapVec::new();
        for i in 0..100_000u64 {
            assert!(v.push(i * 3));
        }
        assert_eq!(v.len(), 100_000);
        assert!(v
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u64 * 3));
        v.as_mut_slice().reverse();
        assert_eq!(v.as_slice()[0], 299_997);
    }
}
