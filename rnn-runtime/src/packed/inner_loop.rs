//! The inner loops of the AVX-512 kernel's most used shapes, a 32-row panel times 12
//! columns of B, written in assembly: B by columns, its panel streamed from L2 or L3
//! (the per-step products, `panel_times_12_columns`), and B by rows (the weight
//! gradients' copy of vᵀ, `panel_times_12_of_rows`).
//!
//! The same loop written with intrinsics (`x86::avx512`) leaves the addressing to the
//! compiler, which computed each of B's twelve columns from the last one (an `add` per
//! broadcast) and the prefetched column as `p % 12` (a multiplication) at every packed
//! column, and whose speed moved by several percent with the code around it (session
//! 15, `benches/README.md`). Here each packed column costs what the product needs: two
//! loads of the panel, two prefetches of it, twelve broadcasts of B and 24 multiply-adds;
//! B's columns are addressed from three base registers (`b`, `b + 4·ldb`, `b + 8·ldb`)
//! with `ldb` and `3·ldb` as index registers, and the loop runs 16 packed columns (one
//! cache line of each of B's columns) per iteration, prefetching one line of each
//! column of B on the way, and where asked, a line a packed column of the panel that a
//! later call reads (the next group's, see `PackedMatrix::next_group_lines`).

use std::arch::asm;
use std::arch::x86_64::{__m512, _mm512_setzero_ps};

/// Packed columns per iteration of the main loop: a cache line of each column of B.
const UNROLL: usize = 16;

/// The address (in the template's registers) of column `$j` of B, 0 to 11.
#[rustfmt::skip]
macro_rules! b_column {
    (0) => { "{b0}" };
    (1) => { "{b0} + {ldb}" };
    (2) => { "{b0} + {ldb}*2" };
    (3) => { "{b0} + {ldb3}" };
    (4) => { "{b4}" };
    (5) => { "{b4} + {ldb}" };
    (6) => { "{b4} + {ldb}*2" };
    (7) => { "{b4} + {ldb3}" };
    (8) => { "{b8}" };
    (9) => { "{b8} + {ldb}" };
    (10) => { "{b8} + {ldb}*2" };
    (11) => { "{b8} + {ldb3}" };
}

/// Column `$j`'s value at packed column `$u` (past the pointers) broadcast into `$x`,
/// times the panel's two halves, added into column `$j`'s two accumulators.
#[rustfmt::skip]
macro_rules! multiply_add {
    ($j:tt, $u:tt, $x:literal) => {
        concat!(
            "vbroadcastss {", $x, "}, dword ptr [", b_column!($j), " + 4*", $u, "]\n",
            "vfmadd231ps {lo", $j, "}, {a_lo}, {", $x, "}\n",
            "vfmadd231ps {hi", $j, "}, {a_hi}, {", $x, "}\n",
        )
    };
}

/// At packed column `$u` of an iteration, with `yes`, a prefetch of column `$u`'s line
/// `B_AHEAD` packed columns ahead (columns 0 to 11 at the iteration's first 12 packed
/// columns, so each column's next line once per iteration); nothing with `no`.
#[rustfmt::skip]
macro_rules! prefetch_b {
    (no, $u:tt) => { "" };
    (yes, 12) => { "" };
    (yes, 13) => { "" };
    (yes, 14) => { "" };
    (yes, 15) => { "" };
    (yes, $u:tt) => {
        concat!("prefetcht0 byte ptr [", b_column!($u), " + 4*(64 + ", $u, ")]\n")
    };
}

/// At packed column `$u` of an iteration, with `yes`, a prefetch into L2 of the `$u`th
/// line from `{next}` (see `PackedMatrix::next_group_lines`); nothing with `no`.
#[rustfmt::skip]
macro_rules! prefetch_next {
    (no, $u:tt) => { "" };
    (yes, $u:tt) => { concat!("prefetcht1 byte ptr [{next} + 64*", $u, "]\n") };
}

