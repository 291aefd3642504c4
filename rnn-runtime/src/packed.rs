//! The per-step product of a recurrent weight, with the weight packed once per sequence.
//!
//! A recurrent step multiplies the same weight by a new state, T times over. A general
//! GEMM (matrixmultiply) copies its left operand into cache-sized panels at every call:
//! for the medium LSTM that is 4 MB per step, as much memory traffic as the product's
//! own reads. Here the weight is copied once, into panels of `MR` rows stored k-major
//! (each panel one sequential stream), and every step's product runs a register-blocked
//! AVX-512 or AVX2 kernel over them. Where neither instruction set is present, or for
//! f64, the tape keeps the general GEMM: this module only speeds up f32.

use std::any::TypeId;

use crate::copies::copy_run;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod inner_loop;
#[cfg(target_arch = "x86_64")]
mod last_rows;
mod stacking;

/// The instruction set a weight was packed for; its panel height follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// 32 rows per panel: two 16-lane registers.
    Avx512,
    /// 16 rows per panel: two 8-lane registers.
    Avx2,
}

impl Isa {
    /// The panels that a one-column product runs side by side (see
    /// `multiply_one_column`): AVX2's 16 registers hold the accumulators of four.
    fn one_column_group(self) -> usize {
        match self {
            Isa::Avx512 => 6,
            Isa::Avx2 => 4,
        }
    }

    /// The best kernel this processor runs, if any.
    fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Rows per panel.
    fn panel_rows(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 => 16,
        }
    }

    /// The rows stored per packed column of the last panel of a `rows`-row matrix:
    /// with AVX-512, the fewest of 8, 16 or 32 that hold its rows, so that the
    /// kernels read one 8-lane, one 16-lane or two 16-lane vectors per column. A
    /// last panel padded to 32 rows that the kernel reads 8 of spaces its reads 128
    /// bytes apart, over half the L1 cache's sets: the notebooks' transposed LSTM
    /// weight (35 × 140, 3 rows past a panel) then evicted itself at every step.
    fn last_panel_rows(self, rows: usize) -> usize {
        match (self, rows % self.panel_rows()) {
            (Isa::Avx512, 1..=8) => 8,
            (Isa::Avx512, 9..=16) => 16,
            _ => self.panel_rows(),
        }
    }
}

/// Columns of the state handled per kernel call: 12 columns of a 32-row panel keep
/// 24 of AVX-512's 32 registers accumulating; 6 of a 16-row panel, 12 of AVX2's 16.
/// On the Intel machine (two 512-bit multiply-add units per core) 12 columns ran the
/// large products 3-6% faster than 8, whose 16 accumulators had sufficed on the AMD
/// one (one unit).
fn block_cols(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        Isa::Avx2 => 6,
    }
}

/// The values as f32, when `T` is f32.
pub(crate) fn as_f32<T: 'static>(values: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: `T` is `f32`, so the slice already has this type.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<f32>(), values.len()) }
    })
}

/// The values as f32 to be changed, when `T` is f32.
pub(crate) fn as_f32_mut<T: 'static>(values: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: `T` is `f32`, so the slice already has this type; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) }
    })
}

/// Whether products with `T` go through packed weights on this processor.
pub(crate) fn available<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && Isa::detect().is_some()
}

/// f32 storage whose values start on a 64-byte boundary. A 64-byte load that
/// straddles two cache lines costs two: the tiny LSTM's step product (140 × 35, in
/// L1) took 0.23 µs from panels 16 bytes off a line against 0.12 from aligned ones, in
/// a scratch loop. The system allocator aligns to 16 bytes.
struct LineAligned {
    /// `len` values from `start`, plus up to a line's worth of slack before them.
    storage: Vec<f32>,
    start: usize,
    len: usize,
}

impl LineAligned {
    /// The storage `len` aligned values need.
    fn storage_len(len: usize) -> usize {
        len + LINE - 1
    }

    /// `len` aligned values in `storage` (another's, from `into_storage`, or empty),
    /// which keeps its old contents where its length fits.
    fn new(mut storage: Vec<f32>, len: usize) -> LineAligned {
        let total = LineAligned::storage_len(len);
        if storage.len() != total {
            storage.clear();
            storage.resize(total, 0.0);
        }
        let start = storage.as_ptr().align_offset(64).min(LINE - 1);
        LineAligned {
            storage,
            start,
            len,
        }
    }

    fn into_storage(self) -> Vec<f32> {
        self.storage
    }
}

impl std::ops::Deref for LineAligned {
    type Target = [f32];

    #[inline]
    fn deref(&self) -> &[f32] {
        &self.storage[self.start..][..self.len]
    }
}

impl std::ops::DerefMut for LineAligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..][..self.len]
    }
}

/// A matrix (the weight, or its transpose) in panels of `isa.panel_rows()` rows: panel
/// `p` holds rows `p·MR..p·MR + MR` column after column, the last panel
/// `isa.last_panel_rows(rows)` values per column, padded with zeros.
pub(crate) struct PackedMatrix {
    isa: Isa,
    rows: usize,
    cols: usize,
    panels: LineAligned,
    /// Whether the panels outgrow L1, so that the kernels prefetch them (see
    /// `STREAMED_BYTES`).
    streamed: bool,
    /// The one-column product's kernels (see `multiply_one_column`): for a group of
    /// whole panels, and for the group that ends with the last panel.
    one_column: [OneColumnKernel; 2],
    /// Whether the one-column product runs all of its panels as one group.
    one_group: bool,
}

/// A kernel of the one-column product, for a group of panels: from `a` (the group's
/// first panel, `k` packed columns each), times B's column `b`, into C's `height`
/// rows from `c`, added to them or stored over them. Its operands come in registers,
/// not as a `Block`: building that on the stack at every call (17 fields) cost the
/// tiny MGU's 280 products a pass about 1.3% of its time.
type OneColumnKernel =
    unsafe fn(a: *const f32, k: usize, b: *const f32, c: *mut f32, height: usize, add: bool);

/// The values that a `rows` × `cols` matrix's panels hold: whole panels, then the
/// last one's rows (see `Isa::last_panel_rows`).
fn panels_len(isa: Isa, rows: usize, cols: usize) -> usize {
    match rows.div_ceil(isa.panel_rows()) {
        0 => 0,
        panels => ((panels - 1) * isa.panel_rows() + isa.last_panel_rows(rows)) * cols,
    }
}

/// The values per packed column of panel `p` of a `rows`-row matrix.
fn panel_stride(isa: Isa, rows: usize, p: usize) -> usize {
    if p + 1 == rows.div_ceil(isa.panel_rows()) {
        isa.last_panel_rows(rows)
    } else {
        isa.panel_rows()
    }
}

