//! The AVX-512 and AVX2 kernels behind `PackedMatrix` and `AlignedColumns`: a block of
//! B's columns over a panel (`avx512`, `avx2`), one column over a group of panels
//! (`avx512_one_column`, `avx2_one_column`), the dot products of a transposed product
//! (`avx512_dot_columns`), and the 8 × 8 transposes and padded copies of packing.

use super::inner_loop::{panel_times_12_columns, panel_times_12_of_rows};
use super::Block;
use std::arch::x86_64::*;

/// `avx512` for a block `width` columns wide (a constant inside the kernel).
///
/// # Safety
/// As `avx512`.
pub(super) unsafe fn avx512_of_width<const PREFETCH: bool, const ACC: bool>(
    blk: &Block,
    width: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (blk.height, blk.stride) {
            (17.., _) => of_width::<PREFETCH, ACC, 32>(blk, width),
            (_, 8) => of_width::<PREFETCH, ACC, 8>(blk, width),
            _ => of_width::<PREFETCH, ACC, 16>(blk, width),
        }
    }
}

/// `avx512_of_width` for a panel's rows in `ROWS` lanes: 32, or 16 for a panel of
/// 16 rows or fewer (12 of the notebooks' 140: half the multiply-adds), or 8 for a
/// last panel that stores 8 (the 3 of a 35-row weight, the 6 of a 70-row one):
/// 8-lane multiply-adds, half the work of 16-lane ones on the AMD machine.
///
/// # Safety
/// As `avx512`; the block has at most `ROWS` valid rows, and with `ROWS` 8 its
/// panel stores 8 values per column.
#[inline(always)]
unsafe fn of_width<const PREFETCH: bool, const ACC: bool, const ROWS: usize>(
    blk: &Block,
    width: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match width {
            12 => avx512::<12, PREFETCH, ACC, ROWS>(blk),
            11 => avx512::<11, PREFETCH, ACC, ROWS>(blk),
            10 => avx512::<10, PREFETCH, ACC, ROWS>(blk),
            9 => avx512::<9, PREFETCH, ACC, ROWS>(blk),
            8 => avx512::<8, PREFETCH, ACC, ROWS>(blk),
            7 => avx512::<7, PREFETCH, ACC, ROWS>(blk),
            6 => avx512::<6, PREFETCH, ACC, ROWS>(blk),
            5 => avx512::<5, PREFETCH, ACC, ROWS>(blk),
            4 => avx512::<4, PREFETCH, ACC, ROWS>(blk),
            3 => avx512::<3, PREFETCH, ACC, ROWS>(blk),
            2 => avx512::<2, PREFETCH, ACC, ROWS>(blk),
            _ => avx512::<1, PREFETCH, ACC, ROWS>(blk),
        }
    }
}

/// `avx2` for a block `width` columns wide.
///
/// # Safety
/// As `avx2`.
pub(super) unsafe fn avx2_of_width<const ACC: bool>(blk: &Block, width: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match width {
            6 => avx2::<6, ACC>(blk),
            5 => avx2::<5, ACC>(blk),
            4 => avx2::<4, ACC>(blk),
            3 => avx2::<3, ACC>(blk),
            2 => avx2::<2, ACC>(blk),
            _ => avx2::<1, ACC>(blk),
        }
    }
}

/// Transposes the 8 × 8 block whose column i is `src[i * ld..][..8]` into rows
/// `dst[i * ldd..][..8]`.
///
/// # Safety
/// Those 64 reads and 64 writes are valid, and AVX is present.
#[target_feature(enable = "avx")]
pub(super) unsafe fn transpose8(src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let columns = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ld)));
        for (i, row) in transpose_registers(columns).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ldd), row);
        }
    }
}