/// Packed column `$u` (past the pointers): the panel's two halves loaded, the panel
/// prefetched `PREFETCH_AHEAD` (512) values ahead, and the twelve columns' multiply-adds.
#[rustfmt::skip]
macro_rules! packed_column {
    ($u:tt, $prefetch_b:ident, $next:ident) => {
        concat!(
            "vmovups {a_lo}, zmmword ptr [{a} + 128*", $u, "]\n",
            "vmovups {a_hi}, zmmword ptr [{a} + 128*", $u, " + 64]\n",
            "prefetcht0 byte ptr [{a} + 128*", $u, " + 2048]\n",
            "prefetcht0 byte ptr [{a} + 128*", $u, " + 2112]\n",
            prefetch_b!($prefetch_b, $u),
            prefetch_next!($next, $u),
            multiply_add!(0, $u, "x0"),
            multiply_add!(1, $u, "x1"),
            multiply_add!(2, $u, "x0"),
            multiply_add!(3, $u, "x1"),
            multiply_add!(4, $u, "x0"),
            multiply_add!(5, $u, "x1"),
            multiply_add!(6, $u, "x0"),
            multiply_add!(7, $u, "x1"),
            multiply_add!(8, $u, "x0"),
            multiply_add!(9, $u, "x1"),
            multiply_add!(10, $u, "x0"),
            multiply_add!(11, $u, "x1"),
        )
    };
}

/// The `asm!` of a loop over the `$k` packed columns of a 32-row panel from `$a` and 12
/// columns of B, the same for every such loop: `UNROLL` packed columns an iteration
/// (the `unrolled` pieces of the template, each loop's own pointers moved on at their
/// end), then the rest one at a time (the `single` pieces), the panel's pointer moved
/// on by the macro; the 24 accumulators (`lo`, `hi`), four scratch registers and the
/// loop's own operands.
macro_rules! panel_asm {
    (
        $a:expr, $k:expr,
        unrolled: [$($unrolled:expr),* $(,)?],
        single: [$($single:expr),* $(,)?],
        $lo:expr, $hi:expr, $($operands:tt)*
    ) => {{
        // The loop's own registers (the panel's halves, B's broadcasts), typed: an
        // untyped `out(zmm_reg) _` was printed as no register at all (`R27BH`).
        let scratch = [_mm512_setzero_ps(); 4];
        asm!(
            "test {iterations}, {iterations}",
            "jz 3f",
            "2:",
            $($unrolled,)*
            "add {a}, 128*16",
            "dec {iterations}",
            "jnz 2b",
            "3:",
            "test {rest}, {rest}",
            "jz 5f",
            "4:",
            $($single,)*
            "add {a}, 128",
            "dec {rest}",
            "jnz 4b",
            "5:",
            a = inout(reg) $a => _,
            $($operands)*
            iterations = inout(reg) $k / UNROLL => _,
            rest = inout(reg) $k % UNROLL => _,
            a_lo = inout(zmm_reg) scratch[0] => _,
            a_hi = inout(zmm_reg) scratch[1] => _,
            x0 = inout(zmm_reg) scratch[2] => _,
            x1 = inout(zmm_reg) scratch[3] => _,
            lo0 = inout(zmm_reg) $lo[0],
            lo1 = inout(zmm_reg) $lo[1],
            lo2 = inout(zmm_reg) $lo[2],
            lo3 = inout(zmm_reg) $lo[3],
            lo4 = inout(zmm_reg) $lo[4],
            lo5 = inout(zmm_reg) $lo[5],
            lo6 = inout(zmm_reg) $lo[6],
            lo7 = inout(zmm_reg) $lo[7],
            lo8 = inout(zmm_reg) $lo[8],
            lo9 = inout(zmm_reg) $lo[9],
            lo10 = inout(zmm_reg) $lo[10],
            lo11 = inout(zmm_reg) $lo[11],
            hi0 = inout(zmm_reg) $hi[0],
            hi1 = inout(zmm_reg) $hi[1],
            hi2 = inout(zmm_reg) $hi[2],
            hi3 = inout(zmm_reg) $hi[3],
            hi4 = inout(zmm_reg) $hi[4],
            hi5 = inout(zmm_reg) $hi[5],
            hi6 = inout(zmm_reg) $hi[6],
            hi7 = inout(zmm_reg) $hi[7],
            hi8 = inout(zmm_reg) $hi[8],
            hi9 = inout(zmm_reg) $hi[9],
            hi10 = inout(zmm_reg) $hi[10],
            hi11 = inout(zmm_reg) $hi[11],
            options(nostack, readonly),
        )
    }};
}