impl PackedMatrix {
    /// Packs the `rows` × `cols` matrix whose element (i, k) is
    /// `values[i * row_stride + k * col_stride]`, into `storage` (a finished matrix's,
    /// from `into_storage`, or empty): fresh memory costs a page fault per page and a
    /// clearing pass. `None` where no kernel runs.
    pub(crate) fn pack_into(
        storage: Vec<f32>,
        values: &[f32],
        rows: usize,
        cols: usize,
        strides: (usize, usize),
    ) -> Option<PackedMatrix> {
        Some(PackedMatrix::pack_for_into(
            Isa::detect()?,
            storage,
            values,
            rows,
            cols,
            strides,
            None,
        ))
    }

    /// `pack_into`, adding each row's sum over the columns to `sums` (as many values
    /// as rows) on the way: the biases' gradients, row sums of the dz that the weight
    /// gradients pack, without a pass over dz of their own.
    pub(crate) fn pack_summing_into(
        storage: Vec<f32>,
        values: &[f32],
        (rows, cols): (usize, usize),
        strides: (usize, usize),
        sums: &mut [f32],
    ) -> Option<PackedMatrix> {
        let isa = Isa::detect()?;
        Some(PackedMatrix::pack_for_into(
            isa,
            storage,
            values,
            rows,
            cols,
            strides,
            Some(sums),
        ))
    }

    /// The `rows` × `cols` matrix whose panels `fill(first, height, panel, stride)`
    /// writes, each given its first row, its rows, its values (`stride` per packed
    /// column) and its stride. It writes every value: the rows that pad the last panel
    /// as zeros (the kernels read them, and mask them out of C).
    fn fill_panels(
        isa: Isa,
        storage: Vec<f32>,
        rows: usize,
        cols: usize,
        mut fill: impl FnMut(usize, usize, &mut [f32], usize),
    ) -> PackedMatrix {
        let mr = isa.panel_rows();
        let mut panels = LineAligned::new(storage, panels_len(isa, rows, cols));
        for p in 0..rows.div_ceil(mr) {
            let (first, stride) = (p * mr, panel_stride(isa, rows, p));
            let height = stride.min(rows - first);
            fill(
                first,
                height,
                &mut panels[p * mr * cols..][..stride * cols],
                stride,
            );
        }
        PackedMatrix::from_panels(isa, rows, cols, panels)
    }

    /// The number of values a matrix of this shape packs into.
    pub(crate) fn packed_len(rows: usize, cols: usize) -> usize {
        Isa::detect().map_or(0, |isa| {
            LineAligned::storage_len(panels_len(isa, rows, cols))
        })
    }

    /// The panels' memory, for another matrix to reuse.
    pub(crate) fn into_storage(self) -> Vec<f32> {
        self.panels.into_storage()
    }

    /// `pack_into` fresh memory, for the kernels of `isa`.
    #[cfg(test)]
    fn pack_for(
        isa: Isa,
        values: &[f32],
        rows: usize,
        cols: usize,
        strides: (usize, usize),
    ) -> PackedMatrix {
        PackedMatrix::pack_for_into(isa, Vec::new(), values, rows, cols, strides, None)
    }

    /// `pack_into` for the kernels of `isa`, which the processor must have; with
    /// `sums`, `pack_summing_into`.
    fn pack_for_into(
        isa: Isa,
        storage: Vec<f32>,
        values: &[f32],
        rows: usize,
        cols: usize,
        (row_stride, col_stride): (usize, usize),
        mut sums: Option<&mut [f32]>,
    ) -> PackedMatrix {
        if let Some(sums) = &sums {
            assert!(
                sums.len() >= rows,
                "packing: {} sums for {rows} rows",
                sums.len()
            );
        }
        PackedMatrix::fill_panels(isa, storage, rows, cols, |first, height, panel, stride| {
            if row_stride == 1 {
                // Column-major: each packed column is a run of the source.
                for (k, column) in panel.chunks_exact_mut(stride).enumerate() {
                    let start = first + k * col_stride;
                    let run = &values[start..start + height];
                    if height < stride {
                        copy_padded(isa, column, run);
                    } else {
                        copy_run(column, run);
                    }
                }
                if let Some(sums) = sums.as_deref_mut() {
                    // A second pass over the panel just written (in L1 or L2), its
                    // rows' sums in registers, column by column in order.
                    let mut acc = [0.0f32; 32];
                    match stride {
                        32 => add_columns::<32>(panel, &mut acc),
                        16 => add_columns::<16>(panel, &mut acc),
                        8 => add_columns::<8>(panel, &mut acc),
                        other => unreachable!("a packed column of {other} rows"),
                    }
                    for (sum, a) in sums[first..first + height].iter_mut().zip(&acc) {
                        *sum += *a;
                    }
                }
            } else {
                if height < stride {
                    // The whole panel at once: a fill per column was a `memset` call
                    // each (140 for the tiny LSTM's transposed weight).
                    panel.fill(0.0);
                }
                transpose_into_panel(
                    values,
                    (row_stride, col_stride),
                    first,
                    height,
                    panel,
                    stride,
                );
                if let Some(sums) = sums.as_deref_mut() {
                    for k in 0..cols {
                        for (i, sum) in sums[first..first + height].iter_mut().enumerate() {
                            *sum += values[(first + i) * row_stride + k * col_stride];
                        }
                    }
                }
            }
        })
    }

    /// The matrix whose panels (every value written, the rows padding the last panel
    /// zero) are `panels`.
    fn from_panels(isa: Isa, rows: usize, cols: usize, panels: LineAligned) -> PackedMatrix {
        let mr = isa.panel_rows();
        let streamed = panels.len() * size_of::<f32>() > STREAMED_BYTES;
        let group = isa.one_column_group();
        let last_group = match rows.div_ceil(mr) % group {
            0 => group,
            count => count,
        };
        let last_rows = isa.last_panel_rows(rows);
        PackedMatrix {
            isa,
            rows,
            cols,
            panels,
            streamed,
            one_column: [
                one_column_kernel(isa, group, mr, streamed),
                one_column_kernel(isa, last_group, last_rows, streamed),
            ],
            one_group: (1..=group * mr).contains(&rows),
        }
    }