/// `transpose8` for the top-left `rows` × `cols` of the block (1 to 8 each): the
/// first `rows` values of the first `cols` columns read, the first `cols` values of
/// the first `rows` rows written, through masked loads and stores. The edges of a
/// 35-row matrix had gone value by value: 4% of the tiny MGU's time.
///
/// # Safety
/// Those reads and writes are valid, and AVX is present.
#[target_feature(enable = "avx")]
pub(super) unsafe fn transpose8_part(
    src: *const f32,
    ld: usize,
    dst: *mut f32,
    ldd: usize,
    (rows, cols): (usize, usize),
) {
    // Lanes 0..n of `lanes(n)` are set: a window into eight ones and eight zeros.
    static LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: 8 - n lies in 0..8, so the window lies in LANES; the rest is
    // forwarded from the caller (masked-off lanes are neither read nor written).
    unsafe {
        let lanes = |n: usize| _mm256_loadu_si256(LANES.as_ptr().add(8 - n).cast());
        let (row_lanes, col_lanes) = (lanes(rows), lanes(cols));
        let columns = std::array::from_fn(|i| {
            if i < cols {
                _mm256_maskload_ps(src.add(i * ld), row_lanes)
            } else {
                _mm256_setzero_ps()
            }
        });
        for (i, row) in transpose_registers(columns)
            .into_iter()
            .take(rows)
            .enumerate()
        {
            _mm256_maskstore_ps(dst.add(i * ldd), col_lanes, row);
        }
    }
}

/// The 8 × 8 transpose of eight registers: `out[i]` lane j is `r[j]` lane i.
#[target_feature(enable = "avx")]
fn transpose_registers(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `dst[..len] = src[..len]`, `dst[len..width]` zeroed, for a `width` of 8, 16 or
/// 32.
///
/// # Safety
/// `len <= width` values are readable at `src`, `width` writable at `dst`;
/// AVX-512F is present.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn copy_padded(src: *const f32, len: usize, dst: *mut f32, width: usize) {
    let lanes = |n: usize| ((1u32 << n) - 1) as u16;
    let (lo, hi) = (len.min(16), len.saturating_sub(16));
    // SAFETY: masked-off lanes are neither read, written nor faulted on;
    // `wrapping_add` because the upper half may lie past the run (then its mask is
    // empty).
    unsafe {
        let lower = _mm512_maskz_loadu_ps(lanes(lo), src);
        _mm512_mask_storeu_ps(dst, lanes(width.min(16)), lower);
        if width == 32 {
            let upper = _mm512_maskz_loadu_ps(lanes(hi), src.wrapping_add(16));
            _mm512_storeu_ps(dst.add(16), upper);
        }
    }
}

/// How far ahead in the panel (in values) the AVX-512 kernel prefetches.
const PREFETCH_AHEAD: usize = 32 * 16;
/// How far ahead in B's columns (in packed columns of the panel) it prefetches:
/// four cache lines of a column-major B. (128 measured the same.)
const B_AHEAD: usize = 64;

/// A 32-row panel times `NR` columns: two 16-lane accumulators per column, one
/// fused multiply-add each per packed column of the panel. With `ACC`, the
/// accumulators start from C's values, so the product is added to C. With `ROWS`
/// 16, the upper accumulators are left out; with 8, the lower ones hold 8 lanes
/// (their upper lanes undefined, and masked off).
///
/// # Safety
/// As `Block::run`, with AVX-512F present; see `of_width` for `ROWS`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512<
    const NR: usize,
    const PREFETCH: bool,
    const ACC: bool,
    const ROWS: usize,
