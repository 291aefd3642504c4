//! Short copies without a call to `memcpy`. A pass of the notebooks' LSTM copies
//! thousands of columns of 35 values (weights stacked, states saved, outputs
//! gathered), and for runs that short the call and its dispatch cost more than the
//! copy: 5.5% of its samples were in `memcpy`.

/// Values per block: 64 bytes of f32, one vector register.
const BLOCK: usize = 16;

/// The longest run copied as written-out blocks (the notebooks' 35 values take three).
/// Longer runs would need a loop of blocks, which LLVM turns back into a `memcpy` call
/// (see `copy_run`); for them the call is a small part of the copy.
const LONG: usize = 4 * BLOCK;

/// `dst.copy_from_slice(src)`: a run of `BLOCK` to `LONG` values as blocks of a
/// constant length, which compile to vector moves, the last block overlapping the one
/// before (writing the same values twice) rather than a scalar tail.
///
/// The blocks are written out for each count, not looped over: LLVM recognises a
/// loop of block copies as a copy of the whole run and calls `memcpy` for it after
/// all (`perf annotate` of `Tape::load_block` showed the call).
///
/// # Panics
/// When the lengths differ (a bug of the caller's).
#[inline]
pub(crate) fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let len = src.len();
    assert_eq!(dst.len(), len, "copy between runs of different lengths");
    if !(BLOCK..=LONG).contains(&len) {
        dst.copy_from_slice(src);
        return;
    }
    let last = len - BLOCK;
    let mut copy = |at: usize| block(&mut dst[at..at + BLOCK], &src[at..at + BLOCK]);
    copy(0);
    if len > 2 * BLOCK {
        copy(BLOCK);
    }
    if len > 3 * BLOCK {
        copy(2 * BLOCK);
    }
    copy(last);
}

#[inline(always)]
fn block<T: Copy>(dst: &mut [T], src: &[T]) {
    let dst: &mut [T; BLOCK] = dst.try_into().expect("a whole block");
    let src: &[T; BLOCK] = src.try_into().expect("a whole block");
    *dst = *src;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to past `LONG`, at every offset within a block: the run is
    /// copied, and nothing around it is touched.
    #[test]
    fn runs_of_every_length_are_copied_exactly() {
        let src: Vec<u32> = (0..400).collect();
        for len in 0..=LONG + 20 {
            for offset in [0, 1, 7, 15] {
                let mut dst = vec![u32::MAX; len + 40];
                copy_run(&mut dst[offset..offset + len], &src[3..3 + len]);
                assert!(
                    dst[..offset].iter().all(|&v| v == u32::MAX),
                    "{len} at {offset}"
                );
                assert_eq!(
                    &dst[offset..offset + len],
                    &src[3..3 + len],
                    "{len} at {offset}"
                );
                assert!(
                    dst[offset + len..].iter().all(|&v| v == u32::MAX),
                    "{len} at {offset}"
                );
            }
        }
    }
}