    /// `C = P · B` for `n` columns: B's column j starts at `b[b_offset + j * ldb]` and
    /// has as many values as P has columns, C's at `c[c_offset + j * ldc]` as many as
    /// P has rows. The accumulators start from `start`: zero, C (so the product is
    /// added to C), or one column of biases (as many values as P has rows) for every
    /// column, which the kernels load where they would load C, so that the biases cost
    /// no pass over C of their own.
    ///
    /// # Panics
    /// When a column of B or C reaches past its slice, or the biases are fewer than
    /// P's rows: the tape computes these extents from its own buffers, so that is a
    /// bug, not a user's mistake.
    pub(crate) fn multiply(
        &self,
        b: &[f32],
        b_at: (usize, usize),
        c: &mut [f32],
        c_at: (usize, usize),
        n: usize,
        start: Start<'_>,
    ) {
        let (k, (b_offset, ldb), (c_offset, ldc)) = (self.cols, b_at, c_at);
        let b_at = Operand::columns(b_offset, ldb);
        self.check_bounds(b, b_at, c, c_at, n, self.rows);
        if let Start::Bias(bias) = start {
            assert!(
                bias.len() >= self.rows,
                "packed product: a bias of {} for {} rows",
                bias.len(),
                self.rows
            );
        }
        if n == 0 || self.rows == 0 {
            return;
        }
        if k == 0 || n == 1 {
            // An empty inner dimension (the product is zero), or the one-column kernel,
            // which stores C or adds to it: biases go into C first.
            let add = match start {
                Start::Zero => false,
                Start::C => true,
                Start::Bias(bias) => {
                    for j in 0..n {
                        c[c_offset + j * ldc..][..self.rows].copy_from_slice(&bias[..self.rows]);
                    }
                    true
                }
            };
            if k > 0 {
                self.multiply_one_column(&b[b_offset..], &mut c[c_offset..], add);
            } else if !add {
                for j in 0..n {
                    c[c_offset + j * ldc..][..self.rows].fill(0.0);
                }
            }
            return;
        }
        let rows = 0..self.rows;
        self.blocks(b, b_at, c, c_at, n, rows, (0, k), self.streamed, start);
    }