>(
    blk: &Block,
) {
    let upper = ROWS == 32;
    let mut lo = [_mm512_setzero_ps(); NR];
    let mut hi = [_mm512_setzero_ps(); NR];
    // Masked loads and stores touch only the panel's valid rows (the last panel is
    // partial).
    // Rows up to `split_at` go to C, the others (of a panel split between two
    // blocks) to the second C, addressed so that its first row is lane `split_at`.
    let lanes = |rows: usize| ((1u32 << rows) - 1) as u16;
    let rows_c = blk.split_at.min(blk.height);
    let split = rows_c < blk.height;
    let mask_lo: __mmask16 = lanes(rows_c.min(16));
    let mask_hi: __mmask16 = lanes(rows_c.saturating_sub(16));
    let mask2_lo: __mmask16 = lanes(blk.height.min(16)) & !mask_lo;
    let mask2_hi: __mmask16 = lanes(blk.height.saturating_sub(16)) & !mask_hi;
    let second = |j: usize| blk.c2.wrapping_add(j * blk.ldc2).wrapping_sub(rows_c);
    debug_assert!(!upper || blk.stride == 32, "a 32-row panel stores 32 rows");
    debug_assert!(blk.bias.is_null() || !split, "biases go to one C");
    // (Where each column starts, C or the biases, is written out here as in `avx2`:
    // one `Block` method for both made the tiny passes' forward 5-6% slower, session 25.)
    if ACC {
        for j in 0..NR {
            // SAFETY: column j of C has `split_at` valid values (or `height`) from
            // `c + j * ldc`, and of the second C the rest from `c2 + j * ldc2`; the
            // bias column, if any, `height`; masked-off lanes are not read.
            unsafe {
                let out = if blk.bias.is_null() {
                    blk.c.wrapping_add(j * blk.ldc)
                } else {
                    blk.bias
                };
                lo[j] = _mm512_maskz_loadu_ps(mask_lo, out);
                if upper {
                    hi[j] = _mm512_maskz_loadu_ps(mask_hi, out.wrapping_add(16));
                }
                if split {
                    let out = second(j);
                    lo[j] = _mm512_mask_loadu_ps(lo[j], mask2_lo, out);
                    if upper {
                        hi[j] = _mm512_mask_loadu_ps(hi[j], mask2_hi, out.wrapping_add(16));
                    }
                }
            }
        }
    }
    // The most used shapes, streamed (B by columns) and the weight gradients' (B by
    // rows), run their loops in assembly (see `inner_loop`); the loop below then
    // has no packed column left to run.
    let mut depth = blk.k;
    if let (true, Ok(lo), Ok(hi)) = (
        PREFETCH && upper && blk.b_step == 1,
        <&mut [__m512; 12]>::try_from(&mut lo[..]),
        <&mut [__m512; 12]>::try_from(&mut hi[..]),
    ) {
        // SAFETY: the panel stores 32 values per packed column, and B's 12 columns
        // hold `k` adjacent values each, `ldb` apart (see `Block::run`).
        unsafe {
            if blk.prefetch_b {
                panel_times_12_columns::<true>(blk.a, blk.b, blk.ldb, blk.next, blk.k, lo, hi);
            } else {
                panel_times_12_columns::<false>(blk.a, blk.b, blk.ldb, blk.next, blk.k, lo, hi);
            }
        }
        depth = 0;
    } else if let (true, Ok(lo), Ok(hi)) = (
        upper && blk.ldb == 1,
        <&mut [__m512; 12]>::try_from(&mut lo[..]),
        <&mut [__m512; 12]>::try_from(&mut hi[..]),
    ) {
        // SAFETY: the panel stores 32 values per packed column, and each packed
        // column's 12 values of B lie side by side, `b_step` apart (see
        // `Block::run`).
        unsafe { panel_times_12_of_rows(blk.a, blk.b, blk.b_step, blk.k, lo, hi) };
        depth = 0;
    }
    // SAFETY: every read is inside the panel or a column of B (see `Block::run`).
    unsafe {
        for p in 0..depth {
            // The panel streams from L2 or L3 when the weight outgrows L1: ask for it
            // early (prefetches never fault, past the panel's end included).
            let column = blk.a.add(p * if ROWS == 8 { 8 } else { blk.stride });
            if PREFETCH {
                let ahead = column.wrapping_add(PREFETCH_AHEAD).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                if !blk.next.is_null() {
                    let line = blk.next.wrapping_add(p * 16).cast::<i8>();
                    _mm_prefetch::<_MM_HINT_T1>(line);
                }
                if blk.prefetch_b {
                    // One line of one column per packed column: the `NR` columns
                    // take turns, each reached every `NR` (at most 12) packed
                    // columns, within the 16 values of a line.
                    let b_ahead = blk
                        .b
                        .wrapping_add((p + B_AHEAD) * blk.b_step + (p % NR) * blk.ldb);
                    _mm_prefetch::<_MM_HINT_T0>(b_ahead.cast::<i8>());
                }
            }
            if ROWS == 8 {
                let a = _mm256_loadu_ps(column);
                for (j, acc) in lo.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*blk.b.add(p * blk.b_step + j * blk.ldb));
                    let sum = _mm256_fmadd_ps(a, x, _mm512_castps512_ps256(*acc));
                    *acc = _mm512_castps256_ps512(sum);
                }
                continue;
            }
            // (Whole vectors: a panel that stores 16 values per column has 16 here.)
            let a_lo = _mm512_loadu_ps(column);
            let a_hi = if upper {
                _mm512_loadu_ps(column.add(16))
            } else {
                _mm512_setzero_ps()
            };
            for j in 0..NR {
                let x = _mm512_set1_ps(*blk.b.add(p * blk.b_step + j * blk.ldb));
                lo[j] = _mm512_fmadd_ps(a_lo, x, lo[j]);
                if upper {
                    hi[j] = _mm512_fmadd_ps(a_hi, x, hi[j]);
                }
            }
        }
    }
    for j in 0..NR {
        // SAFETY: as for the loads above, writing.
        unsafe {
            let out = blk.c.wrapping_add(j * blk.ldc);
            _mm512_mask_storeu_ps(out, mask_lo, lo[j]);
            if upper {
                _mm512_mask_storeu_ps(out.wrapping_add(16), mask_hi, hi[j]);
            }
            if split {
                let out = second(j);
                _mm512_mask_storeu_ps(out, mask2_lo, lo[j]);
                if upper {
                    _mm512_mask_storeu_ps(out.wrapping_add(16), mask2_hi, hi[j]);
                }
            }
        }
    }
}

