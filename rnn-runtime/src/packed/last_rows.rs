//! The few rows of a last panel, times B read by rows: the weight gradients' rows that
//! a hidden size leaves past its panels of 32 (3 of the notebooks' 35).
//!
//! The panel kernels run such rows in an 8-lane vector, one multiply-add for every
//! packed column and column of B: as many as a whole panel's 16 rows take, for 3 rows
//! of use. Here the product runs the other way round: B's rows (vᵀ's, the values of a
//! step side by side) are the vectors, and each of the panel's rows is broadcast, so
//! a packed column costs as many multiply-adds as rows times B's vectors (9 for 3 rows
//! of 35 columns, against 35). The sums come out transposed and are added to C one
//! value at a time, which costs little against the product over every step.

use std::arch::x86_64::*;

/// The most rows this kernel runs: past them, their vectors (`ROWS` × `VECTORS`) would
/// cost about as many multiply-adds as the panel kernel's 8-lane ones.
pub(super) const MOST_ROWS: usize = 6;

/// Columns of B per pass over the inner dimension: three 16-lane vectors, whose sums
/// (with `MOST_ROWS` rows, 18 registers) stay in registers.
const PASS_COLUMNS: usize = 48;

/// Where the product reads and writes (see `last_rows_times_rows`).
pub(super) struct LastRows {
    /// The last panel: `stride` values per packed column, its rows first.
    pub(super) panel: *const f32,
    pub(super) stride: usize,
    /// Packed columns (the inner dimension).
    pub(super) depth: usize,
    /// B's row p from `b + p * b_step`, its `n` values side by side.
    pub(super) b: *const f32,
    pub(super) b_step: usize,
    pub(super) n: usize,
    /// C's value (row i, column j) at `c + i + j * ldc`.
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
    /// Add the product to C, or store it over C.
    pub(super) add: bool,
}

/// `C (+)= P_last · B` for the `rows` (1 to `MOST_ROWS`) rows of P's last panel.
///
/// # Safety
/// AVX-512F is present; the panel holds `depth` packed columns of `stride` values, B
/// `depth` rows of `n` values `b_step` apart, C `n` columns of `rows` values `ldc`
/// apart.
pub(super) unsafe fn last_rows_times_rows(at: &LastRows, rows: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            1 => of_height::<1>(at),
            2 => of_height::<2>(at),
            3 => of_height::<3>(at),
            4 => of_height::<4>(at),
            5 => of_height::<5>(at),
            _ => of_height::<6>(at),
        }
    }
}

/// `last_rows_times_rows` for `ROWS` rows: passes of `PASS_COLUMNS` columns of B, the
/// last one narrower.
#[target_feature(enable = "avx512f")]
unsafe fn of_height<const ROWS: usize>(at: &LastRows) {
    let mut first = 0;
    while first < at.n {
        let width = PASS_COLUMNS.min(at.n - first);
        // SAFETY: the pass's columns are C's and B's columns `first..first + width`.
        unsafe {
            match width.div_ceil(16) {
                3 => pass::<ROWS, 3>(at, first, width),
                2 => pass::<ROWS, 2>(at, first, width),
                _ => pass::<ROWS, 1>(at, first, width),
            }
        }
        first += width;
    }
}

/// One pass: B's columns `first..first + width` in `VECTORS` vectors (the last one
/// masked), every packed column of the panel.
#[target_feature(enable = "avx512f")]
unsafe fn pass<const ROWS: usize, const VECTORS: usize>(at: &LastRows, first: usize, width: usize) {
    let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
        let lanes = width.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as u16
    });
    let mut sums = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    // SAFETY: every read is one of the panel's `depth` packed columns (its first `ROWS`
    // values) or one of B's `depth` rows (its columns of the pass, by the masks).
    unsafe {
        for p in 0..at.depth {
            let b_row = at.b.add(p * at.b_step + first);
            let b: [__m512; VECTORS] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b_row.add(16 * v)));
            let column = at.panel.add(p * at.stride);
            for (i, row_sums) in sums.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*column.add(i));
                for (sum, b) in row_sums.iter_mut().zip(&b) {
                    *sum = _mm512_fmadd_ps(a, *b, *sum);
                }
            }
        }
    }
    // The sums are C's rows; C is stored by columns.
    let mut row = [0.0f32; PASS_COLUMNS];
    for (i, row_sums) in sums.iter().enumerate() {
        for (v, sum) in row_sums.iter().enumerate() {
            // SAFETY: `row` holds `VECTORS` (at most 3) vectors.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), *sum) };
        }
        for (j, value) in row[..width].iter().enumerate() {
            // SAFETY: C's column `first + j` holds row i.
            unsafe {
                let out = at.c.add(i + (first + j) * at.ldc);
                *out = if at.add { *out + value } else { *value };
            }
        }
    }
}