    /// `C += (P · B)[rows]` (with `add`; `C = (P · B)[rows]` without), B where
    /// `b_at` says, C addressed as in `multiply` (its columns having `rows.len()`
    /// values), over the inner dimension in blocks: for the weight gradients, whose
    /// inner dimension is every (step, sequence) column of a batch.
    /// Without the blocks, each panel (32 rows by thousands of columns) would leave L1
    /// before the next block of B's columns reads it again. `rows` starts on a panel
    /// (see `panel_height`).
    ///
    /// # Panics
    /// As `multiply`, and when `rows` starts inside a panel or ends past P.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn multiply_rows(
        &self,
        rows: Range<usize>,
        b: &[f32],
        b_at: Operand,
        c: &mut [f32],
        c_at: (usize, usize),
        n: usize,
        add: bool,
    ) {
        assert!(
            rows.start.is_multiple_of(self.panel_height()) && rows.end <= self.rows,
            "packed product: rows {rows:?} of {} in panels of {}",
            self.rows,
            self.panel_height()
        );
        self.check_bounds(b, b_at, c, c_at, n, rows.len());
        if n == 0 || rows.is_empty() {
            return;
        }
        if self.cols == 0 && !add {
            // An empty inner dimension: the product is zero.
            for j in 0..n {
                c[c_at.0 + j * c_at.1..][..rows.len()].fill(0.0);
            }
        }
        let rows = match self.rows_apart(b_at) {
            Some(apart) if rows.end == self.rows => {
                let c_first = c[c_at.0 + apart.start - rows.start..].as_mut_ptr();
                // SAFETY: `check_bounds` found B's rows and C's columns of these rows
                // within their slices.
                unsafe {
                    self.multiply_rows_apart(apart.clone(), b, b_at, (c_first, c_at.1), n, add)
                };
                rows.start..apart.start
            }
            _ => rows,
        };
        if rows.is_empty() {
            return;
        }
        // B's rows one block deep, copied side by side (see `STAGED_ROWS`).
        let mut staged = (b_at.step > 1 && rows.len() >= STAGED_ROWS).then(|| {
            let ld = n.next_multiple_of(LINE) + LINE;
            (vec![0.0f32; INNER_BLOCK.min(self.cols) * ld], ld)
        });
        for first in (0..self.cols).step_by(INNER_BLOCK) {
            let depth = INNER_BLOCK.min(self.cols - first);
            // Each block after the first adds to what the ones before it stored.
            let start = if add || first > 0 {
                Start::C
            } else {
                Start::Zero
            };
            let (rows, inner) = (rows.clone(), (first, depth));
            let (b, b_at) = match &mut staged {
                Some((copy, ld)) => {
                    for (p, row) in copy.chunks_exact_mut(*ld).take(depth).enumerate() {
                        let at = b_at.offset + (first + p) * b_at.step;
                        if b_at.ld == 1 {
                            row[..n].copy_from_slice(&b[at..at + n]);
                        } else {
                            for (j, value) in row[..n].iter_mut().enumerate() {
                                *value = b[at + j * b_at.ld];
                            }
                        }
                    }
                    (&copy[..], Operand::rows(0, *ld))
                }
                None => (b, b_at.at_row(first)),
            };
            self.blocks(b, b_at, c, c_at, n, rows, inner, false, start);
        }
    }

    /// The rows of P's last panel, where `last_rows` runs them: B read by rows, and at
    /// most `last_rows::MOST_ROWS` of them (the notebooks' weight gradients, 35 rows,
    /// ran their 3 last rows in as many multiply-adds as 16). `None` elsewhere.
    fn rows_apart(&self, b_at: Operand) -> Option<Range<usize>> {
        let last = self.rows % self.isa.panel_rows();
        // (A shallow product would spend more on adding its sums to C than it saves.)
        let serves = self.isa == Isa::Avx512
            && (1..=last_rows::MOST_ROWS).contains(&last)
            && b_at.ld == 1
            && self.cols >= 8;
        serves.then(|| self.rows - last..self.rows)
    }

    /// `C (+)= P · B` for the rows of `rows_apart`, C's first of them at `c`.
    ///
    /// # Safety
    /// `rows_apart` gave the rows; B holds P's `cols` rows of `n` values where `b_at`
    /// says, and `c` `n` columns of those rows, `ldc` apart.
    unsafe fn multiply_rows_apart(
        &self,
        apart: Range<usize>,
        b: &[f32],
        b_at: Operand,
        (c, ldc): (*mut f32, usize),
        n: usize,
        add: bool,
    ) {
        let at = last_rows::LastRows {
            panel: self.panels[apart.start * self.cols..].as_ptr(),
            stride: self.isa.last_panel_rows(self.rows),
            depth: self.cols,
            b: b[b_at.offset..].as_ptr(),
            b_step: b_at.step,
            n,
            c,
            ldc,
            add,
        };
        // SAFETY: the caller's promise; the last panel holds `cols` packed columns of
        // `stride` values; AVX-512F was detected with the panels' `isa`.
        unsafe { last_rows::last_rows_times_rows(&at, apart.len()) };
    }

    /// `C_k += (P · B)[block k's rows]` for blocks of P's rows one after another from
    /// row 0, each with a C of its own, B where `b_at` says (`n` columns): the weight
    /// gradients of gates that split panels (35 rows in panels of 32), a panel across
    /// two blocks storing its rows into both. Through a product of the whole stack and
    /// an add loop per block, the tiny LSTM spent 2.9% of its time around these
    /// products. Returns false, and does nothing, where this does not apply: without
    /// AVX-512, or where a block has fewer rows than a panel (a panel would then cross
    /// into a third).
    ///
    /// # Panics
    /// When the blocks' rows do not add up to P's, or a block's columns or B's reach
    /// past their slices (a bug of the caller's).
    pub(crate) fn multiply_add_into_blocks(
        &self,
        b: &[f32],
        b_at: Operand,
        n: usize,
        blocks: &mut [RowBlock<'_>],
    ) -> bool {
        let mr = self.isa.panel_rows();
        if self.isa != Isa::Avx512 || blocks.iter().any(|block| block.rows < mr) {
            return false;
        }
        let stacked: usize = blocks.iter().map(|block| block.rows).sum();
        assert_eq!(
            stacked, self.rows,
            "blocks of {stacked} rows for {} rows",
            self.rows
        );
        for block in blocks.iter() {
            self.check_bounds(b, b_at, block.c, (block.at, block.ld), n, block.rows);
        }
        if n == 0 || self.cols == 0 {
            return true;
        }
        // (start row, first value, column stride) of each block: the pointers are taken
        // once, so that two blocks' C can be written by one kernel call.
        let mut start = 0;
        let places: Vec<(usize, *mut f32, usize)> = blocks
            .iter_mut()
            .map(|block| {
                let place = (start, block.c[block.at..].as_mut_ptr(), block.ld);
                start += block.rows;
                place
            })
            .collect();
        // The last panel lies in the last block, which has more rows than a panel.
        let apart = self.rows_apart(b_at);
        if let Some(apart) = apart.clone() {
            let (block_start, c, ldc) = places[places.len() - 1];
            // SAFETY: `check_bounds` found B's rows and the last block's C within their
            // slices; the rows are that block's from `apart.start - block_start`.
            unsafe {
                let c = c.add(apart.start - block_start);
                self.multiply_rows_apart(apart, b, b_at, (c, ldc), n, true);
            }
        }
        let panels = apart.map_or(self.rows, |apart| apart.start).div_ceil(mr);
        for first in (0..self.cols).step_by(INNER_BLOCK) {
            let depth = INNER_BLOCK.min(self.cols - first);
            let mut k = 0;
            for p in 0..panels {
                let (top, bottom) = (p * mr, ((p + 1) * mr).min(self.rows));
                while places[k].0 + blocks[k].rows <= top {
                    k += 1;
                }
                let (block_start, c, ldc) = places[k];
                let within = top - block_start;
                let split_at = (blocks[k].rows - within).min(bottom - top);
                // Where the panel crosses into the next block, its rows from `split_at`
                // go to that block's first rows.
                let (c2, ldc2) = if split_at < bottom - top {
                    (places[k + 1].1, places[k + 1].2)
                } else {
                    (std::ptr::null_mut(), 0)
                };
                let first_columns = Block {
                    c: c.wrapping_add(within),
                    ldc,
                    height: bottom - top,
                    accumulate: true,
                    split_at,
                    c2,
                    ldc2,
                    ..self.panel_times(p, (first, depth), b, b_at.at_row(first))
                };
                // SAFETY: the kernels read `depth` packed columns of this panel from
                // `first` and `depth` values of B's `n` columns from `first` (by
                // `check_bounds`); they read and write rows `within..within +
                // split_at` of block k's C, and the panel's other rows (fewer than a
                // panel, so within the next block, of at least a panel's rows) as that
                // block's first rows, of `n` columns: all inside their slices by
                // `check_bounds`.
                unsafe { self.run_across(first_columns, n) };
            }
        }
        true
    }

    /// The kernel call for panel `p`'s packed columns `first..first + depth` times B
    /// (where `b_at` says, its row 0 meeting packed column `first`), with no C yet:
    /// its callers say where the product goes (`blocks`, `multiply_add_into_blocks`).
    fn panel_times(
        &self,
        p: usize,
        (first, depth): (usize, usize),
        b: &[f32],
        b_at: Operand,
    ) -> Block {
        let stride = panel_stride(self.isa, self.rows, p);
        Block {
            k: depth,
            a: self.panel(p)[first * stride..].as_ptr(),
            stride,
            b: b[b_at.offset..].as_ptr(),
            ldb: b_at.ld,
            b_step: b_at.step,
            c: std::ptr::null_mut(),
            ldc: 0,
            height: 0,
            streamed: false,
            prefetch_b: false,
            accumulate: false,
            bias: std::ptr::null(),
            split_at: 0,
            c2: std::ptr::null_mut(),
            ldc2: 0,
            next: std::ptr::null(),
        }
    }

    /// Panel `p`'s packed values.
    fn panel(&self, p: usize) -> &[f32] {
        let mr = self.isa.panel_rows();
        &self.panels[p * mr * self.cols..][..panel_stride(self.isa, self.rows, p) * self.cols]
    }

    /// Each panel's first row, rows, stride and values, in order.
    fn panels_with_rows(&self) -> impl Iterator<Item = (usize, usize, usize, &[f32])> {
        let mr = self.isa.panel_rows();
        (0..self.rows.div_ceil(mr)).map(move |p| {
            let (top, stride) = (p * mr, panel_stride(self.isa, self.rows, p));
            (top, stride.min(self.rows - top), stride, self.panel(p))
        })
    }

    /// `first_columns` (a panel times B's columns from `first_columns.b`, into C from
    /// `first_columns.c`), and the same for every block of B's columns up to `n`.
    ///
    /// # Safety
    /// As `Block::run`, for each block of `n` columns of B and of C (and of the second
    /// C), with `isa`'s instructions present.
    unsafe fn run_across(&self, first_columns: Block, n: usize) {
        for (j, width) in self.column_blocks(n) {
            // SAFETY: forwarded from the caller.
            unsafe { self.run_at(&first_columns, j, width) };
        }
    }

    /// The blocks of `n` columns of B that one kernel call each takes, as (first
    /// column, width): `block_cols` wide, the last narrower.
    fn column_blocks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> {
        let nr = block_cols(self.isa);
        (0..n).step_by(nr).map(move |j| (j, nr.min(n - j)))
    }

    /// `first_columns` moved on to B's and C's column `j`, for `width` columns.
    ///
    /// # Safety
    /// As `Block::run`, for columns `j..j + width` of B and of C (and of the second C),
    /// with `isa`'s instructions present.
    unsafe fn run_at(&self, first_columns: &Block, j: usize, width: usize) {
        let block = Block {
            b: first_columns.b.wrapping_add(j * first_columns.ldb),
            c: first_columns.c.wrapping_add(j * first_columns.ldc),
            c2: first_columns.c2.wrapping_add(j * first_columns.ldc2),
            ..*first_columns
        };
        // SAFETY: forwarded from the caller.
        unsafe { block.run(self.isa, width) };
    }

    /// The rows of a panel: a product may start at any multiple of it.
    pub(crate) fn panel_height(&self) -> usize {
        self.isa.panel_rows()
    }

    /// The bounds that `multiply` and `multiply_rows` rely on, for C's columns of
    /// `c_rows` values.
    fn check_bounds(
        &self,
        b: &[f32],
        b_at: Operand,
        c: &[f32],
        (c_offset, ldc): (usize, usize),
        n: usize,
        c_rows: usize,
    ) {
        // One past B's last element read (none without an inner dimension).
        let b_end = match self.cols {
            0 => 0,
            k => b_at.offset + n.saturating_sub(1) * b_at.ld + (k - 1) * b_at.step + 1,
        };
        assert!(
            n == 0 || (b_end <= b.len() && c_offset + (n - 1) * ldc + c_rows <= c.len()),
            "packed product: operands out of bounds"
        );
    }

    /// Every panel of `rows` (which starts on a panel, within P) times every block of
    /// B's columns, over the packed columns `first..first + depth` (nonempty, within
    /// `self.cols`; B's row 0 where `b_at` says meets packed column `first`), into C's
    /// rows from `rows.start` on.
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        b: &[f32],
        b_at: Operand,
        c: &mut [f32],
        (c_offset, ldc): (usize, usize),
        n: usize,
        rows: Range<usize>,
        (first, depth): (usize, usize),
        streamed: bool,
        start: Start<'_>,
    ) {
        let mr = self.isa.panel_rows();
        let mut panel_block = |p: usize| {
            let height = mr.min(rows.end - p * mr);
            Block {
                c: c[c_offset + p * mr - rows.start..].as_mut_ptr(),
                ldc,
                height,
                streamed,
                accumulate: !matches!(start, Start::Zero),
                bias: match start {
                    Start::Bias(bias) => bias[p * mr - rows.start..][..height].as_ptr(),
                    Start::Zero | Start::C => std::ptr::null(),
                },
                split_at: height,
                ..self.panel_times(p, (first, depth), b, b_at)
            }
        };
        // The panels in groups that stay in L2 while every block of B's columns meets
        // them, each block of B staying in L1 across a group's panels: B is read once
        // per group, not once per panel. (The input projection over every step of the
        // large LSTM, 4096 × 512 by 512 × 3200, read B's 6.5 MB from L3 for each of 128
        // panels and ran at 104-115 GF/s on one core, against 172 for operands in L2.)
        let panels = rows.start / mr..rows.end.div_ceil(mr);
        let per_group = (GROUP_BYTES / (mr * depth * size_of::<f32>())).max(1);
        let b_stays = depth * block_cols(self.isa) * size_of::<f32>() <= B_STAYS_BYTES;
        for group in panels.clone().step_by(per_group) {
            let group = group..(group + per_group).min(panels.end);
            for (jb, (j, width)) in self.column_blocks(n).enumerate() {
                for p in group.clone() {
                    let next = if streamed {
                        let ahead = (per_group, panels.end);
                        self.next_group_lines(p, ahead, jb, width, (first, depth))
                    } else {
                        std::ptr::null()
                    };
                    let block = Block {
                        prefetch_b: p == group.start || !b_stays,
                        next,
                        ..panel_block(p)
                    };
                    // SAFETY: the kernels read `depth` packed columns of this panel
                    // from `first`, `depth` values of B's columns `j..j + width` from
                    // `first`, and write (with `accumulate`, read and write) `height`
                    // values of those columns of C (or read them of the bias, sliced
                    // in `panel_block`): all in bounds by `check_bounds`, since `first
                    // + depth <= self.cols`, `j + width <= n` and the panels' rows lie
                    // in `rows`; `detect` found the instructions.
                    unsafe { self.run_at(&block, j, width) };
                }
            }
        }
    }

    /// Where the kernel call for B's block of columns `jb` (`width` wide) and panel
    /// `p` prefetches into L2: a line per packed column of panel `p + ahead` (the
    /// next group's, `end` the first panel past the product's), the blocks after the
    /// first taking its lines in turn over the packed columns `first..first + depth`.
    /// Null where there is nothing to prefetch: for the first block, past the last
    /// panel or past the panel's lines, and for a block narrower than
    /// `NEXT_GROUP_WIDTH`.
    ///
    /// Why: a group's first block reads the group from L3, and took as long with 8
    /// columns of B as with 12 (the large LSTM's 4096 × 1024 weight times 8 to 12
    /// columns: 0.60-0.63 ms on one core, 0.41 at the multiply-add peak), the later
    /// blocks reading it from L2 about as fast as the multiply-adds go (0.44-0.45 ms
    /// each). Prefetched by the later blocks, the next group is in L2 when its first
    /// block comes (`benches/README.md`, session 18).
    fn next_group_lines(
        &self,
        p: usize,
        (ahead, end): (usize, usize),
        jb: usize,
        width: usize,
        (first, depth): (usize, usize),
    ) -> *const f32 {
        let next = p + ahead;
        if jb == 0 || width < NEXT_GROUP_WIDTH || next >= end {
            return std::ptr::null();
        }
        let stride = panel_stride(self.isa, self.rows, next);
        let panel = &self.panel(next)[first * stride..][..depth * stride];
        let from = (jb - 1) * depth * LINE;
        if from < panel.len() {
            panel[from..].as_ptr()
        } else {
            std::ptr::null()
        }
    }
}