/// `one_column` for `count` panels (1 to 6) whose last stores `last` rows per
/// column, with or without prefetching.
pub(super) fn avx512_one_column<const PREFETCH: bool>(
    count: usize,
    last: usize,
) -> super::OneColumnKernel {
    match count {
        6 => one_column_with_last::<6, PREFETCH>(last),
        5 => one_column_with_last::<5, PREFETCH>(last),
        4 => one_column_with_last::<4, PREFETCH>(last),
        3 => one_column_with_last::<3, PREFETCH>(last),
        2 => one_column_with_last::<2, PREFETCH>(last),
        _ => one_column_with_last::<1, PREFETCH>(last),
    }
}

/// `one_column` for `G` panels whose last stores `last` rows per column.
fn one_column_with_last<const G: usize, const PREFETCH: bool>(
    last: usize,
) -> super::OneColumnKernel {
    match last {
        32 => one_column::<G, PREFETCH, 32>,
        16 => one_column::<G, PREFETCH, 16>,
        _ => one_column::<G, PREFETCH, 8>,
    }
}

/// `G` consecutive 32-row panels times one column: `blk.height` counts the valid
/// rows of all `G` panels, and `blk.ldc` is the panel height (C is one column).
/// Even and odd packed columns accumulate apart, for 4·G independent chains. The
/// last panel's rows run in `LAST` lanes, as many as it stores per column
/// (`Isa::last_panel_rows`): 32 (two 16-lane vectors), 16 (the upper half
/// skipped, see `of_width`) or 8 (one 8-lane vector, half the work of a 16-lane
/// one here: the 3 rows that 35 leaves past a panel).
///
/// # Safety
/// As `OneColumnKernel`, for `G` panels (C holding `height` rows), with AVX-512F
/// present; the last panel stores `LAST` values per column.
#[target_feature(enable = "avx512f")]
unsafe fn one_column<const G: usize, const PREFETCH: bool, const LAST: usize>(
    a: *const f32,
    k: usize,
    b: *const f32,
    c: *mut f32,
    height: usize,
    add: bool,
) {
    let mut even = [[_mm512_setzero_ps(); 2]; G];
    let mut odd = [[_mm512_setzero_ps(); 2]; G];
    // The last panel's 8 lanes, when `LAST` is 8.
    let (mut even8, mut odd8) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let panel_len = 32 * k;
    // SAFETY: every read is inside the G panels or the column of B.
    unsafe {
        let column = |acc: &mut [[__m512; 2]; G], acc8: &mut __m256, p: usize| {
            let value = *b.add(p);
            let x = _mm512_set1_ps(value);
            for (g, pair) in acc.iter_mut().enumerate() {
                let stride = if g + 1 == G { LAST } else { 32 };
                let packed = a.add(g * panel_len + p * stride);
                if PREFETCH {
                    let ahead = packed.wrapping_add(PREFETCH_AHEAD);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16).cast::<i8>());
                }
                if LAST == 8 && g + 1 == G {
                    let x8 = _mm256_set1_ps(value);
                    *acc8 = _mm256_fmadd_ps(_mm256_loadu_ps(packed), x8, *acc8);
                    continue;
                }
                pair[0] = _mm512_fmadd_ps(_mm512_loadu_ps(packed), x, pair[0]);
                if LAST == 32 || g + 1 < G {
                    pair[1] = _mm512_fmadd_ps(_mm512_loadu_ps(packed.add(16)), x, pair[1]);
                }
            }
        };
        let mut p = 0;
        while p + 1 < k {
            column(&mut even, &mut even8, p);
            column(&mut odd, &mut odd8, p + 1);
            p += 2;
        }
        if p < k {
            column(&mut even, &mut even8, p);
        }
    }
    if LAST == 8 {
        // (The upper lanes of the widened sum are undefined, and masked off.)
        even[G - 1][0] = _mm512_castps256_ps512(_mm256_add_ps(even8, odd8));
    }
    for g in 0..G {
        let rows = height.saturating_sub(g * 32).min(32);
        let mask_lo: __mmask16 = ((1u32 << rows.min(16)) - 1) as u16;
        let mask_hi: __mmask16 = ((1u32 << rows.saturating_sub(16)) - 1) as u16;
        // SAFETY: C has `height` writable values, `rows` of them from `g * 32`; the
        // masked loads read those only.
        unsafe {
            let out = c.add(g * 32);
            let mut lo = _mm512_add_ps(even[g][0], odd[g][0]);
            let mut hi = _mm512_add_ps(even[g][1], odd[g][1]);
            if add {
                lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(mask_lo, out));
                hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(mask_hi, out.add(16)));
            }
            _mm512_mask_storeu_ps(out, mask_lo, lo);
            _mm512_mask_storeu_ps(out.add(16), mask_hi, hi);
        }
    }
}

