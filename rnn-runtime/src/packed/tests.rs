//! Tests of the packed products and packings: the kernels against a naive product in
//! f64, at the shapes and offsets where their paths part.

use super::*;
use crate::tape::StackBlock;

/// The naive product, in f64, of the strided matrix with B's columns.
fn reference(
    a: &[f32],
    (m, k): (usize, usize),
    (rs, cs): (usize, usize),
    b: &[f32],
    ldb: usize,
    n: usize,
) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for j in 0..n {
        for i in 0..m {
            c[i + j * m] = (0..k)
                .map(|p| a[i * rs + p * cs] as f64 * b[p + j * ldb] as f64)
                .sum();
        }
    }
    c
}

/// C's value at `at` is the product's `want`: stored, or with `add` added to what C
/// held `before`.
fn assert_product_at(
    c: &[f32],
    before: &[f32],
    at: usize,
    want: f64,
    add: bool,
    context: impl Fn() -> String,
) {
    let start = if add { before[at] as f64 } else { 0.0 };
    assert!(
        c[at] as f64 == start + want,
        "{}, add {add}: {} against {}",
        context(),
        c[at],
        start + want
    );
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as f32 * 0.37 + seed as f32).sin() * 2.0).round() / 4.0)
        .collect()
}

/// Every panel height and block width, both orientations, strided B and C, stored,
/// added to C and onto a column of biases: exact, since the values are quarters
/// and the sums are short.
#[test]
fn packed_products_match_the_naive_product() {
    for isa in runnable_isas() {
        products_match_the_naive_product(isa);
    }
}

/// The instruction sets whose kernels this processor runs: an AVX-512 machine
/// also tests the AVX2 ones.
fn runnable_isas() -> impl Iterator<Item = Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|&isa| kernel_runs(isa))
}