/// The narrowest block of B's columns that prefetches the next group of panels (see
/// `PackedMatrix::next_group_lines`): the medium LSTM's step (2048 × 512 by 16 columns
/// a shard, as 12 + 4) ran 3-5% slower with its block of 4 prefetching, a line per 8
/// multiply-adds, and as fast as before without.
const NEXT_GROUP_WIDTH: usize = 8;

/// The packed values of a group of panels in `PackedMatrix::blocks`: half of the 1 MiB
/// L2 cache of the AMD machine this project ran on (2 MiB on the Intel one). 256 KiB
/// measured the same, 1 MiB slower for the products over all steps.
const GROUP_BYTES: usize = 512 << 10;

/// A block of B's columns (its depth times `block_cols` values) up to this size stays
/// in L1 from one panel of a group to the next, and the kernel prefetches it for the
/// group's first panel only; a larger one (the large LSTM's step, 1024 deep: 48 KiB)
/// comes from L2 for every panel, and is prefetched for each. Prefetching B for every
/// panel made the per-step products 8-17% faster on one core (the large LSTM's 4096 ×
/// 1024 weight times a part's 32 columns: 137 against 155 GF/s), and the products
/// over all steps, whose blocks stay in L1, 4-7% slower.
const B_STAYS_BYTES: usize = 32 << 10;

/// What a product's accumulators start from: zero, C (the product is added to it), or
/// one column of biases for every column.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    Zero,
    C,
    Bias(&'a [f32]),
}

/// Where a product's right operand B lies in its slice: element (p, j) at
/// `offset + p * step + j * ld`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    offset: usize,
    step: usize,
    ld: usize,
}

impl Operand {
    /// B column-major: column j from `offset + j * ld`.
    pub(crate) fn columns(offset: usize, ld: usize) -> Operand {
        Operand {
            offset,
            step: 1,
            ld,
        }
    }

    /// The same operand from its row `row` on.
    fn at_row(self, row: usize) -> Operand {
        Operand {
            offset: self.offset + row * self.step,
            ..self
        }
    }