/// `transposed_times_column`'s kernel: eight columns at a time (the last four or
/// fewer in a block of four), each accumulating 16 rows per multiply-add (the last
/// rows masked), then the block's sums reduced together. Past the last column, a
/// block re-reads that column and drops the sums. With `add`, the sums are added
/// to `out`'s values.
///
/// # Safety
/// `a` holds `cols` columns `ld` apart of `rows` values each, `x` `rows` values,
/// `out` `cols` values; AVX-512F is present.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_dot_columns(
    a: *const f32,
    ld: usize,
    (rows, cols): (usize, usize),
    x: *const f32,
    out: *mut f32,
    add: bool,
) {
    for first in (0..cols).step_by(8) {
        let width = 8.min(cols - first);
        // SAFETY: each column read is one of the `cols` columns; reads stop at `rows`;
        // the block writes `width` values of `out` from `first`.
        unsafe {
            let column = |j: usize| a.add((first + j).min(cols - 1) * ld);
            if width == 8 {
                let mut sums = sum_each(dot_block(std::array::from_fn(column), rows, x));
                if add {
                    sums = _mm256_add_ps(sums, _mm256_loadu_ps(out.add(first)));
                }
                _mm256_storeu_ps(out.add(first), sums);
                continue;
            }
            // Lane by lane: a `memcpy` of the few lanes was a call per block.
            let mut lanes = [0.0f32; 8];
            if width <= 4 {
                let sums = sum_each4(dot_block(std::array::from_fn(column), rows, x));
                _mm_storeu_ps(lanes.as_mut_ptr(), sums);
            } else {
                let sums = sum_each(dot_block(std::array::from_fn(column), rows, x));
                _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
            }
            for (j, &lane) in lanes[..width].iter().enumerate() {
                let at = out.add(first + j);
                *at = if add { *at + lane } else { lane };
            }
        }
    }
}

