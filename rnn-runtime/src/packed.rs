//! The per-step product of a recurrent weight, with the weight packed once per sequence.
//!
//! A recurrent step multiplies the same weight by a new state, T times over. A general
//! GEMM (matrixmultiply) copies its left operand into cache-sized panels at every call:
//! for the medium LSTM that is 4 MB per step, as much memory traffic as the product's
//! own reads. Here the weight is copied once, into panels of `MR` rows stored k-major
//! (each panel one sequential stream), and every step's product runs a register-blocked
//! AVX-512 or AVX2 kernel over them. Where neither instruction set is present, or for
//! f64, the tape keeps the general GEMM: this module only speeds up f32. On a
//! processor with AMX, a large weight's products in a large batch run on its tiles
//! instead (`amx`), from a copy split out of the panels, and so do its gradient's
//! (`amx::gradients`, from dz and v split as the product goes).

use std::any::TypeId;

use crate::copies::copy_run;
use std::ops::Range;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod inner_loop;
#[cfg(target_arch = "x86_64")]
mod last_rows;
mod stacking;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) use amx::{
    available as tiles_available, TileWeight, TransposedParts, MIN_BATCH as TILE_MIN_BATCH,
    MIN_VALUES as TILE_MIN_VALUES,
};

/// The rows of a column-major matrix, as the weight gradients' product on the tiles
/// reads dz and v (`TransposedParts`): `rows` values from `offset`, then each next
/// column `ld` on.
#[derive(Clone, Copy)]
pub(crate) struct GradientRows<'a> {
    pub(crate) values: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) ld: usize,
    pub(crate) rows: usize,
}

/// Whether this process runs AMX tiles: never, off x86-64 Linux.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) fn tiles_available() -> bool {
    false
}

/// Where AMX cannot run, no weight is split for it (`from_packed` gives `None`), so
/// there are no products to call.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) enum TileWeight {}

/// As `TileWeight`: no split of v for the tiles, so no gradient products to call.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) enum TransposedParts {}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl TransposedParts {
    pub(crate) fn stored_len(_rows: usize, _depth: usize) -> usize {
        0
    }

    pub(crate) fn split(
        _storage: Vec<f32>,
        _v: GradientRows<'_>,
        _depth: usize,
    ) -> Option<TransposedParts> {
        None
    }

    pub(crate) fn into_storage(self) -> Vec<f32> {
        match self {}
    }

    pub(crate) fn add_product(&self, _a: GradientRows<'_>, _c: &mut [f32], _c_at: (usize, usize)) {
        match *self {}
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) const TILE_MIN_BATCH: usize = usize::MAX;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) const TILE_MIN_VALUES: usize = usize::MAX;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl TileWeight {
    pub(crate) fn stored_len(_rows: usize, _cols: usize) -> usize {
        0
    }

    pub(crate) fn from_packed(_storage: Vec<f32>, _matrix: &PackedMatrix) -> Option<TileWeight> {
        None
    }

    pub(crate) fn into_storage(self) -> Vec<f32> {
        match self {}
    }

    pub(crate) fn multiply(
        &self,
        _b: &[f32],
        _b_at: (usize, usize),
        _c: &mut [f32],
        _c_at: (usize, usize),
        _n: usize,
        _start: Start<'_>,
    ) {
        match *self {}
    }
}

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
        check_bias(start, self.rows);
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

    /// Column `k`'s values in the 16 rows from `top` (a multiple of 16): fewer past
    /// the matrix's rows, none past its columns. A tile's column of its rows (see
    /// `amx`).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn tile_column(&self, top: usize, k: usize) -> &[f32] {
        if top >= self.rows || k >= self.cols {
            return &[];
        }
        let p = top / self.isa.panel_rows();
        let stride = panel_stride(self.isa, self.rows, p);
        let within = top - p * self.isa.panel_rows();
        &self.panel(p)[k * stride + within..][..16.min(self.rows - top)]
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
        c_at: (usize, usize),
        n: usize,
        c_rows: usize,
    ) {
        check_product_bounds(self.cols, b, b_at, c, c_at, n, c_rows);
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

/// The bounds that a product with `depth` columns of the left operand relies on: B's
/// `n` columns of `depth` values where `b_at` says, C's `n` columns of `c_rows`
/// values from `c_offset`, `ldc` apart.
///
/// # Panics
/// When either reaches past its slice: the tape computes these extents from its own
/// buffers, so that is a bug, not a user's mistake.
fn check_product_bounds(
    depth: usize,
    b: &[f32],
    b_at: Operand,
    c: &[f32],
    (c_offset, ldc): (usize, usize),
    n: usize,
    c_rows: usize,
) {
    // One past B's last element read (none without an inner dimension).
    let b_end = match depth {
        0 => 0,
        k => b_at.offset + n.saturating_sub(1) * b_at.ld + (k - 1) * b_at.step + 1,
    };
    assert!(
        n == 0 || (b_end <= b.len() && c_offset + (n - 1) * ldc + c_rows <= c.len()),
        "packed product: operands out of bounds"
    );
}

/// The bias a product starts from, if any, covers its `rows`.
///
/// # Panics
/// When it is shorter: as `check_product_bounds`, a bug of the caller's.
fn check_bias(start: Start<'_>, rows: usize) {
    if let Start::Bias(bias) = start {
        assert!(
            bias.len() >= rows,
            "packed product: a bias of {} for {rows} rows",
            bias.len()
        );
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
mod x86;

#[cfg(test)]
mod tests;