/// The loop over B's columns, with or without B's prefetch and the next group's.
macro_rules! panel_loop {
    (
        $prefetch_b:ident, $next:ident, $a:expr, $b:expr, $ldb:expr, $next_at:expr, $k:expr,
        $lo:expr, $hi:expr
    ) => {
        panel_asm!(
            $a, $k,
            unrolled: [
                packed_column!(0, $prefetch_b, $next),
                packed_column!(1, $prefetch_b, $next),
                packed_column!(2, $prefetch_b, $next),
                packed_column!(3, $prefetch_b, $next),
                packed_column!(4, $prefetch_b, $next),
                packed_column!(5, $prefetch_b, $next),
                packed_column!(6, $prefetch_b, $next),
                packed_column!(7, $prefetch_b, $next),
                packed_column!(8, $prefetch_b, $next),
                packed_column!(9, $prefetch_b, $next),
                packed_column!(10, $prefetch_b, $next),
                packed_column!(11, $prefetch_b, $next),
                packed_column!(12, $prefetch_b, $next),
                packed_column!(13, $prefetch_b, $next),
                packed_column!(14, $prefetch_b, $next),
                packed_column!(15, $prefetch_b, $next),
                "add {b0}, 4*16",
                "add {b4}, 4*16",
                "add {b8}, 4*16",
                "add {next}, 64*16",
            ],
            single: [
                packed_column!(0, no, $next),
                "add {b0}, 4",
                "add {b4}, 4",
                "add {b8}, 4",
                "add {next}, 64",
            ],
            $lo, $hi,
            b0 = inout(reg) $b => _,
            b4 = inout(reg) $b.wrapping_add(4 * $ldb) => _,
            b8 = inout(reg) $b.wrapping_add(8 * $ldb) => _,
            next = inout(reg) $next_at => _,
            ldb = in(reg) $ldb * size_of::<f32>(),
            ldb3 = in(reg) 3 * $ldb * size_of::<f32>(),
        )
    };
}

/// `k` packed columns of a 32-row panel from `a` (32 values per packed column) times
/// 12 columns of B from `b` (column j from `b + j * ldb`, its values adjacent), added
/// into the accumulators: `lo[j]` holds rows 0 to 15 of column j, `hi[j]` rows 16 to
/// 31. With `PREFETCH_B`, B's columns are prefetched too (see `B_STAYS_BYTES`), and
/// where `next` is not null, a line a packed column from it into L2 (see
/// `PackedMatrix::next_group_lines`).
///
/// # Safety
/// AVX-512F is present; `32 * k` values are readable from `a`, and `k` values of each
/// of the 12 columns from `b`. (Prefetches past them never fault.)
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_times_12_columns<const PREFETCH_B: bool>(
    a: *const f32,
    b: *const f32,
    ldb: usize,
    next: *const f32,
    k: usize,
    lo: &mut [__m512; 12],
    hi: &mut [__m512; 12],
) {
    // SAFETY: the loop reads `32 * k` values from `a` and `k` from each column of B
    // (the caller's promise), and writes only the named registers.
    unsafe {
        match (PREFETCH_B, next.is_null()) {
            (true, true) => panel_loop!(yes, no, a, b, ldb, next, k, lo, hi),
            (true, false) => panel_loop!(yes, yes, a, b, ldb, next, k, lo, hi),
            (false, true) => panel_loop!(no, no, a, b, ldb, next, k, lo, hi),
            (false, false) => panel_loop!(no, yes, a, b, ldb, next, k, lo, hi),
        }
    }
}