/// The `W` columns' products with `x` over `rows`, as 16-lane partial sums.
///
/// # Safety
/// Each column and `x` hold `rows` readable values; AVX-512F is present.
#[target_feature(enable = "avx512f")]
unsafe fn dot_block<const W: usize>(
    column: [*const f32; W],
    rows: usize,
    x: *const f32,
) -> [__m512; W] {
    let (whole, tail) = (rows / 16 * 16, rows % 16);
    let mask: __mmask16 = ((1u32 << tail) - 1) as u16;
    let mut acc = [_mm512_setzero_ps(); W];
    // SAFETY: reads stop at `rows` (the tail masked).
    unsafe {
        for i in (0..whole).step_by(16) {
            let xs = _mm512_loadu_ps(x.add(i));
            for j in 0..W {
                acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(column[j].add(i)), xs, acc[j]);
            }
        }
        if tail > 0 {
            let xs = _mm512_maskz_loadu_ps(mask, x.add(whole));
            for j in 0..W {
                let values = _mm512_maskz_loadu_ps(mask, column[j].add(whole));
                acc[j] = _mm512_fmadd_ps(values, xs, acc[j]);
            }
        }
    }
    acc
}

/// The two 8-lane halves of `z` added: the first round of `sum_each`'s reductions.
#[target_feature(enable = "avx512f")]
fn halves_added(z: __m512) -> __m256 {
    let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
    _mm256_add_ps(_mm512_castps512_ps256(z), high)
}

/// `sum_each` for four vectors.
#[target_feature(enable = "avx512f")]
fn sum_each4(v: [__m512; 4]) -> __m128 {
    let halves = v.map(|z| halves_added(z));
    let h01 = _mm256_hadd_ps(halves[0], halves[1]);
    let h23 = _mm256_hadd_ps(halves[2], halves[3]);
    // Per 128-bit lane: one partial sum of each of v[0..4].
    let h0123 = _mm256_hadd_ps(h01, h23);
    _mm_add_ps(
        _mm256_castps256_ps128(h0123),
        _mm256_extractf128_ps::<1>(h0123),
    )
}

/// Lane j of the result is the sum of the 16 lanes of `v[j]`: the halves added,
/// then three rounds of pairwise sums (25 instructions, against about 64 for eight
/// separate reductions).
#[target_feature(enable = "avx512f")]
fn sum_each(v: [__m512; 8]) -> __m256 {
    let halves = v.map(|z| halves_added(z));
    // Per 128-bit lane: [a0+a1, a2+a3, b0+b1, b2+b3], and so on.
    let h01 = _mm256_hadd_ps(halves[0], halves[1]);
    let h23 = _mm256_hadd_ps(halves[2], halves[3]);
    let h45 = _mm256_hadd_ps(halves[4], halves[5]);
    let h67 = _mm256_hadd_ps(halves[6], halves[7]);
    // Per 128-bit lane: one partial sum of each of v[0..4] (and of v[4..8]).
    let h0123 = _mm256_hadd_ps(h01, h23);
    let h4567 = _mm256_hadd_ps(h45, h67);
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(h0123, h4567),
        _mm256_permute2f128_ps::<0x31>(h0123, h4567),
    )
}

/// `avx2_one_column_of` for `count` panels (1 to 4).
pub(super) fn avx2_one_column(count: usize) -> super::OneColumnKernel {
    match count {
        4 => avx2_one_column_of::<4>,
        3 => avx2_one_column_of::<3>,
        2 => avx2_one_column_of::<2>,
        _ => avx2_one_column_of::<1>,
    }
}