    /// B as the transpose of the column-major matrix whose columns start `ld` apart,
    /// from `offset`: B's column j is that matrix's row j. The weight gradients read
    /// `vᵀ` so, straight from the tape's columns of v.
    pub(crate) fn rows(offset: usize, ld: usize) -> Operand {
        Operand {
            offset,
            step: ld,
            ld: 1,
        }
    }
}

/// The inner dimension's block in `multiply_rows`: 128 packed columns of a 32-row panel
/// are 16 KiB, half of a core's L1 cache, so the block stays there while it meets every
/// column of B (whose blocks stream from L2).
const INNER_BLOCK: usize = 128;

/// `multiply_rows` copies each block of a B read by rows (vᵀ: B's row p is column p of
/// v, whose values lie `v`'s height apart) into rows side by side, a line longer than
/// B's columns, for a product of at least this many rows. In place, a block's rows 4
/// KiB apart (the large LSTM's h, 1024 values high) fall in one set of L1, which holds
/// 12 of the 128 the kernels read again for every panel: the large LSTM's recurrent
/// weight gradient ran at 90-95 GF/s on one core, and at 104-105 with the copy (the
/// large LSTM's forward + backward: 980 against 938 ms). The copy is a pass over B per block,
/// which a product of fewer rows does not repay (the tiny MGU: 2.7%, see `tape`).
const STAGED_ROWS: usize = 256;

impl PackedMatrix {
    /// `c = P · b` for one column (a batch of one, the notebooks' case); with `add`,
    /// `c += P · b`.
    /// Per panel, one column gives the kernel two chains of dependent multiply-adds,
    /// each waiting on the last: the product ran at the multiply-add's latency, not its
    /// throughput. Here up to six panels (four with AVX2, whose 16 registers hold no
    /// more) run side by side, with even and odd `k` in accumulators of their own: up to
    /// 24 independent chains. The notebooks' LSTM (140 rows, five panels) thus reads its
    /// weight in one pass, not in groups of four and one.
    ///
    /// The kernels were chosen when the matrix was packed, and the tape calls this
    /// inlined, not through `multiply`: the tiny MGU runs 280 of these products a
    /// pass, and with the dispatch over the instruction set and the group's panels at
    /// every call, inside a function shared with the many-column products, it took
    /// 44.1-45.5 µs against 42.6-43.3 (forward and backward, best of 200 batches of
    /// 100).
    ///
    /// # Panics
    /// When `b` holds fewer values than P has columns, or `c` than it has rows (a bug
    /// of the caller's).
    ///
    /// A matrix of one group (up to 192 rows) calls its kernel straight from here,
    /// inlined into the step: through `one_column_groups`' loop, a call of its own,
    /// the tiny MGU spent 2.9% of its time there.
    #[inline(always)]
    pub(crate) fn multiply_one_column(&self, b: &[f32], c: &mut [f32], add: bool) {
        assert!(
            b.len() >= self.cols && c.len() >= self.rows,
            "packed product: operands out of bounds"
        );
        if self.one_group {
            let (a, k, rows) = (self.panels.as_ptr(), self.cols, self.rows);
            // SAFETY: asserted above; the group is every panel, run by the kernel of
            // the group that ends with the last panel.
            unsafe { self.one_column[1](a, k, b.as_ptr(), c.as_mut_ptr(), rows, add) };
            return;
        }
        let panels = self.rows.div_ceil(self.isa.panel_rows());
        // SAFETY: asserted above; the range starts at the first group.
        unsafe { self.one_column_groups(b, c, add, 0..panels) };
    }

    /// `multiply_one_column`'s product in two halves for two threads, as ranges of
    /// panels split at a boundary of its groups of panels (so that each half runs the
    /// kernels, and gives the results, of the whole product). `None` with fewer than
    /// two groups.
    pub(crate) fn one_column_halves(&self) -> Option<[Range<usize>; 2]> {
        let (group, panels) = (
            self.isa.one_column_group(),
            self.rows.div_ceil(self.isa.panel_rows()),
        );
        let groups = panels.div_ceil(group);
        let half = groups / 2 * group;
        (groups >= 2).then_some([0..half, half..panels])
    }

    /// `multiply_one_column`'s rows of panels `panels` (from a group's first panel to
    /// another's, or to the last panel: see `one_column_halves`), c holding those rows
    /// from its start.
    ///
    /// # Panics
    /// As `multiply_one_column`.
    #[inline]
    pub(crate) fn one_column_panels(
        &self,
        b: &[f32],
        c: &mut [f32],
        add: bool,
        panels: Range<usize>,
    ) {
        let mr = self.isa.panel_rows();
        let (group, all) = (self.isa.one_column_group(), self.rows.div_ceil(mr));
        let rows = (panels.end * mr).min(self.rows) - (panels.start * mr).min(self.rows);
        assert!(
            b.len() >= self.cols
                && c.len() >= rows
                && panels.end <= all
                && panels.start.is_multiple_of(group)
                && (panels.end == all || panels.end.is_multiple_of(group)),
            "packed product: operands out of bounds"
        );
        // SAFETY: asserted above.
        unsafe { self.one_column_groups(b, c, add, panels) };
    }

    /// The one-column kernels over the groups of panels `panels`, c holding their rows
    /// from its start. (Checked by its callers: at every step of the tiny MGU, 280
    /// products a pass, a check with a division cost it 2%.)
    ///
    /// # Safety
    /// b holds as many values as P has columns, c the range's rows; the range starts at
    /// a group's first panel and ends at another's, or at P's last panel (the kernels
    /// run whole groups).
    #[inline(always)]
    unsafe fn one_column_groups(&self, b: &[f32], c: &mut [f32], add: bool, panels: Range<usize>) {
        let (mr, k) = (self.isa.panel_rows(), self.cols);
        let (group, all) = (self.isa.one_column_group(), self.rows.div_ceil(mr));
        // (With no inner dimension, the kernels read nothing and store zeros, or add
        // them.)
        let mut first = panels.start;
        while first < panels.end {
            let count = group.min(all - first);
            let last = first + count == all;
            let a = self.panels[first * mr * k..].as_ptr();
            let c = c[(first - panels.start) * mr..].as_mut_ptr();
            let height = (self.rows - first * mr).min(count * mr);
            // SAFETY: b holds `k` values and c the range's rows (the caller's promise);
            // the group reads `count` whole panels, as many as its kernel was chosen for,
            // the last storing the rows it was chosen for; `pack_into` found the
            // instructions of `self.isa`.
            unsafe { self.one_column[usize::from(last)](a, k, b.as_ptr(), c, height, add) };
            first += count;
        }
    }
}

/// The one-column kernel for `count` panels side by side whose last stores `last`
/// rows per column (`Isa::last_panel_rows`), prefetching them or not.
fn one_column_kernel(isa: Isa, count: usize, last: usize, streamed: bool) -> OneColumnKernel {
    #[cfg(target_arch = "x86_64")]
    return match (isa, streamed) {
        (Isa::Avx512, true) => x86::avx512_one_column::<true>(count, last),
        (Isa::Avx512, false) => x86::avx512_one_column::<false>(count, last),
        (Isa::Avx2, _) => x86::avx2_one_column(count),
    };
    // No other processor packs (`Isa::detect`), so this is never called.
    #[cfg(not(target_arch = "x86_64"))]
    {
        unsafe fn none(_: *const f32, _: usize, _: *const f32, _: *mut f32, _: usize, _: bool) {}
        let _ = (isa, count, last, streamed);
        none
    }
}