/// Whether this processor runs `isa`'s kernels.
fn kernel_runs(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

fn products_match_the_naive_product(isa: Isa) {
    for &(m, k, n) in &[
        (1, 1, 1),
        (140, 35, 1),
        (35, 140, 1),
        (200, 9, 1),
        (129, 33, 1),
        (300, 2, 1),
        (180, 20, 1),
        (41, 10, 1),
        (8, 4, 1),
        (50, 9, 3),
        (120, 11, 5),
        (33, 7, 9),
        (16, 20, 6),
        (64, 3, 17),
        (100, 50, 13),
        (40, 5, 300),
        (70, 12, 11),
        (64, 8, 22),
        // Panels in groups of four (see `GROUP_BYTES`), the last of three.
        (200, 1024, 13),
        // Two groups, the second prefetched by the blocks of B after the first
        // (see `next_group_lines`): 12 columns in assembly, then 8 by intrinsics.
        (200, 1000, 32),
        // Streamed weights through the assembly loop (see `inner_loop`): 62 of its
        // iterations and 8 packed columns after them, and 5 packed columns alone.
        (96, 1000, 25),
        (2100, 5, 12),
        (5, 0, 3),
        (5, 0, 1),
    ] {
        for transposed in [false, true] {
            // A stored column-major (m × k), or as the transpose of a (k × m) buffer.
            let a = values(m * k, 1);
            let strides = if transposed { (k, 1) } else { (1, m) };
            // Packed into storage a finished matrix left full of NaN: every value
            // the kernels read is written.
            let used = vec![f32::NAN; LineAligned::storage_len(panels_len(isa, m, k))];
            let packed = PackedMatrix::pack_for_into(isa, used, &a, m, k, strides, None);
            let (ldb, ldc) = (k + 3, m + 2);
            let b = values(ldb * n + 5, 2);
            let b_view: Vec<f32> = b[2..].to_vec();
            let want = reference(&a, (m, k), strides, &b_view, ldb, n);
            // Stored over NaN, and added to values (C's padding NaN either way).
            for add in [false, true] {
                let mut before = vec![f32::NAN; 1 + ldc * n];
                if add {
                    let start = values(before.len(), 6);
                    for j in 0..n {
                        let column = 1 + j * ldc..1 + j * ldc + m;
                        before[column.clone()].copy_from_slice(&start[column]);
                    }
                }
                let mut c = before.clone();
                let start = if add { Start::C } else { Start::Zero };
                packed.multiply(&b, (2, ldb), &mut c, (1, ldc), n, start);
                if n == 1 {
                    // The tape's direct path for one column: the same values.
                    let mut direct = before.clone();
                    packed.multiply_one_column(&b[2..], &mut direct[1..], add);
                    let same = direct
                        .iter()
                        .zip(&c)
                        .all(|(d, c)| d.to_bits() == c.to_bits());
                    assert!(same, "{isa:?} ({m},{k},1) directly, add {add}");
                }
                for j in 0..n {
                    for i in 0..m {
                        let (at, want) = (1 + i + j * ldc, want[i + j * m]);
                        let context = || format!("{isa:?} ({m},{k},{n}) at ({i},{j})");
                        assert_product_at(&c, &before, at, want, add, context);
                    }
                    // The padding rows between columns of C are left alone.
                    for pad in m..ldc {
                        assert!(c[1 + pad + j * ldc].is_nan(), "wrote padding at {pad}");
                    }
                }
            }
            // Onto a column of biases, over C's NaN: every column starts from them.
            let bias = values(m, 7);
            let mut c = vec![f32::NAN; 1 + ldc * n];
            packed.multiply(&b, (2, ldb), &mut c, (1, ldc), n, Start::Bias(&bias));
            for j in 0..n {
                for i in 0..m {
                    let (got, want) = (c[1 + i + j * ldc] as f64, bias[i] as f64 + want[i + j * m]);
                    assert!(
                        got == want,
                        "{isa:?} ({m},{k},{n}) onto biases at ({i},{j}): {got} against {want}"
                    );
                }
                for pad in m..ldc {
                    assert!(c[1 + pad + j * ldc].is_nan(), "wrote padding at {pad}");
                }
            }
        }
    }
}

/// `C += P · B` with inner dimensions below, at and past the inner block, every
/// panel height and block width, all of P's rows and the rows from a later panel or
/// to an earlier row, B stored by columns and as the transpose of a matrix stored
/// by columns, added to C and stored over it: exact, as above.
#[test]
fn blocked_products_add_the_naive_product() {
    for isa in runnable_isas() {
        let mr = isa.panel_rows();
        for &(m, k, n) in &[
            (1, 1, 1),
            (33, 300, 9),
            (50, 130, 5),
            (64, 129, 17),
            (5, 256, 3),
            (40, 128, 8),
            (100, 7, 13),
            // B read by rows copied block by block (at least `STAGED_ROWS` rows).
            (300, 260, 14),
            // B's rows through the assembly loop (`panel_times_12_of_rows`): two
            // blocks of 12 columns, inner blocks of 128 (8 iterations) and 22 (one,
            // and 6 packed columns after it).
            (96, 150, 24),
            (9, 0, 2),
        ] {
            let a = values(m * k, 3);
            let packed = PackedMatrix::pack_for(isa, &a, m, k, (1, m));
            let want = |b: &[f32], ldb| reference(&a, (m, k), (1, m), b, ldb, n);
            let later = if m > mr { mr } else { 0 };
            for rows in [0..m, later..m, 0..m / 2, later..(later + 3).min(m)] {
                let (ldb, ldc) = (k + 1, rows.len() + 3);
                let b = values(ldb * n + 2, 4);
                let want = want(&b[1..], ldb);
                // The same B as the rows of a matrix whose columns are n + 2 apart.
                let ld_rows = n + 2;
                let mut b_rows = vec![f32::NAN; 1 + k * ld_rows];
                for p in 0..k {
                    for j in 0..n {
                        b_rows[1 + p * ld_rows + j] = b[1 + p + j * ldb];
                    }
                }
                let values_before = values(2 + ldc * n, 5);
                let layouts = [
                    (&b, Operand::columns(1, ldb)),
                    (&b_rows, Operand::rows(1, ld_rows)),
                ];
                // Added to C's values, and stored over NaN.
                for ((b, b_at), add) in layouts.into_iter().flat_map(|l| [(l, true), (l, false)]) {
                    let before = if add {
                        values_before.clone()
                    } else {
                        vec![f32::NAN; values_before.len()]
                    };
                    let mut c = before.clone();
                    packed.multiply_rows(rows.clone(), b, b_at, &mut c, (2, ldc), n, add);
                    for j in 0..n {
                        for (r, i) in rows.clone().enumerate() {
                            let (at, want) = (2 + r + j * ldc, want[i + j * m]);
                            let context = || format!("{isa:?} ({m},{k},{n}) {rows:?} at ({i},{j})");
                            assert_product_at(&c, &before, at, want, add, context);
                        }
                        for pad in rows.len()..ldc {
                            let at = 2 + pad + j * ldc;
                            if at < c.len() {
                                assert_eq!(
                                    c[at].to_bits(),
                                    before[at].to_bits(),
                                    "wrote padding at {pad}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stacks of blocks that split panels, at inner dimensions below and past the
/// inner block and at every block width, B by columns and by rows (the last few
/// rows of a stack of 70 or 100 then apart, see `rows_apart`): each block's C
/// gains its rows of the product, exactly, and nothing around them changes. Blocks
/// smaller than a panel are declined, and left as they were.
#[test]
fn products_add_into_blocks_that_split_panels() {
    for (isa, by_rows) in runnable_isas().flat_map(|isa| [(isa, false), (isa, true)]) {
        for blocks in [
            vec![35, 35, 35, 35],
            vec![33, 40],
            vec![32, 32],
            vec![64, 35, 47],
            vec![50],
            vec![31, 40],
            vec![35, 35],
            vec![40, 60],
        ] {
            for &(k, n) in &[(7, 1), (130, 9), (35, 35), (3, 17), (20, 70)] {
                let m: usize = blocks.iter().sum();
                let a = values(m * k, 11);
                let packed = PackedMatrix::pack_for(isa, &a, m, k, (1, m));
                let ldb = k + 2;
                let b = values(1 + ldb * n, 12);
                let want = reference(&a, (m, k), (1, m), &b[1..], ldb, n);
                // The same B as the rows of a matrix whose columns are n + 1 apart.
                let mut b_rows = vec![f32::NAN; k * (n + 1)];
                for p in 0..k {
                    for j in 0..n {
                        b_rows[p * (n + 1) + j] = b[1 + p + j * ldb];
                    }
                }
                let (b, b_at) = if by_rows {
                    (&b_rows, Operand::rows(0, n + 1))
                } else {
                    (&b, Operand::columns(1, ldb))
                };
                // Each block's C: its rows of n columns, 2 apart, after 3 values.
                let before: Vec<Vec<f32>> = blocks
                    .iter()
                    .enumerate()
                    .map(|(i, &rows)| values(3 + (rows + 2) * n, 13 + i as u32))
                    .collect();
                let mut after = before.clone();
                let mut rows: Vec<RowBlock<'_>> = after
                    .iter_mut()
                    .zip(&blocks)
                    .map(|(c, &rows)| RowBlock {
                        c,
                        at: 3,
                        ld: rows + 2,
                        rows,
                    })
                    .collect();
                let done = packed.multiply_add_into_blocks(b, b_at, n, &mut rows);
                let applies = isa == Isa::Avx512 && blocks.iter().all(|&r| r >= 32);
                assert_eq!(done, applies, "{isa:?} {blocks:?}");
                let mut first = 0;
                for (i, &rows) in blocks.iter().enumerate() {
                    for (at, (&got, &was)) in after[i].iter().zip(&before[i]).enumerate() {
                        // Row r of column j lies at 3 + r + j * (rows + 2).
                        let (j, r) = (
                            at.saturating_sub(3) / (rows + 2),
                            at.saturating_sub(3) % (rows + 2),
                        );
                        let expected = if done && at >= 3 && r < rows {
                            was as f64 + want[first + r + j * m]
                        } else {
                            was as f64
                        };
                        assert!(
                            got as f64 == expected,
                            "{isa:?} {blocks:?} ({k}, {n}), B by rows {by_rows}: block {i} at {at}: {got} against {expected}"
                        );
                    }
                    first += rows;
                }
            }
        }
    }
}

/// Transposed products of one column, at every column count around the block of
/// eight and row counts around whole registers, from a strided source into
/// storage a finished copy left full of NaN, stored and added: exact, as above.
#[test]
fn transposed_column_products_match_the_naive_product() {
    for &(rows, cols) in &[
        (1, 1),
        (140, 35),
        (40, 12),
        (33, 13),
        (16, 8),
        (17, 9),
        (15, 7),
        (2048, 3),
        (3, 0),
    ] {
        let ld = rows + 2;
        let a = values(ld * cols, 7);
        let x = values(rows, 8);
        let used = vec![f32::NAN; AlignedColumns::stored_len(rows, cols)];
        let Some(copy) = AlignedColumns::copy_into(used, &a, ld, (rows, cols)) else {
            return;
        };
        for add in [false, true] {
            let mut before = values(cols + 1, 9);
            if !add {
                before.fill(f32::NAN);
            }
            before[cols] = f32::NAN;
            let mut out = before.clone();
            copy.transposed_times(&x, &mut out, add);
            for k in 0..cols {
                let want: f64 = (0..rows).map(|i| a[k * ld + i] as f64 * x[i] as f64).sum();
                let start = if add { before[k] as f64 } else { 0.0 };
                assert_eq!(
                    out[k] as f64,
                    start + want,
                    "({rows}, {cols}) at {k}, add {add}"
                );
            }
            assert!(out[cols].is_nan(), "wrote past the columns");
        }
    }
}

/// The choices at the shapes that were timed (see
/// `transposed_column_prefers_dots`): the packed transpose while it fits in L1,
/// dot products past it.
#[test]
fn dot_products_serve_weights_whose_packed_transpose_outgrows_l1() {
    for (rows, cols) in [(140, 35), (35, 35), (160, 40), (64, 32)] {
        assert!(
            !transposed_column_prefers_dots(rows, cols),
            "{rows} × {cols}"
        );
    }
    for (rows, cols) in [(200, 50), (400, 100), (2048, 512)] {
        assert!(
            transposed_column_prefers_dots(rows, cols),
            "{rows} × {cols}"
        );
    }
}

/// Every shape of whole blocks and leftovers, at a row offset, against the
/// definition.
#[test]
fn transposes_match_the_definition() {
    for &(rows, columns) in &[
        (1, 1),
        (8, 8),
        (16, 24),
        (9, 17),
        (35, 70),
        (7, 5),
        (64, 3),
        (3, 64),
        (13, 11),
    ] {
        let (ld, row) = (rows + 5, 3);
        let values = values(ld * columns, 6);
        // Past the transpose, a guard that must stay as it is.
        let mut out = vec![f32::NAN; rows * columns + 16];
        let (from, size) = ((ld, row), (rows, columns));
        transpose_runs(&values, from, size, &mut out[..rows * columns], columns);
        assert!(out[rows * columns..].iter().all(|v| v.is_nan()));
        for j in 0..rows {
            for k in 0..columns {
                assert_eq!(
                    out[j * columns + k].to_bits(),
                    values[k * ld + row + j].to_bits(),
                    "({rows}, {columns}) at ({j}, {k})"
                );
            }
        }
    }
}

/// Packed into reused memory full of NaN, every panel holds the matrix's values and
/// zeros below its last row, in both orientations and at every height of a last
/// panel; a last panel stores 8, 16 or 32 rows with AVX-512, as few as hold it.
/// The rows' sums are added to what the sums held.
#[test]
fn panels_hold_the_values_and_zeros_below_them() {
    for isa in runnable_isas() {
        let mr = isa.panel_rows();
        for rows in [1usize, 3, 8, 9, 12, 16, 17, 31, 32, 35, 40, 64, 70] {
            let (cols, last) = (5, rows.div_ceil(mr) - 1);
            let stored = match (isa, rows % mr) {
                (Isa::Avx512, 1..=8) => 8,
                (Isa::Avx512, 9..=16) => 16,
                _ => mr,
            };
            let values = values(rows * cols, 9);
            for strides in [(1, rows), (cols, 1)] {
                // (Exactly the length the panels need, so that it is reused.)
                let len = LineAligned::storage_len((last * mr + stored) * cols);
                let storage = vec![f32::NAN; len];
                // Summing the rows on the way, onto sums that start at one.
                let mut sums = vec![1.0f32; rows];
                let packed = PackedMatrix::pack_for_into(
                    isa,
                    storage,
                    &values,
                    rows,
                    cols,
                    strides,
                    Some(&mut sums),
                );
                for (row, &sum) in sums.iter().enumerate() {
                    let want: f32 = 1.0
                        + (0..cols)
                            .map(|k| values[row * strides.0 + k * strides.1])
                            .sum::<f32>();
                    assert_eq!(sum, want, "{rows} rows, {strides:?}: row {row}'s sum");
                }
                assert_eq!(packed.panels.len(), (last * mr + stored) * cols);
                for (at, &got) in packed.panels.iter().enumerate() {
                    let p = (at / (mr * cols)).min(last);
                    let (stride, within) =
                        (if p == last { stored } else { mr }, at - p * mr * cols);
                    let (k, r) = (within / stride, within % stride);
                    let row = p * mr + r;
                    let want = if row < rows {
                        values[row * strides.0 + k * strides.1]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{rows} rows, {strides:?}: row {row}, column {k}"
                    );
                }
            }
        }
    }
}

/// A stack packed from its blocks (heights that split panels and fill them, a
/// block of one row, parameters wider than the stack read from a later column) is
/// the same, bit for bit and padding included, as the stack copied column-major and
/// packed; blocks that leave a gap or overrun are refused.
#[test]
fn packing_blocks_packs_their_stack() {
    for isa in runnable_isas() {
        for heights in [
            vec![35, 35, 35, 35],
            vec![33, 40],
            vec![64, 35, 47],
            vec![1],
            vec![5, 3, 9],
        ] {
            for (cols, col_start) in [(35, 0), (7, 3), (1, 0), (40, 2)] {
                let rows: usize = heights.iter().sum();
                let params: Vec<Vec<f32>> = heights
                    .iter()
                    .enumerate()
                    .map(|(i, &h)| values(h * (col_start + cols), 20 + i as u32))
                    .collect();
                let mut stack = vec![f32::NAN; rows * cols];
                let mut parts = Vec::new();
                let mut row = 0;
                for (param, &h) in params.iter().zip(&heights) {
                    for k in 0..cols {
                        let at = (col_start + k) * h;
                        stack[k * rows + row..][..h].copy_from_slice(&param[at..at + h]);
                    }
                    parts.push(StackBlock {
                        row,
                        values: param,
                        rows: h,
                        col_start,
                    });
                    row += h;
                }
                let want = PackedMatrix::pack_for(isa, &stack, rows, cols, (1, rows));
                // Storage with stale values, as the pool hands out.
                let stale = vec![f32::NAN; PackedMatrix::packed_len(rows, cols) + 40];
                let got = PackedMatrix::pack_blocks_for_into(isa, stale, &parts, rows, cols);
                assert_eq!(
                    panel_bits(&got),
                    panel_bits(&want),
                    "{isa:?} {heights:?} {cols} from {col_start}"
                );
                assert_eq!(
                    (got.rows, got.cols, got.streamed),
                    (want.rows, want.cols, want.streamed)
                );
            }
        }
        let param = values(12 * 4, 3);
        let gap = [
            StackBlock {
                row: 0,
                values: &param,
                rows: 4,
                col_start: 0,
            },
            StackBlock {
                row: 5,
                values: &param,
                rows: 4,
                col_start: 0,
            },
        ];
        let short = [StackBlock {
            row: 0,
            values: &param[..40],
            rows: 4,
            col_start: 0,
        }];
        for (parts, rows) in [(&gap[..], 9), (&short[..], 4), (&gap[..1], 8)] {
            let packing = std::panic::catch_unwind(|| {
                PackedMatrix::pack_blocks_for_into(isa, Vec::new(), parts, rows, 12)
            });
            assert!(packing.is_err(), "{isa:?}: {rows} rows from bad blocks");
        }
    }
}

/// A packing's values, bit for bit (padding included).
fn panel_bits(m: &PackedMatrix) -> Vec<u32> {
    m.panels.iter().map(|v| v.to_bits()).collect()
}

/// A packing's transpose (`transposed_into`) is the transpose packed from a
/// column-major copy, bit for bit, at sizes that split panels in either direction
/// and fill them; the aligned columns copied from a packing are those copied from
/// the matrix.
#[test]
fn transposing_the_packing_packs_the_transpose() {
    for isa in runnable_isas() {
        for (rows, cols) in [
            (140, 35),
            (35, 140),
            (35, 35),
            (64, 32),
            (1, 9),
            (9, 1),
            (70, 200),
            (33, 17),
        ] {
            let matrix = values(rows * cols, 7);
            let packed = PackedMatrix::pack_for(isa, &matrix, rows, cols, (1, rows));
            let want = PackedMatrix::pack_for(isa, &matrix, cols, rows, (rows, 1));
            let stale = vec![f32::NAN; PackedMatrix::packed_len(cols, rows) + 3];
            let got = packed.transposed_into(stale);
            assert_eq!(
                panel_bits(&got),
                panel_bits(&want),
                "{isa:?} {rows} x {cols}"
            );
            assert_eq!(
                (got.rows, got.cols, got.streamed),
                (cols, rows, want.streamed)
            );
            let copied = AlignedColumns::copy_into(Vec::new(), &matrix, rows, (rows, cols));
            let stale = vec![f32::NAN; AlignedColumns::stored_len(rows, cols)];
            if let (Some(copied), Some(from_packing)) =
                (copied, AlignedColumns::copy_packed_into(stale, &packed))
            {
                let x = values(rows, 8);
                let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
                copied.transposed_times(&x, &mut a, false);
                from_packing.transposed_times(&x, &mut b, false);
                assert_eq!(a, b, "{isa:?} {rows} x {cols}: aligned columns");
            }
        }
    }
}

#[test]
fn only_f32_is_viewed_as_f32() {
    assert!(as_f32(&[1.0f32]).is_some());
    assert!(as_f32(&[1.0f64]).is_none());
    assert!(as_f32_mut(&mut [1.0f64]).is_none());
    assert!(!available::<f64>());
}

/// The AMX products (`TileWeight`): every edge of the 32 × 32 blocks (rows and
/// columns short of a tile, of a pair, of a block of rows or of columns, and fewer
/// columns than a block), inner
/// dimensions short of a chunk and past a depth block, B and C strided, stored, added
/// to C and onto biases. Exact with quarters, as above: their high parts are the
/// whole values. (On a processor without AMX there is nothing to run.)
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn tile_products_match_the_naive_product() {
    if !amx::available() {
        eprintln!("no AMX here: the tile products are not tested");
        return;
    }
    for &(m, k, n) in &[
        (1, 1, 32),
        // Fewer columns than a pair of tiles: a pass on the tiles multiplies every
        // step there, however few sequences a step has left.
        (40, 20, 1),
        (70, 33, 5),
        (32, 64, 17),
        (16, 32, 32),
        (17, 31, 33),
        (45, 70, 47),
        (64, 33, 64),
        (140, 35, 100),
        (300, 40, 40),
        (33, 600, 35),
        (48, 20, 300),
    ] {
        for transposed in [false, true] {
            let a = values(m * k, 1);
            let strides = if transposed { (k, 1) } else { (1, m) };
            let packed = PackedMatrix::pack_for(Isa::Avx512, &a, m, k, strides);
            // Storage a finished weight left full of NaN bits.
            let used = vec![f32::NAN; TileWeight::stored_len(m, k)];
            let tiles = TileWeight::from_packed(used, &packed).expect("AMX runs here");
            let (ldb, ldc) = (k + 3, m + 2);
            let b = values(ldb * n + 5, 2);
            let want = reference(&a, (m, k), strides, &b[2..], ldb, n);
            for start_from in ["zero", "C", "bias"] {
                let before: Vec<f32> = values(1 + ldc * n, 6)
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| if (i + ldc - 1) % ldc < m { v } else { f32::NAN })
                    .collect();
                let bias = values(m, 7);
                let start = match start_from {
                    "zero" => Start::Zero,
                    "C" => Start::C,
                    _ => Start::Bias(&bias),
                };
                let mut c = before.clone();
                tiles.multiply(&b, (2, ldb), &mut c, (1, ldc), n, start);
                for j in 0..n {
                    for i in 0..m {
                        let at = 1 + i + j * ldc;
                        let from = match start_from {
                            "zero" => 0.0,
                            "C" => f64::from(before[at]),
                            _ => f64::from(bias[i]),
                        };
                        let (got, want) = (f64::from(c[at]), from + want[i + j * m]);
                        assert!(
                            got == want,
                            "({m},{k},{n}) from {start_from} at ({i},{j}): {got} against {want}"
                        );
                    }
                    for pad in m..ldc {
                        assert!(c[1 + pad + j * ldc].is_nan(), "wrote padding at {pad}");
                    }
                }
            }
        }
    }
}

/// With values of 24 significant bits, the tile products stay as close to the exact
/// product as f32 multiply-adds: within 2⁻²² of the sum of the terms' magnitudes. A
/// product that left out any of the six pairs of parts would be off by more (the
/// smallest, low·high, by 6·10⁻⁷, about 2⁻²¹).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn tile_products_keep_f32_precision() {
    if !amx::available() {
        eprintln!("no AMX here: the tile products are not tested");
        return;
    }
    let (m, k, n) = (70, 300, 40);
    let (a, b) = (
        random_unit_values(m * k, 0x9e37_79b9),
        random_unit_values(k * n, 7),
    );
    let packed = PackedMatrix::pack_for(Isa::Avx512, &a, m, k, (1, m));
    let tiles = TileWeight::from_packed(Vec::new(), &packed).expect("AMX runs here");
    let mut c = vec![0.0f32; m * n];
    tiles.multiply(&b, (0, k), &mut c, (0, m), n, Start::Zero);
    assert_within_f32_precision(&c, &a, &b, (m, k, n));
}

/// `len` values spread over [-1, 1), with 24 significant bits (most of them).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn random_unit_values(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 * 2.0 - 1.0
        })
        .collect()
}

/// C (m × n) is A (m × k) times B (k × n), all column-major, within 2⁻²² of the sum
/// of the terms' magnitudes.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn assert_within_f32_precision(c: &[f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) {
    let want = reference(a, (m, k), (1, m), b, k, n);
    let mut worst = 0.0f64;
    for j in 0..n {
        for i in 0..m {
            let magnitude: f64 = (0..k)
                .map(|p| f64::from(a[i + p * m] * b[p + j * k]).abs())
                .sum();
            worst = worst.max((f64::from(c[i + j * m]) - want[i + j * m]).abs() / magnitude);
        }
    }
    assert!(worst < 2f64.powi(-22), "relative error {worst:.2e}");
}

/// The weight gradients' tile product (`TransposedParts`), `C += A · Vᵀ` with A and V
/// column-major and strided: rows of A past a block of rows, rows of V past a block
/// of columns, depths short of a chunk and past slices, one row or one column, and
/// C's padding untouched. Exact with quarters, as above.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn tile_gradient_products_match_the_naive_product() {
    if !amx::available() {
        eprintln!("no AMX here: the tile products are not tested");
        return;
    }
    for &(m, n, depth) in &[
        (1, 1, 1),
        (40, 1, 20),
        (1, 45, 33),
        (70, 33, 5),
        (32, 64, 128),
        (17, 31, 129),
        (530, 40, 70),
        (45, 520, 300),
        (33, 1060, 280),
        (600, 530, 64),
    ] {
        let (lda, ldv, ldc) = (m + 3, n + 5, m + 2);
        let a = values(lda * depth + 1, 1);
        let v = values(ldv * depth + 2, 2);
        // B of the naive product: vᵀ, depth × n column-major.
        let vt: Vec<f32> = (0..n * depth)
            .map(|i| v[2 + i / depth + (i % depth) * ldv])
            .collect();
        let want = reference(&a[1..], (m, depth), (1, lda), &vt, depth, n);
        let used = vec![f32::NAN; TransposedParts::stored_len(n, depth)];
        let rows = |values, offset, ld, rows| GradientRows {
            values,
            offset,
            ld,
            rows,
        };
        let parts =
            TransposedParts::split(used, rows(&v, 2, ldv, n), depth).expect("AMX runs here");
        let before: Vec<f32> = values(3 + ldc * n, 6)
            .iter()
            .enumerate()
            .map(|(i, &x)| if (i + ldc - 3) % ldc < m { x } else { f32::NAN })
            .collect();
        let mut c = before.clone();
        parts.add_product(rows(&a, 1, lda, m), &mut c, (3, ldc));
        for j in 0..n {
            for i in 0..m {
                let at = 3 + i + j * ldc;
                let (got, want) = (f64::from(c[at]), f64::from(before[at]) + want[i + j * m]);
                assert!(
                    got == want,
                    "({m},{n},{depth}) at ({i},{j}): {got} against {want}"
                );
            }
            for pad in m..ldc {
                assert!(c[3 + pad + j * ldc].is_nan(), "wrote padding at {pad}");
            }
        }
    }
}

/// The weight gradients' tile product keeps f32's precision, as the weight's does
/// (see `tile_products_keep_f32_precision`): both of its splits give every part.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn tile_gradient_products_keep_f32_precision() {
    if !amx::available() {
        eprintln!("no AMX here: the tile products are not tested");
        return;
    }
    let (m, n, depth) = (70, 40, 300);
    let (a, v) = (
        random_unit_values(m * depth, 0x2545_f491),
        random_unit_values(n * depth, 3),
    );
    let rows = |values, rows| GradientRows {
        values,
        offset: 0,
        ld: rows,
        rows,
    };
    let parts = TransposedParts::split(Vec::new(), rows(&v, n), depth).expect("AMX runs here");
    let mut c = vec![0.0f32; m * n];
    parts.add_product(rows(&a, m), &mut c, (0, m));
    let vt: Vec<f32> = (0..n * depth)
        .map(|i| v[i / depth + (i % depth) * n])
        .collect();
    assert_within_f32_precision(&c, &a, &vt, (m, depth, n));
}