/// Packed column `$u` of the loop over B's rows (`panel_times_12_of_rows`): the panel's
/// two halves loaded and prefetched as in `packed_column`, the twelve values of the row
/// four ahead prefetched (the two lines they may span), the row's twelve values
/// broadcast from one register at constant offsets, and `{b}` moved on to the next row.
/// B's rows lie a line more than 4 KiB apart in the weight gradients' copy, a stride
/// past what the hardware's stride prefetcher follows (2 KiB), so without the prefetch
/// each row's load waited on L2: the large GRU's and LSTM's h gradients (3072 and 4096
/// × 3200 by 1024) ran at 148-156 GF/s on one core without it and 164-168 with it, the
/// x gradient (by 512) and the medium LSTM's (2048 × 800 by 512) at the same speed, in
/// three alternations (session 21, `benches/README.md`; 2 and 8 rows ahead no faster).
/// On one core, the intrinsics' loop over the same layout ran the large GRU's weight
/// gradient (3072 × 3200 by 3200 × 1024) at 137-142 GF/s against this one's 141-148
/// on a contended machine (155-156 against 170 in a quieter hour), and the medium
/// LSTM's (2048 × 800 by 800 × 512) at 135-146 against 161-168 (session 18,
/// `benches/README.md`). Besides the addressing, the panel is prefetched here (it
/// comes from L2, a group's), which the intrinsics, written for this layout as for
/// weights that stay in L1, do not.
#[rustfmt::skip]
macro_rules! packed_row {
    ($u:tt) => {
        concat!(
            "vmovups {a_lo}, zmmword ptr [{a} + 128*", $u, "]\n",
            "vmovups {a_hi}, zmmword ptr [{a} + 128*", $u, " + 64]\n",
            "prefetcht0 byte ptr [{a} + 128*", $u, " + 2048]\n",
            "prefetcht0 byte ptr [{a} + 128*", $u, " + 2112]\n",
            "prefetcht0 byte ptr [{b} + {b_step}*4]\n",
            "prefetcht0 byte ptr [{b} + {b_step}*4 + 44]\n",
            row_multiply_add!(0, "x0"),
            row_multiply_add!(1, "x1"),
            row_multiply_add!(2, "x0"),
            row_multiply_add!(3, "x1"),
            row_multiply_add!(4, "x0"),
            row_multiply_add!(5, "x1"),
            row_multiply_add!(6, "x0"),
            row_multiply_add!(7, "x1"),
            row_multiply_add!(8, "x0"),
            row_multiply_add!(9, "x1"),
            row_multiply_add!(10, "x0"),
            row_multiply_add!(11, "x1"),
            "add {b}, {b_step}\n",
        )
    };
}

/// The row's value for column `$j` broadcast into `$x`, times the panel's two halves,
/// added into column `$j`'s two accumulators.
#[rustfmt::skip]
macro_rules! row_multiply_add {
    ($j:tt, $x:literal) => {
        concat!(
            "vbroadcastss {", $x, "}, dword ptr [{b} + 4*", $j, "]\n",
            "vfmadd231ps {lo", $j, "}, {a_lo}, {", $x, "}\n",
            "vfmadd231ps {hi", $j, "}, {a_hi}, {", $x, "}\n",
        )
    };
}

/// `k` packed columns of a 32-row panel from `a` times 12 columns of B whose values
/// for each packed column lie side by side, `b_step` apart from one packed column to
/// the next (B's rows: the weight gradients' copy of vᵀ, see `STAGED_ROWS`), added
/// into the accumulators as in `panel_times_12_columns`. The panel is prefetched as
/// there, and B's rows four ahead (see `packed_row`).
///
/// # Safety
/// AVX-512F is present; `32 * k` values are readable from `a`, and 12 values from
/// `b + p * b_step` for each p below `k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_times_12_of_rows(
    a: *const f32,
    b: *const f32,
    b_step: usize,
    k: usize,
    lo: &mut [__m512; 12],
    hi: &mut [__m512; 12],
) {
    // SAFETY: the loop reads `32 * k` values from `a` and 12 from each of B's `k`
    // rows (the caller's promise), and writes only the named registers.
    unsafe {
        panel_asm!(
            a, k,
            unrolled: [
                packed_row!(0),
                packed_row!(1),
                packed_row!(2),
                packed_row!(3),
                packed_row!(4),
                packed_row!(5),
                packed_row!(6),
                packed_row!(7),
                packed_row!(8),
                packed_row!(9),
                packed_row!(10),
                packed_row!(11),
                packed_row!(12),
                packed_row!(13),
                packed_row!(14),
                packed_row!(15),
            ],
            single: [packed_row!(0)],
            lo, hi,
            b = inout(reg) b => _,
            b_step = in(reg) b_step * size_of::<f32>(),
        )
    }
}