/// `one_column` for 16-row panels, with 8-lane registers.
///
/// # Safety
/// As `OneColumnKernel`, for `G` panels (C holding `height` rows), with AVX2 and
/// FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_one_column_of<const G: usize>(
    a: *const f32,
    k: usize,
    b: *const f32,
    c: *mut f32,
    height: usize,
    add: bool,
) {
    let mut even = [[_mm256_setzero_ps(); 2]; G];
    let mut odd = [[_mm256_setzero_ps(); 2]; G];
    let panel_len = 16 * k;
    // SAFETY: every read is inside the G panels or the column of B.
    unsafe {
        let column = |acc: &mut [[__m256; 2]; G], p: usize| {
            let x = _mm256_set1_ps(*b.add(p));
            for (g, pair) in acc.iter_mut().enumerate() {
                let packed = a.add(g * panel_len + p * 16);
                pair[0] = _mm256_fmadd_ps(_mm256_loadu_ps(packed), x, pair[0]);
                pair[1] = _mm256_fmadd_ps(_mm256_loadu_ps(packed.add(8)), x, pair[1]);
            }
        };
        let mut p = 0;
        while p + 1 < k {
            column(&mut even, p);
            column(&mut odd, p + 1);
            p += 2;
        }
        if p < k {
            column(&mut even, p);
        }
    }
    for g in 0..G {
        let rows = height.saturating_sub(g * 16).min(16);
        let mut panel = [0.0f32; 16];
        // SAFETY: C has `height` writable values, `rows` of them from `g * 16`.
        unsafe {
            let out = c.add(g * 16);
            if add {
                std::ptr::copy_nonoverlapping(out, panel.as_mut_ptr(), rows);
            }
            let (lo, hi) = (
                _mm256_loadu_ps(panel.as_ptr()),
                _mm256_loadu_ps(panel.as_ptr().add(8)),
            );
            let lo = _mm256_add_ps(lo, _mm256_add_ps(even[g][0], odd[g][0]));
            let hi = _mm256_add_ps(hi, _mm256_add_ps(even[g][1], odd[g][1]));
            _mm256_storeu_ps(panel.as_mut_ptr(), lo);
            _mm256_storeu_ps(panel.as_mut_ptr().add(8), hi);
            std::ptr::copy_nonoverlapping(panel.as_ptr(), out, rows);
        }
    }
}

/// A 16-row panel times `NR` columns, with 8-lane registers; with `ACC`, added to C.
///
/// # Safety
/// As `Block::run`, with AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2<const NR: usize, const ACC: bool>(blk: &Block) {
    let mut lo = [_mm256_setzero_ps(); NR];
    let mut hi = [_mm256_setzero_ps(); NR];
    if ACC {
        for j in 0..NR {
            // SAFETY: column j of C (or the bias column) has `height` valid values
            // from `c + j * ldc` (from `bias`); a partial panel is read through a
            // buffer.
            unsafe {
                let out = if blk.bias.is_null() {
                    blk.c.add(j * blk.ldc)
                } else {
                    blk.bias
                };
                let mut column = [0.0f32; 16];
                std::ptr::copy_nonoverlapping(out, column.as_mut_ptr(), blk.height);
                lo[j] = _mm256_loadu_ps(column.as_ptr());
                hi[j] = _mm256_loadu_ps(column.as_ptr().add(8));
            }
        }
    }
    // SAFETY: every read is inside the panel or a column of B (see `Block::run`).
    unsafe {
        for p in 0..blk.k {
            let a_lo = _mm256_loadu_ps(blk.a.add(p * 16));
            let a_hi = _mm256_loadu_ps(blk.a.add(p * 16 + 8));
            for j in 0..NR {
                let x = _mm256_set1_ps(*blk.b.add(p * blk.b_step + j * blk.ldb));
                lo[j] = _mm256_fmadd_ps(a_lo, x, lo[j]);
                hi[j] = _mm256_fmadd_ps(a_hi, x, hi[j]);
            }
        }
    }
    // AVX2 has no masked store of this kind worth its cost: full panels store
    // directly, the partial last one through a buffer.
    for j in 0..NR {
        // SAFETY: column j of C has `height` writable values from `c + j * ldc`.
        unsafe {
            let out = blk.c.add(j * blk.ldc);
            if blk.height == 16 {
                _mm256_storeu_ps(out, lo[j]);
                _mm256_storeu_ps(out.add(8), hi[j]);
            } else {
                let mut column = [0.0f32; 16];
                _mm256_storeu_ps(column.as_mut_ptr(), lo[j]);
                _mm256_storeu_ps(column.as_mut_ptr().add(8), hi[j]);
                std::ptr::copy_nonoverlapping(column.as_ptr(), out, blk.height);
            }
        }
    }
}