/// `acc[i] += column[i]` for every packed column of `N` values of a panel: a panel's
/// rows summed over its columns, in their order, in registers. (Added in the copy
/// loop, a sum over each column's run of variable length cost the tiny MGU 1.5%.)
#[inline(always)]
fn add_columns<const N: usize>(panel: &[f32], acc: &mut [f32; 32]) {
    for column in panel.chunks_exact(N) {
        for i in 0..N {
            acc[i] += column[i];
        }
    }
}

/// `column[..run.len()] = run` and the rest of the column zeroed: a packed column of a
/// last panel, with its padding. With AVX-512, a masked load and a whole store per
/// half: as a copy and a fill, each packed column of the notebooks' LSTM (12 rows in
/// its last panel) and MGU (3) cost a `memcpy` call and a `memset` call, and packing
/// took 7% of the tiny MGU's time (`perf`).
fn copy_padded(isa: Isa, column: &mut [f32], run: &[f32]) {
    assert!(
        run.len() <= column.len(),
        "a run longer than its packed column"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && matches!(column.len(), 8 | 16 | 32) {
        // SAFETY: the column holds its 8, 16 or 32 values, and the run at most as
        // many; the masked loads read the run's values and no others; `isa` was
        // detected.
        unsafe { x86::copy_padded(run.as_ptr(), run.len(), column.as_mut_ptr(), column.len()) };
        return;
    }
    let _ = isa;
    column[..run.len()].copy_from_slice(run);
    column[run.len()..].fill(0.0);
}

/// Rows `first..first + height` of the matrix whose element (i, k) is
/// `values[i * row_stride + k * col_stride]`, into `panel` (`mr` values per packed
/// column). When the source's rows are its runs (`col_stride` 1, a weight read as its
/// transpose) that is a transpose of runs (`transpose_runs`, in 8 × 8 AVX blocks):
/// element by element, with a bounds check each, the two transposed 35 × 35 weights of
/// the tiny MGU took 7% of its time.
///
/// # Panics
/// When an element lies outside `values` (a bug of the caller's).
fn transpose_into_panel(
    values: &[f32],
    (row_stride, col_stride): (usize, usize),
    first: usize,
    height: usize,
    panel: &mut [f32],
    mr: usize,
) {
    let cols = panel.len() / mr;
    if col_stride == 1 {
        // Run r (source row first + r) holds the panel's row r of every packed column.
        return transpose_runs(
            values,
            (row_stride, first * row_stride),
            (cols, height),
            panel,
            mr,
        );
    }
    // Each source row read in order, scattered into the panel (which sits in L1).
    for r in 0..height {
        let row = (first + r) * row_stride;
        for k in 0..cols {
            panel[k * mr + r] = values[row + k * col_stride];
        }
    }
}

/// `out[j * out_ld + k] = values[k * ld + row + j]` for `j < rows`, `k < columns`: rows
/// `row..row + rows` of a column-major buffer, each as a contiguous run, in rows
/// `out_ld` apart (a packed panel's, for `pack_for_into`). Blocks of 8 × 8 are
/// transposed in AVX registers; element by element, the transposes took 6% of the
/// medium MGU's time.
///
/// # Panics
/// When a value lies outside `values` or `out` (a bug of the caller's).
fn transpose_runs(
    values: &[f32],
    (ld, row): (usize, usize),
    (rows, columns): (usize, usize),
    out: &mut [f32],
    out_ld: usize,
) {
    if rows == 0 || columns == 0 {
        return;
    }
    assert!(
        columns <= out_ld
            && (columns - 1) * ld + row + rows <= values.len()
            && (rows - 1) * out_ld + columns <= out.len(),
        "transpose: operands out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        for k0 in (0..columns).step_by(8) {
            for j0 in (0..rows).step_by(8) {
                let (src, dst) = (
                    values[k0 * ld + row + j0..].as_ptr(),
                    out[j0 * out_ld + k0..].as_mut_ptr(),
                );
                let part = ((rows - j0).min(8), (columns - k0).min(8));
                // SAFETY: the block reads values[(k0 + i) * ld + row + j0..][..part.0]
                // for i < part.1 and writes out[(j0 + i) * out_ld + k0..][..part.1]
                // for i < part.0, in bounds by the assertion above; AVX is present.
                unsafe {
                    if part == (8, 8) {
                        x86::transpose8(src, ld, dst, out_ld);
                    } else {
                        x86::transpose8_part(src, ld, dst, out_ld, part);
                    }
                }
            }
        }
        return;
    }
    for k in 0..columns {
        let column = &values[k * ld + row..];
        for j in 0..rows {
            out[j * out_ld + k] = column[j];
        }
    }
}

/// A column-major matrix copied with each column starting on a 64-byte boundary, for
/// the product of its transpose with one column, as one dot product per column.
///
/// The backward step of a batch of one multiplies the recurrent weight's transpose by a
/// single column. Where the packed transpose outgrows the L1 cache, it streams from L2
/// at every step, and the dot products read less of it (see
/// `transposed_column_prefers_dots`). Read in place, a weight's columns start off
/// cache lines, and half the loads straddle two: for the notebooks' LSTM (140 × 35),
/// 0.25 µs a step in place against 0.17 aligned (`perf`).
pub(crate) struct AlignedColumns {
    rows: usize,
    cols: usize,
    /// The distance between columns: `rows` rounded up to whole cache lines.
    ld: usize,
    storage: LineAligned,
}

/// Whether `Mᵀ x` for a `rows` × `cols` M and one column runs faster as dot products
/// (`AlignedColumns`) than through M's packed transpose: where the packed transpose
/// outgrows the L1 cache. In L1, the packed product's multiply-adds need no
/// reductions; out of it, the transpose's padding is streamed from L2 at every step,
/// and the dot products read no padding. Timed alone (µs a product, dots against
/// packed): 140 × 35 (the notebooks' LSTM), 0.142 against 0.136; 35 × 35, 0.083
/// against 0.041; 160 × 40, 0.177 against 0.153, all in L1; out of it, 200 × 50, 0.381
/// against 0.462; 400 × 100, 1.417 against 1.510; 2048 × 512, 54.6 against 56.3.
pub(crate) fn transposed_column_prefers_dots(rows: usize, cols: usize) -> bool {
    panels_len(Isa::Avx512, cols, rows) * size_of::<f32>() > STREAMED_BYTES
}

/// Values per 64-byte cache line.
const LINE: usize = 64 / size_of::<f32>();

impl AlignedColumns {
    /// The number of values a copy of this shape needs.
    pub(crate) fn stored_len(rows: usize, cols: usize) -> usize {
        LineAligned::storage_len(rows.next_multiple_of(LINE) * cols)
    }

    /// Copies the `rows` × `cols` column-major matrix `values` (columns `ld` apart)
    /// into `storage` (a finished copy's, from `into_storage`, or empty). `None`
    /// without AVX-512, the one kernel that reads such a copy.
    ///
    /// # Panics
    /// When a column reaches past `values` (a bug of the caller's).
    pub(crate) fn copy_into(
        storage: Vec<f32>,
        values: &[f32],
        ld: usize,
        (rows, cols): (usize, usize),
    ) -> Option<AlignedColumns> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let padded = rows.next_multiple_of(LINE);
            let mut storage = LineAligned::new(storage, padded * cols);
            for k in 0..cols {
                copy_run(
                    &mut storage[k * padded..][..rows],
                    &values[k * ld..][..rows],
                );
            }
            return Some(AlignedColumns {
                rows,
                cols,
                ld: padded,
                storage,
            });
        }
        let _ = (storage, values, ld, rows, cols);
        None
    }

    /// `copy_into` for the matrix packed in `packed`, from its panels' runs.
    pub(crate) fn copy_packed_into(
        storage: Vec<f32>,
        packed: &PackedMatrix,
    ) -> Option<AlignedColumns> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let (rows, cols) = (packed.rows, packed.cols);
            let padded = rows.next_multiple_of(LINE);
            let mut storage = LineAligned::new(storage, padded * cols);
            for (top, height, stride, panel) in packed.panels_with_rows() {
                for (k, column) in panel.chunks_exact(stride).enumerate() {
                    copy_run(
                        &mut storage[k * padded + top..][..height],
                        &column[..height],
                    );
                }
            }
            return Some(AlignedColumns {
                rows,
                cols,
                ld: padded,
                storage,
            });
        }
        let _ = (storage, packed);
        None
    }

    /// The copy's memory, for another to reuse.
    pub(crate) fn into_storage(self) -> Vec<f32> {
        self.storage.into_storage()
    }

    /// `out[k] = Σᵢ M[i, k] · x[i]`: Mᵀ times the column `x` (with `add`, added to
    /// `out[k]`).
    ///
    /// # Panics
    /// When `x` has fewer values than M has rows, or `out` than it has columns (a bug
    /// of the caller's).
    pub(crate) fn transposed_times(&self, x: &[f32], out: &mut [f32], add: bool) {
        self.transposed_times_columns(x, out, add, 0..self.cols);
    }

    /// `transposed_times` for M's columns `columns` only, `out` holding their values
    /// from its start: half of the product, for two threads.
    ///
    /// # Panics
    /// As `transposed_times`, and when `columns` ends past M's.
    pub(crate) fn transposed_times_columns(
        &self,
        x: &[f32],
        out: &mut [f32],
        add: bool,
        columns: Range<usize>,
    ) {
        assert!(
            self.rows <= x.len() && columns.end <= self.cols && columns.len() <= out.len(),
            "transposed product: operands out of bounds"
        );
        if columns.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernel reads `rows` values of each of the range's columns (inside
        // `storage`, by `copy_into`) and of `x`, and writes one value per column to
        // `out`;
        // `copy_into` found AVX-512.
        unsafe {
            x86::avx512_dot_columns(
                self.storage[columns.start * self.ld..].as_ptr(),
                self.ld,
                (self.rows, columns.len()),
                x.as_ptr(),
                out.as_mut_ptr(),
                add,
            )
        };
    }
}

/// Where `multiply_add_into_blocks` adds a block of a stacked product's rows: `rows`
/// rows, column j from `c[at + j * ld]`.
pub(crate) struct RowBlock<'a> {
    pub c: &'a mut [f32],
    pub at: usize,
    pub ld: usize,
    pub rows: usize,
}

/// One kernel call: a panel of `height` valid rows times `width` columns of B.
#[derive(Clone, Copy)]
struct Block {
    k: usize,
    a: *const f32,
    /// The values per packed column of the (last) panel read: `Isa::last_panel_rows`
    /// for a matrix's last panel, the panel height for the others.
    stride: usize,
    b: *const f32,
    ldb: usize,
    /// The distance in B between the values of consecutive packed columns.
    b_step: usize,
    c: *mut f32,
    ldc: usize,
    height: usize,
    /// Whether to prefetch the panel ahead of its use (see `STREAMED_BYTES`).
    streamed: bool,
    /// With `streamed`, whether to prefetch B's columns too.
    prefetch_b: bool,
    /// Whether to add the product to C rather than overwrite C.
    accumulate: bool,
    /// With `accumulate`, where the accumulators start, if not from C: one column of
    /// the panel's rows, the same for every column (a product's biases).
    bias: *const f32,
    /// The panel's rows stored from `c` (`height`, or more, when all of them); the
    /// rest go to a second C from `c2`, its columns `ldc2` apart (a panel across the
    /// boundary of two blocks of rows, see `multiply_add_into_blocks`).
    split_at: usize,
    c2: *mut f32,
    ldc2: usize,
    /// With `streamed`, where the AVX-512 kernel prefetches a line per packed column
    /// into L2 (null: nowhere; see `PackedMatrix::next_group_lines`).
    next: *const f32,
}

/// Weights larger than this (the size of a core's L1 cache) stream from L2 or L3 at
/// every step, and the kernel prefetches them: for a 512×128 weight (in L2) the product
/// ran at 110 GF/s with prefetching and 63 without. Smaller weights stay in L1, where a
/// prefetch only takes a load slot from the product.
const STREAMED_BYTES: usize = 32 << 10;

impl Block {
    /// Dispatches on the instruction set and the block's width (a constant inside each
    /// kernel, so that its accumulators live in registers).
    ///
    /// # Safety
    /// The pointers address what `PackedMatrix::multiply` checked, and the processor
    /// has `isa`'s instructions.
    unsafe fn run(&self, isa: Isa, width: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        unsafe {
            match (isa, self.streamed, self.accumulate) {
                (Isa::Avx512, true, false) => x86::avx512_of_width::<true, false>(self, width),
                (Isa::Avx512, false, false) => x86::avx512_of_width::<false, false>(self, width),
                (Isa::Avx512, true, true) => x86::avx512_of_width::<true, true>(self, width),
                (Isa::Avx512, false, true) => x86::avx512_of_width::<false, true>(self, width),
                (Isa::Avx2, _, false) => x86::avx2_of_width::<false>(self, width),
                (Isa::Avx2, _, true) => x86::avx2_of_width::<true>(self, width),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (isa, width);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
}

#[cfg(test)]
mod tests {
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
                        let (got, want) =
                            (c[1 + i + j * ldc] as f64, bias[i] as f64 + want[i + j * m]);
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
                    for ((b, b_at), add) in
                        layouts.into_iter().flat_map(|l| [(l, true), (l, false)])
                    {
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
                                let context =
                                    || format!("{isa:?} ({m},{k},{n}) {rows:?} at ({i},{j})");
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
}
