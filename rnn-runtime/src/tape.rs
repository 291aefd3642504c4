//! The tape: every buffer one sequence batch needs, forward and backward, allocated once
//! per forward pass so the time loop allocates nothing. Buffers are column-major
//! matrices; the generated code addresses them by number.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::cell::{BufferCols, BufferSpec};
use crate::copies::copy_run;
use crate::helper;
use crate::packed::{
    self, AlignedColumns, GradientRows, Operand, PackedMatrix, RowBlock, Start, TileWeight,
    TransposedParts,
};
use crate::scalar::{gemm, Strided};
use crate::Scalar;

/// (buffer, first row, first column).
pub type At = (usize, usize, usize);

/// One parameter's share of a stacked weight gradient (see `Tape::weight_grads`): its
/// gradient's columns `col_start..` (of `grad_rows` rows each) gain `rows` rows of it.
pub struct GradBlock<'a, T> {
    /// The parameter's gradient, column-major.
    pub grad: &'a mut [T],
    /// The parameter's rows.
    pub grad_rows: usize,
    /// The first of the parameter's columns that the stack's product covers.
    pub col_start: usize,
    /// The block's rows in the stack.
    pub rows: usize,
}

/// One parameter's share of a stacked weight (see `Tape::load_stack`): its columns
/// `col_start..` (column-major, `rows` rows each) are the stack's rows `row..row +
/// rows`.
pub struct StackBlock<'a, T> {
    /// The block's first row in the stack.
    pub row: usize,
    /// The parameter, column-major.
    pub values: &'a [T],
    /// The parameter's rows.
    pub rows: usize,
    /// The first of the parameter's columns that the stack holds.
    pub col_start: usize,
}

/// A vector parameter's gradient that is a sum of rows of a weight gradient's dz over
/// every column (see `Tape::weight_grads`): the biases' gradients, gathered while dz is
/// packed rather than by a loop over the columns.
pub struct GradSum<'a, T> {
    /// The parameter's gradient, which gains the sums of as many rows of dz.
    pub grad: &'a mut [T],
    /// Its first row among the stack's rows of dz (from `dz.1`).
    pub row: usize,
}

/// The buffers of one forward and backward pass.
pub struct Tape<T: Scalar> {
    bufs: Vec<Vec<T>>,
    rows: Vec<usize>,
    cols: Vec<usize>,
    columns: usize,
    /// Transposed copies of stacked weights, made on first use: the backward step's
    /// product with a transpose then reads contiguous columns.
    transposed: Vec<Option<Vec<T>>>,
    /// Stacked weights packed for the per-step kernel, made once per sequence.
    packed: Arc<WeightPacks>,
    /// Whether the backward pass computes the inputs' gradients.
    input_grads: bool,
    /// Per buffer, whether the products with it (a stacked weight) read it where its
    /// parameters lie, the pass having too few columns to pay for packing it
    /// (`reads_in_place`).
    direct: Vec<bool>,
    /// Per buffer, whether `load_stack` has copied a stacked weight into it: a tape that
    /// runs a sequence chunk by chunk (`infer`) prepares each chunk over the same
    /// weights.
    loaded: Vec<bool>,
    /// The columns that the per-step buffers have room for (`set_columns`).
    room: usize,
    /// Rows of dz packed for weight gradients, by (buffer, first row, rows): the
    /// weights that multiply different vectors in one gate share its dz. Kept for one
    /// backward pass (see `release_gradient_operands`).
    packed_dz: Vec<((usize, usize, usize), PackedMatrix)>,
    /// Whether the processor has AMX tiles and the batch enough sequences for its
    /// large weights' products, and their gradients', to run there (see
    /// `packed::TILE_MIN_BATCH`). Decided
    /// by the batch, not by a product's columns, so that every product with a weight
    /// in a pass goes one way, however `infer` cuts the pass into chunks: the tiles'
    /// sums are not the f32 kernels' to the bit.
    tiles: bool,
}

/// Per buffer, the stacked weight packed as it is and transposed, each made at its
/// first product. The parts of a batch that unroll on threads of their own share one:
/// their weights are the same, so one thread packs and every thread reads that copy,
/// which then sits in the shared cache once instead of once per thread.
pub(crate) struct WeightPacks {
    slots: Vec<WeightCopies>,
}

/// One stacked weight's copies for the kernels.
#[derive(Default)]
struct WeightCopies {
    /// Packed as it is, and packed transposed.
    packed: [OnceLock<PackedMatrix>; 2],
    /// For the transposed product with one column (`None` where no kernel reads it, or
    /// where the packed transpose serves that shape better).
    aligned_columns: OnceLock<Option<AlignedColumns>>,
    /// The packed copies split for AMX tiles, for the passes of large batches (see
    /// `Tape::tiles`; `None` where the tiles do not run).
    tiles: [OnceLock<Option<TileWeight>>; 2],
}

impl WeightPacks {
    /// Empty slots for a cell's buffers.
    pub(crate) fn new(specs: &[BufferSpec]) -> Arc<WeightPacks> {
        let slots = specs.iter().map(|_| WeightCopies::default()).collect();
        Arc::new(WeightPacks { slots })
    }
}

impl Drop for WeightPacks {
    fn drop(&mut self) {
        let mut pool = pack_pool();
        for copies in &mut self.slots {
            for slot in &mut copies.packed {
                if let Some(matrix) = slot.take() {
                    pool.give(matrix.into_storage());
                }
            }
            if let Some(Some(copy)) = copies.aligned_columns.take() {
                pool.give(copy.into_storage());
            }
            for slot in &mut copies.tiles {
                if let Some(Some(tiles)) = slot.take() {
                    pool.give(tiles.into_storage());
                }
            }
        }
    }
}

/// Buffer `src` to read and buffer `dst` to write, as f32 (which `T` must be).
fn f32_operands<T: 'static>(bufs: &mut [Vec<T>], src: usize, dst: usize) -> (&[f32], &mut [f32]) {
    let [b, c] = bufs
        .get_disjoint_mut([src, dst])
        .expect("distinct GEMM operands");
    (
        packed::as_f32(b).expect("f32"),
        packed::as_f32_mut(c).expect("f32"),
    )
}

/// A stack's values (`rows` × `cols`, column-major), or their transpose, packed into
/// its slot for the kernels the first time it is multiplied in a sequence. The
/// transpose of a stack packed already (from its blocks, by `Tape::load_stack`, which
/// leaves `values` unwritten) comes from that packing.
#[cold]
#[inline(never)]
fn pack_stack<'a, T: 'static>(
    slot: &'a WeightCopies,
    values: &[T],
    (rows, cols): (usize, usize),
    transpose: bool,
) -> &'a PackedMatrix {
    slot.packed[usize::from(transpose)].get_or_init(|| {
        // A stack packed from its blocks (`Tape::load_stack`) has no copy in `values`.
        if let (true, Some(packed)) = (transpose, slot.packed[0].get()) {
            let storage = pack_pool().take(PackedMatrix::packed_len(cols, rows), false);
            return packed.transposed_into(storage);
        }
        let values = packed::as_f32(values).expect("`available` checked f32");
        if transpose {
            pack_pooled(values, cols, rows, (rows, 1))
        } else {
            pack_pooled(values, rows, cols, (1, rows))
        }
    })
}

/// A stack's packed copy (`rows` × `cols` as packed) split for AMX tiles, into its
/// slot the first time a pass on the tiles (see `Tape::tiles`) multiplies it in a
/// sequence (`None` where the tiles do not run).
#[cold]
#[inline(never)]
fn split_for_tiles<'a>(
    slot: &'a WeightCopies,
    matrix: &PackedMatrix,
    (rows, cols): (usize, usize),
    transpose: bool,
) -> &'a Option<TileWeight> {
    slot.tiles[usize::from(transpose)].get_or_init(|| {
        let storage = pack_pool().take(TileWeight::stored_len(rows, cols), false);
        TileWeight::from_packed(storage, matrix)
    })
}

/// `Tape::transposed_times_column`'s aligned copy of a stack's values (`rows` ×
/// `cols`), made into its slot (or found not worth making) the first time in a
/// sequence.
#[cold]
#[inline(never)]
fn align_columns<'a, T: 'static>(
    slot: &'a WeightCopies,
    values: &[T],
    (rows, cols): (usize, usize),
) -> &'a Option<AlignedColumns> {
    slot.aligned_columns.get_or_init(|| {
        if !packed::transposed_column_prefers_dots(rows, cols) {
            return None;
        }
        let storage = pack_pool().take(AlignedColumns::stored_len(rows, cols), false);
        // A stack packed from its blocks (`Tape::load_stack`) has no copy in `values`.
        if let Some(packed) = slot.packed[0].get() {
            return AlignedColumns::copy_packed_into(storage, packed);
        }
        let values = packed::as_f32(values).expect("`available` checked f32");
        AlignedColumns::copy_into(storage, values, rows, (rows, cols))
    })
}

/// Packs `values` for the kernels into storage from the pack pool.
fn pack_pooled(values: &[f32], rows: usize, cols: usize, strides: (usize, usize)) -> PackedMatrix {
    let storage = pack_pool().take(PackedMatrix::packed_len(rows, cols), false);
    PackedMatrix::pack_into(storage, values, rows, cols, strides)
        .expect("`available` checked the instructions")
}

/// Storage of packed matrices (f32 panels), reused like the tapes' buffers: a pass of
/// the medium LSTM packs 6 MB of weights, and its weight gradients 12 MB of dz.
static PACK_POOL: std::sync::Mutex<BufferPool<f32>> = std::sync::Mutex::new(BufferPool::new());

fn pack_pool() -> std::sync::MutexGuard<'static, BufferPool<f32>> {
    PACK_POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Buffers of finished tapes, by length, for the next tapes to reuse. A training loop
/// makes the same tapes at every iteration, and fresh memory costs a page fault per
/// page: about 15% of the small LSTM's time, measured with `perf`.
#[doc(hidden)]
pub struct BufferPool<T> {
    free: BTreeMap<usize, Vec<Vec<T>>>,
    /// Values in `free`.
    held: usize,
    /// Values taken and not yet given back, and the most there ever were.
    out: usize,
    peak_out: usize,
    /// The values the pool keeps at least room for (`POOL_FLOOR`).
    floor: usize,
}

/// The pool keeps up to this many values (512 MiB of f32), or as many as the passes
/// ever had in use at once if that is more: a pool that holds less than one pass's
/// buffers frees some at the end of every pass and faults them in again in the next
/// (the large peephole LSTM's tapes hold 131 M values: with a fixed limit of 128 M,
/// every pass freed ~55 buffers of 13 MB and faulted them in again). Beyond, buffers
/// are freed; `release_pooled_buffers` frees them all.
const POOL_FLOOR: usize = 1 << 27;

impl<T: Scalar> BufferPool<T> {
    /// An empty pool.
    pub const fn new() -> BufferPool<T> {
        BufferPool::with_floor(POOL_FLOOR)
    }

    const fn with_floor(floor: usize) -> BufferPool<T> {
        BufferPool {
            free: BTreeMap::new(),
            held: 0,
            out: 0,
            peak_out: 0,
            floor,
        }
    }

    /// A buffer of `len` values, reused when one of that length is free. It is zeroed
    /// when `zeroed`; otherwise a reused one holds a finished tape's values.
    fn take(&mut self, len: usize, zeroed: bool) -> Vec<T> {
        self.out += len;
        self.peak_out = self.peak_out.max(self.out);
        match self.free.get_mut(&len).and_then(Vec::pop) {
            Some(mut buffer) => {
                self.held -= len;
                if zeroed {
                    buffer.fill(T::zero());
                }
                buffer
            }
            None => vec![T::zero(); len],
        }
    }

    /// Keeps `buffer` for reuse, if the pool has room.
    fn give(&mut self, buffer: Vec<T>) {
        let len = buffer.len();
        // (Saturating: a few buffers given back were not taken from the pool.)
        self.out = self.out.saturating_sub(len);
        if len > 0 && self.held + len <= self.floor.max(self.peak_out) {
            self.held += len;
            self.free.entry(len).or_default().push(buffer);
        }
    }

    /// Frees every buffer the pool keeps.
    fn release(&mut self) {
        self.free.clear();
        self.held = 0;
    }
}

/// Frees the buffers that finished passes left for the next ones to reuse (see
/// `BufferPool`): memory that a program done with training wants back. Passes after
/// it allocate afresh, and run as fast as before once they have.
pub fn release_pooled_buffers() {
    pool::<f32>().release();
    pool::<f64>().release();
    pack_pool().release();
}

/// The pool of `T`'s buffers; a poisoned lock (a panic elsewhere) still guards a
/// consistent pool, since no operation on it can panic half-way.
fn pool<T: Scalar>() -> std::sync::MutexGuard<'static, BufferPool<T>> {
    T::buffer_pool()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T: Scalar> Drop for Tape<T> {
    fn drop(&mut self) {
        let mut pool = pool::<T>();
        for buffer in self
            .bufs
            .drain(..)
            .chain(self.transposed.drain(..).flatten())
        {
            pool.give(buffer);
        }
        drop(pool);
        self.release_gradient_operands();
    }
}

impl<T: Scalar> Tape<T> {
    /// Buffers for `columns` (step, sequence) columns and `batch` sequences.
    /// Every value starts at zero.
    pub fn new(specs: &[BufferSpec], columns: usize, batch: usize) -> Tape<T> {
        let every_buffer: Vec<usize> = (0..specs.len()).collect();
        Tape::sharing_packs(
            specs,
            columns,
            batch,
            WeightPacks::new(specs),
            &every_buffer,
        )
    }

    /// A tape whose packed weights are shared with other tapes of the same cell. Its
    /// per-step buffers may hold a finished tape's values, except those in `zeroed`.
    pub(crate) fn sharing_packs(
        specs: &[BufferSpec],
        columns: usize,
        batch: usize,
        packed: Arc<WeightPacks>,
        zeroed: &[usize],
    ) -> Tape<T> {
        let cols: Vec<usize> = specs
            .iter()
            .map(|s| match s.cols {
                BufferCols::Steps => columns,
                BufferCols::Batch => batch,
                BufferCols::Fixed(cols) => cols,
            })
            .collect();
        let rows: Vec<usize> = specs.iter().map(|s| s.rows).collect();
        // The generated code writes every column of an internal per-step buffer
        // before it reads it (stores and GEMMs assign; the scheduler zeroes what must
        // start at zero), and its `prepare` loads every block of every stacked weight
        // (or packs them, which no kernel then reads from the buffer),
        // so only the small per-batch buffers, and those the caller names (the
        // gradient of an input that a cell never reads is never written), need
        // zeroing: clearing the rest cost 9-12% of the small and medium LSTM's time.
        // `tests/sequences.rs` checks this by running on buffers that NaN-filled tapes
        // left behind.
        let bufs = {
            let mut pool = pool::<T>();
            specs
                .iter()
                .zip(rows.iter().zip(&cols))
                .enumerate()
                .map(|(k, (spec, (r, c)))| {
                    let zero = spec.cols == BufferCols::Batch || zeroed.contains(&k);
                    pool.take(r * c, zero)
                })
                .collect()
        };
        let transposed = vec![None; specs.len()];
        let direct = rows
            .iter()
            .zip(&cols)
            .map(|(r, c)| reads_in_place(columns, r * c))
            .collect();
        Tape {
            bufs,
            rows,
            cols,
            columns,
            transposed,
            packed,
            input_grads: true,
            direct,
            loaded: vec![false; specs.len()],
            room: columns,
            packed_dz: Vec::new(),
            tiles: batch >= packed::TILE_MIN_BATCH && packed::tiles_available(),
        }
    }

    /// Whether the backward pass computes the inputs' gradients: the generated code
    /// skips the stages that serve only them when it does not.
    pub fn input_grads(&self) -> bool {
        self.input_grads
    }

    /// Sets whether the backward pass computes the inputs' gradients.
    pub(crate) fn set_input_grads(&mut self, wanted: bool) {
        self.input_grads = wanted;
    }

    /// The number of (step, sequence) columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Uses the first `columns` columns of the per-step buffers from here on: a tape
    /// that runs a sequence chunk by chunk holds one chunk at a time, the last one
    /// perhaps narrower than the others.
    pub(crate) fn set_columns(&mut self, columns: usize) {
        assert!(
            columns <= self.room,
            "a tape made for {} columns cannot hold {columns}",
            self.room
        );
        self.columns = columns;
    }

    /// A buffer's leading dimension.
    pub fn rows(&self, buf: usize) -> usize {
        self.rows[buf]
    }

    /// A buffer's values, column-major. (A stacked weight's buffer holds the weight
    /// only where `load_stack` copies it: not where the packed kernels run, nor where
    /// the pass reads it in place, see `reads_in_place`.)
    pub fn buffer(&self, buf: usize) -> &[T] {
        &self.bufs[buf]
    }

    /// A buffer's values, to be changed.
    pub fn buffer_mut(&mut self, buf: usize) -> &mut [T] {
        &mut self.bufs[buf]
    }

    /// Several distinct buffers at once, for a fused loop. Inlined, so that the
    /// pairwise distinctness checks of the generated code's constant ids fold away
    /// (13 buffers are 78 comparisons, at every step of the LSTM). The buffers come as
    /// they are stored, not mapped to slices: for the LSTM's 13, the array's `map` was
    /// a call of its own at every step (1.8% of the tiny LSTM's samples). The checks
    /// and the gathering are written out here rather than left to the slice's
    /// `get_disjoint_mut`, which LLVM inlined or not by the number of buffers and of
    /// its callers: with the LSTM's forward and backward steps both taking 10, it
    /// stayed a call at every step (1.5%).
    #[inline(always)]
    pub fn buffers_mut<const N: usize>(&mut self, ids: [usize; N]) -> [&mut Vec<T>; N] {
        let len = self.bufs.len();
        let mut distinct = true;
        for i in 0..N {
            distinct &= ids[i] < len;
            for j in 0..i {
                distinct &= ids[j] != ids[i];
            }
        }
        assert!(distinct, "generated code names distinct buffers");
        let base = self.bufs.as_mut_ptr();
        let mut out = [const { std::mem::MaybeUninit::<&mut Vec<T>>::uninit() }; N];
        for (slot, &id) in out.iter_mut().zip(&ids) {
            // SAFETY: the ids are in bounds and distinct (checked above), so the
            // references do not alias one another, and they borrow `self` mutably.
            slot.write(unsafe { &mut *base.add(id) });
        }
        // SAFETY: every element was written above; `MaybeUninit<X>` has `X`'s layout.
        unsafe { std::ptr::read(out.as_ptr().cast::<[&mut Vec<T>; N]>()) }
    }

    /// Where `at`'s value lies in its buffer.
    #[inline(always)]
    fn offset(&self, (buf, row, col): At) -> usize {
        col * self.rows[buf] + row
    }

    fn view(&self, (buf, row, col): At, rows: usize, cols: usize) -> Strided {
        Strided::column_major(self.rows[buf], row, col, rows, cols)
    }

    /// `dst = S * src` (or `Sᵀ * src`) over `n` columns, S a stacked weight buffer
    /// made of `blocks` (as `load_stack` was given them; called only where the pass
    /// reads them in place, see `reads_in_place`). With `add`, `dst += ...`: a sum
    /// whose other term the step stored in `dst` (the generated code runs `a + U * v`
    /// this way where nothing else reads `a`, without a loop of its own for the sum).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn gemm<'a, const B: usize>(
        &mut self,
        stack: usize,
        blocks: impl FnOnce() -> [StackBlock<'a, T>; B],
        transpose: bool,
        src: At,
        dst: At,
        n: usize,
        add: bool,
    ) {
        if self.direct[stack] {
            return self.direct_product(stack, &blocks(), transpose, src, dst, n, add);
        }
        if n == 1 && self.one_column_at_once(stack, transpose, src, dst, add) {
            return;
        }
        self.product(stack, transpose, src, dst, n, add);
    }

    /// A batch of one's product through a weight packed already (at every step after
    /// a sequence's first) and too small to share with the helper: straight to the
    /// one-column kernel, inlined into the step, past `product`'s and `packed_gemm`'s
    /// choices. False, having done nothing, elsewhere.
    #[inline(always)]
    fn one_column_at_once(
        &mut self,
        stack: usize,
        transpose: bool,
        src: At,
        dst: At,
        add: bool,
    ) -> bool {
        let slot = &self.packed.slots[stack];
        // (Transposed, only once the aligned columns' kernel is known not to serve.)
        if transpose && !matches!(slot.aligned_columns.get(), Some(None)) {
            return false;
        }
        let Some(matrix) = slot.packed[usize::from(transpose)].get() else {
            return false;
        };
        if self.rows[stack] * self.cols[stack] >= SHARED_STEP_FMAS {
            return false;
        }
        let (b_at, c_at) = (self.offset(src), self.offset(dst));
        let (b, c) = f32_operands(&mut self.bufs, src.0, dst.0);
        matrix.multiply_one_column(&b[b_at..], &mut c[c_at..], add);
        true
    }

    /// `dst = S * src` over `n` columns, every column starting from biases: its rows
    /// `row..` from the sum of the vectors of each `(row, terms)` (in their order),
    /// zero in the rows that no bias covers. The generated code runs a hoisted sum
    /// `W·x + b + b'` this way: the packed kernel starts its accumulators from the
    /// biases, and no loop over every column adds them (2.9% of the tiny LSTM's time).
    /// `blocks` as for `gemm`.
    pub fn gemm_onto<'a, const B: usize>(
        &mut self,
        stack: usize,
        blocks: impl FnOnce() -> [StackBlock<'a, T>; B],
        src: At,
        dst: At,
        n: usize,
        biases: &[(usize, &[&[T]])],
    ) {
        let rows = self.rows[stack];
        let mut start = pool::<T>().take(rows, true);
        for &(row, terms) in biases {
            for term in terms {
                for (v, t) in start[row..row + term.len()].iter_mut().zip(*term) {
                    *v += *t;
                }
            }
        }
        if packed::available::<T>() && !self.direct[stack] {
            let bias = packed::as_f32(&start).expect("`available` checked f32");
            self.packed_gemm(stack, false, src, dst, n, Start::Bias(bias));
        } else {
            let ld = self.rows[dst.0];
            for c in 0..n {
                let at = (dst.2 + c) * ld + dst.1;
                self.bufs[dst.0][at..at + rows].copy_from_slice(&start);
            }
            if self.direct[stack] {
                self.direct_product(stack, &blocks(), false, src, dst, n, true);
            } else {
                self.product(stack, false, src, dst, n, true);
            }
        }
        pool::<T>().give(start);
    }

    /// `gemm` past its in-place and one-column paths.
    fn product(&mut self, stack: usize, transpose: bool, src: At, dst: At, n: usize, add: bool) {
        let (s_rows, s_cols) = (self.rows[stack], self.cols[stack]);
        if packed::available::<T>() {
            let start = if add { Start::C } else { Start::Zero };
            return self.packed_gemm(stack, transpose, src, dst, n, start);
        }
        let beta = if add { T::one() } else { T::zero() };
        // Read through a transposed copy, made once per sequence: a product with a
        // column-major matrix runs about twice as fast as one reading it row by row
        // (measured 39 against 21 GF/s for the small LSTM's 128 × 512 × 16 step).
        if transpose {
            if self.transposed[stack].is_none() {
                let s = &self.bufs[stack];
                let t: Vec<T> = (0..s_rows)
                    .flat_map(|r| (0..s_cols).map(move |c| s[c * s_rows + r]))
                    .collect();
                self.transposed[stack] = Some(t);
            }
            let t_view = Strided::column_major(s_cols, 0, 0, s_cols, s_rows);
            let src_view = self.view(src, s_rows, n);
            let dst_view = self.view(dst, s_cols, n);
            let t = self.transposed[stack].as_ref().expect("made above");
            let [b, c] = self
                .bufs
                .get_disjoint_mut([src.0, dst.0])
                .expect("distinct GEMM operands");
            gemm(t, t_view, b, src_view, beta, c, dst_view);
            return;
        }
        let s_view = Strided::column_major(s_rows, 0, 0, s_rows, s_cols);
        let src_view = self.view(src, s_cols, n);
        let dst_view = self.view(dst, s_rows, n);
        let [s, b, c] = self
            .bufs
            .get_disjoint_mut([stack, src.0, dst.0])
            .expect("distinct GEMM operands");
        gemm(s, s_view, b, src_view, beta, c, dst_view);
    }

    /// `product` where the pass reads the stacked weight in place (see
    /// `reads_in_place`): each block's product with the parameter's columns where
    /// they lie, into the block's rows of dst (transposed: all of them added up into
    /// dst's rows, one block after another).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn direct_product(
        &mut self,
        stack: usize,
        blocks: &[StackBlock<'_, T>],
        transpose: bool,
        src: At,
        dst: At,
        n: usize,
        add: bool,
    ) {
        let cols = self.cols[stack];
        debug_assert_eq!(
            blocks.iter().map(|b| b.rows).sum::<usize>(),
            self.rows[stack],
            "a stack's blocks cover its rows"
        );
        let (src_ld, dst_ld) = (self.rows[src.0], self.rows[dst.0]);
        let [b, c] = self
            .bufs
            .get_disjoint_mut([src.0, dst.0])
            .expect("distinct GEMM operands");
        for (k, block) in blocks.iter().enumerate() {
            let weight = Strided::column_major(block.rows, 0, block.col_start, block.rows, cols);
            let keep = add || (transpose && k > 0);
            let beta = if keep { T::one() } else { T::zero() };
            let (weight, x, out) = if transpose {
                (
                    weight.t(),
                    Strided::column_major(src_ld, src.1 + block.row, src.2, block.rows, n),
                    Strided::column_major(dst_ld, dst.1, dst.2, cols, n),
                )
            } else {
                (
                    weight,
                    Strided::column_major(src_ld, src.1, src.2, cols, n),
                    Strided::column_major(dst_ld, dst.1 + block.row, dst.2, block.rows, n),
                )
            };
            gemm(block.values, weight, b, x, beta, c, out);
        }
    }

    /// `product` through the packed kernel (f32 on a processor with AVX2 or AVX-512),
    /// or for a large weight in a large batch the AMX tiles (`packed::amx`).
    #[allow(clippy::too_many_arguments)]
    fn packed_gemm(
        &mut self,
        stack: usize,
        transpose: bool,
        src: At,
        dst: At,
        n: usize,
        start: Start<'_>,
    ) {
        let mut add = matches!(start, Start::C);
        debug_assert!(
            !matches!(start, Start::Bias(_)) || !transpose,
            "biases start a product, not its transpose"
        );
        if transpose && n == 1 && self.transposed_times_column(stack, src, dst, add) {
            return;
        }
        // Packed once per sequence; the check is on every step's path, the packing
        // (with its closure's captures) out of it.
        let matrix = match self.packed.slots[stack].packed[usize::from(transpose)].get() {
            Some(matrix) => matrix,
            None => pack_stack(
                &self.packed.slots[stack],
                &self.bufs[stack],
                (self.rows[stack], self.cols[stack]),
                transpose,
            ),
        };
        // A large weight in a large batch: the tiles, where the processor has them,
        // for a product of any number of columns (one too), so that no cut of a
        // pass's columns (`infer`'s chunks, the helper's halves) changes its kernel.
        let values = self.rows[stack] * self.cols[stack];
        let tiles = if self.tiles && values >= packed::TILE_MIN_VALUES {
            let slot = &self.packed.slots[stack];
            match slot.tiles[usize::from(transpose)].get() {
                Some(tiles) => tiles.as_ref(),
                None => {
                    let shape = (self.rows[stack], self.cols[stack]);
                    let shape = if transpose { (shape.1, shape.0) } else { shape };
                    split_for_tiles(slot, matrix, shape, transpose).as_ref()
                }
            }
        } else {
            None
        };
        let (src_ld, dst_ld) = (self.rows[src.0], self.rows[dst.0]);
        let (b_at, c_at) = (self.offset(src), self.offset(dst));
        let (b, c) = f32_operands(&mut self.bufs, src.0, dst.0);
        if n == 1 && tiles.is_none() {
            // A batch of one, every step of the notebooks' models: the shortest path.
            let (b, c) = (&b[b_at..], &mut c[c_at..]);
            if let Start::Bias(bias) = start {
                // The one-column kernel adds onto C.
                let rows = self.rows[stack];
                c[..rows].copy_from_slice(&bias[..rows]);
                add = true;
            }
            let fmas = self.rows[stack] * self.cols[stack];
            let halves = shares(fmas, true).then(|| matrix.one_column_halves());
            let Some([mine, theirs]) = halves.flatten() else {
                return matrix.multiply_one_column(b, c, add);
            };
            // A large weight: its rows in two halves, each staying in the cache of the
            // core that reads it at every step.
            let (c_mine, c_theirs) = c.split_at_mut(theirs.start * matrix.panel_height());
            return helper::in_two(
                || matrix.one_column_panels(b, c_mine, add, mine),
                || matrix.one_column_panels(b, c_theirs, add, theirs),
            );
        }
        let multiply = |b_at, c: &mut [f32], c_at, n| match tiles {
            Some(tiles) => tiles.multiply(b, b_at, c, c_at, n, start),
            None => matrix.multiply(b, b_at, c, c_at, n, start),
        };
        let fmas = self.rows[stack] * self.cols[stack] * n;
        let Some(first) = share_point(n, fmas, n < self.columns) else {
            return multiply((b_at, src_ld), c, (c_at, dst_ld), n);
        };
        // A batch too small to split into parts (see `helper`): the columns in two
        // halves, the second on the helper thread.
        let (mine, theirs) = c.split_at_mut(c_at + first * dst_ld);
        helper::in_two(
            || multiply((b_at, src_ld), mine, (c_at, dst_ld), first),
            || {
                multiply(
                    (b_at + first * src_ld, src_ld),
                    theirs,
                    (0, dst_ld),
                    n - first,
                )
            },
        );
    }

    /// `dst = Sᵀ * src` (with `add`, `dst += Sᵀ * src`) for one column, as dot
    /// products with the columns of S's aligned copy (see `packed::AlignedColumns`);
    /// false where no such kernel runs or the packed transpose is faster for S's shape
    /// (decided once, with the copy).
    fn transposed_times_column(&mut self, stack: usize, src: At, dst: At, add: bool) -> bool {
        let copy = match self.packed.slots[stack].aligned_columns.get() {
            Some(copy) => copy,
            None => align_columns(
                &self.packed.slots[stack],
                &self.bufs[stack],
                (self.rows[stack], self.cols[stack]),
            ),
        };
        let Some(copy) = copy else {
            return false;
        };
        let (src_at, dst_at) = (self.offset(src), self.offset(dst));
        let (b, c) = f32_operands(&mut self.bufs, src.0, dst.0);
        let (x, out) = (&b[src_at..], &mut c[dst_at..]);
        let cols = self.cols[stack];
        let Some(half) = share_point(cols, self.rows[stack] * cols, true) else {
            copy.transposed_times(x, out, add);
            return true;
        };
        // A large weight: its columns in two halves, as in `packed_gemm`.
        let (mine, theirs) = out.split_at_mut(half);
        helper::in_two(
            || copy.transposed_times_columns(x, mine, add, 0..half),
            || copy.transposed_times_columns(x, theirs, add, half..cols),
        );
        true
    }

    /// Makes buffer `dst` hold what `src` holds by exchanging the two, leaving `dst`'s
    /// old values in `src`: a copy for a buffer that is written whole again before it
    /// is next read (a state's gradient before the step, at every backward step).
    ///
    /// # Panics
    /// When the two buffers differ in length (a bug of the caller's).
    pub(crate) fn move_buffer(&mut self, src: usize, dst: usize) {
        assert_eq!(
            self.bufs[src].len(),
            self.bufs[dst].len(),
            "buffers {src} and {dst} exchanged at different lengths"
        );
        self.bufs.swap(src, dst);
    }

    /// Copies `rows` × `n` values.
    pub fn copy(&mut self, src: At, dst: At, rows: usize, n: usize) {
        let (src_ld, dst_ld) = (self.rows[src.0], self.rows[dst.0]);
        for c in 0..n {
            let from = (src.2 + c) * src_ld + src.1;
            let to = (dst.2 + c) * dst_ld + dst.1;
            if src.0 == dst.0 {
                self.bufs[src.0].copy_within(from..from + rows, to);
            } else {
                let [a, b] = self
                    .bufs
                    .get_disjoint_mut([src.0, dst.0])
                    .expect("distinct buffers");
                copy_run(&mut b[to..to + rows], &a[from..from + rows]);
            }
        }
    }

    /// Copies a vector into `n` columns.
    pub fn broadcast(&mut self, dst: At, values: &[T], n: usize) {
        let ld = self.rows[dst.0];
        for c in 0..n {
            let at = (dst.2 + c) * ld + dst.1;
            self.bufs[dst.0][at..at + values.len()].copy_from_slice(values);
        }
    }

    /// Zeroes `rows` × `n` values.
    pub fn zero(&mut self, dst: At, rows: usize, n: usize) {
        let ld = self.rows[dst.0];
        for c in 0..n {
            let at = (dst.2 + c) * ld + dst.1;
            self.bufs[dst.0][at..at + rows].fill(T::zero());
        }
    }

    /// Stacks a weight from its blocks, which follow one another from row 0. Where the
    /// packed kernels run (f32 on a processor with AVX2 or AVX-512), the blocks are
    /// packed straight into the stack's packing, which every product with the stack
    /// and its transpose then reads, and the stack's buffer is left as it was;
    /// elsewhere each block is copied into the buffer (`load_block`). Copying the
    /// notebooks' LSTM's weights column by column into the tape before packing them was
    /// a quarter of a one-step pass (`benches/README.md`, session 21). Where a short
    /// pass's products read the blocks where they lie (`reads_in_place`), it does
    /// neither. A tape stacks each weight once: later calls, as when a tape runs a
    /// sequence chunk by chunk and prepares each chunk, keep what the first stacked.
    pub fn load_stack(&mut self, stack: usize, blocks: &[StackBlock<'_, T>]) {
        if self.direct[stack] {
            // The products read the blocks where they lie (`direct_product`).
            return;
        }
        if !packed::available::<T>() {
            if !self.loaded[stack] {
                for block in blocks {
                    self.load_block(stack, block.row, block.values, block.rows, block.col_start);
                }
                self.loaded[stack] = true;
            }
            return;
        }
        let (rows, cols) = (self.rows[stack], self.cols[stack]);
        // The parts of a batch share the packing: whichever comes first packs it.
        self.packed.slots[stack].packed[0].get_or_init(|| {
            let parts: Vec<StackBlock<'_, f32>> = blocks
                .iter()
                .map(|block| StackBlock {
                    row: block.row,
                    values: packed::as_f32(block.values).expect("`available` checked f32"),
                    rows: block.rows,
                    col_start: block.col_start,
                })
                .collect();
            let storage = pack_pool().take(PackedMatrix::packed_len(rows, cols), false);
            PackedMatrix::pack_blocks_into(storage, &parts, rows, cols)
                .expect("`available` checked the instructions")
        });
    }

    /// Copies columns `col_start..` of a parameter (column-major, `param_rows` rows) into
    /// rows `row..` of a stacked weight buffer, as many columns as the buffer has.
    pub fn load_block(
        &mut self,
        stack: usize,
        row: usize,
        param: &[T],
        param_rows: usize,
        col_start: usize,
    ) {
        let (ld, cols) = (self.rows[stack], self.cols[stack]);
        for c in 0..cols {
            let from = (col_start + c) * param_rows;
            let to = c * ld + row;
            copy_run(
                &mut self.bufs[stack][to..to + param_rows],
                &param[from..from + param_rows],
            );
        }
    }

    /// `dz · vᵀ` over all columns of the tape, added block by block to parameters'
    /// gradients: a weight's gradient from every step in one GEMM. The blocks' rows
    /// follow one another in dz from row `dz.1`; v has `cols` rows from row `v.1`. Each
    /// of `sums` gains its rows of dz summed over the columns (a bias's gradient), in
    /// the columns' order.
    pub fn weight_grads(
        &mut self,
        dz: (usize, usize),
        v: (usize, usize),
        cols: usize,
        blocks: &mut [GradBlock<'_, T>],
        sums: &mut [GradSum<'_, T>],
    ) {
        if packed::available::<T>() && self.columns > 0 {
            return self.packed_weight_grads(dz, v, cols, blocks, sums);
        }
        self.add_row_sums(dz, sums);
        let mut row = dz.1;
        for block in blocks {
            let dz_view = self.view((dz.0, row, 0), block.rows, self.columns);
            let v_view = self.view((v.0, v.1, 0), cols, self.columns).t();
            let grad_view =
                Strided::column_major(block.grad_rows, 0, block.col_start, block.rows, cols);
            gemm(
                &self.bufs[dz.0],
                dz_view,
                &self.bufs[v.0],
                v_view,
                T::one(),
                block.grad,
                grad_view,
            );
            row += block.rows;
        }
    }

    /// `weight_grads` through the packed kernel: the stack's rows of dz packed into
    /// panels (one sequential copy, for every product that reads them), vᵀ read in
    /// place (the kernel broadcasts each value of B, and a step's values of v lie side
    /// by side: copying vᵀ out first took 2.7% of the tiny MGU's time, for nothing),
    /// and the product blocked over the columns. matrixmultiply ran these at about 71%
    /// of the multiply-add peak (`perf` of the medium LSTM); see `benches/README.md`.
    fn packed_weight_grads(
        &mut self,
        dz: (usize, usize),
        v: (usize, usize),
        cols: usize,
        blocks: &mut [GradBlock<'_, T>],
        sums: &mut [GradSum<'_, T>],
    ) {
        if self.tile_weight_grads(dz, v, cols, blocks, sums) {
            return;
        }
        if let Some(ats) = self.packed_blocks(dz, blocks) {
            // Each block's rows of dz are packed already (their own weight gradients
            // packed them): each block from its packing, none packed again.
            self.add_row_sums(dz, sums);
            for (block, at) in blocks.iter_mut().zip(ats) {
                self.grads_from_packed(&self.packed_dz[at].1, v, cols, std::slice::from_mut(block));
            }
            return;
        }
        let stacked: usize = blocks.iter().map(|b| b.rows).sum();
        let dz_at = self.packed_dz_rows(dz, stacked, sums);
        self.grads_from_packed(&self.packed_dz[dz_at].1, v, cols, blocks);
    }

    /// `packed_weight_grads` on AMX tiles, where this pass's large products run
    /// there (see `tiles`): v's rows split into parts once, for every block, and dz's
    /// rows split a block at a time inside the product (see `TransposedParts`). False,
    /// having done nothing, elsewhere. (Unlike the f32 path, it never shares the
    /// product with the helper thread: a pass on the tiles is a part of a batch on
    /// one of rayon's workers, or the only part on one thread, and the helper takes
    /// neither.)
    fn tile_weight_grads(
        &self,
        dz: (usize, usize),
        v: (usize, usize),
        cols: usize,
        blocks: &mut [GradBlock<'_, T>],
        sums: &mut [GradSum<'_, T>],
    ) -> bool {
        let stacked: usize = blocks.iter().map(|b| b.rows).sum();
        if !self.tiles || stacked * cols < packed::TILE_MIN_VALUES {
            return false;
        }
        let storage = pack_pool().take(TransposedParts::stored_len(cols, self.columns), false);
        let v_rows = GradientRows {
            values: packed::as_f32(&self.bufs[v.0]).expect("tiles run on f32"),
            offset: v.1,
            ld: self.rows[v.0],
            rows: cols,
        };
        let Some(vt) = TransposedParts::split(storage, v_rows, self.columns) else {
            return false;
        };
        self.add_row_sums(dz, sums);
        let values = packed::as_f32(&self.bufs[dz.0]).expect("tiles run on f32");
        let mut row = dz.1;
        for block in blocks {
            let dz_rows = GradientRows {
                values,
                offset: row,
                ld: self.rows[dz.0],
                rows: block.rows,
            };
            let grad = packed::as_f32_mut(block.grad).expect("tiles run on f32");
            vt.add_product(
                dz_rows,
                grad,
                (block.col_start * block.grad_rows, block.grad_rows),
            );
            row += block.rows;
        }
        pack_pool().give(vt.into_storage());
        true
    }

    /// Where in `packed_dz` each block's rows of dz are (the blocks' rows following
    /// one another from row `dz.1` of buffer `dz.0`), if every one of them is there
    /// and there are several blocks.
    fn packed_blocks(&self, dz: (usize, usize), blocks: &[GradBlock<'_, T>]) -> Option<Vec<usize>> {
        if blocks.len() < 2 {
            return None;
        }
        let mut row = dz.1;
        blocks
            .iter()
            .map(|block| {
                let key = (dz.0, row, block.rows);
                row += block.rows;
                self.packed_dz.iter().position(|(k, _)| *k == key)
            })
            .collect()
    }

    /// `packed_weight_grads` from dz's rows packed as `dz`.
    fn grads_from_packed(
        &self,
        dz: &PackedMatrix,
        v: (usize, usize),
        cols: usize,
        blocks: &mut [GradBlock<'_, T>],
    ) {
        let stacked: usize = blocks.iter().map(|b| b.rows).sum();
        // vᵀ read in place: row j of v is column j of the product's right operand.
        let vt = packed::as_f32(&self.bufs[v.0]).expect("`available` checked f32");
        let ld = self.rows[v.0];
        let Some(first) = share_point(cols, stacked * self.columns * cols, false) else {
            return add_weight_grads(dz, vt, Operand::rows(v.1, ld), cols, blocks);
        };
        // A batch too small to split (the notebooks' batch of one): the gradients'
        // columns in two halves, the second on the helper thread.
        let (mut mine, mut theirs): (Vec<_>, Vec<_>) = blocks
            .iter_mut()
            .map(|block| {
                let (low, high) = block
                    .grad
                    .split_at_mut((block.col_start + first) * block.grad_rows);
                let (grad_rows, rows) = (block.grad_rows, block.rows);
                let low = GradBlock {
                    grad: low,
                    grad_rows,
                    col_start: block.col_start,
                    rows,
                };
                (
                    low,
                    GradBlock {
                        grad: high,
                        grad_rows,
                        col_start: 0,
                        rows,
                    },
                )
            })
            .unzip();
        helper::in_two(
            || add_weight_grads(dz, vt, Operand::rows(v.1, ld), first, &mut mine),
            || {
                add_weight_grads(
                    dz,
                    vt,
                    Operand::rows(v.1 + first, ld),
                    cols - first,
                    &mut theirs,
                )
            },
        );
    }

    /// Returns the weight gradients' packed operands to their pool. The backward pass
    /// calls it once its weight gradients are done: dz changes with every backward
    /// pass over the same tape, so none may see the last one's.
    pub(crate) fn release_gradient_operands(&mut self) {
        let mut packs = pack_pool();
        for (_, matrix) in self.packed_dz.drain(..) {
            packs.give(matrix.into_storage());
        }
    }

    /// Where in `packed_dz` rows `dz.1..dz.1 + rows` of buffer `dz.0` are, packed on
    /// first use, which also adds those rows' sums to `sums` (already packed, a loop
    /// sums them).
    fn packed_dz_rows(
        &mut self,
        dz: (usize, usize),
        rows: usize,
        sums: &mut [GradSum<'_, T>],
    ) -> usize {
        let key = (dz.0, dz.1, rows);
        if let Some(at) = self.packed_dz.iter().position(|(k, _)| *k == key) {
            self.add_row_sums(dz, sums);
            return at;
        }
        let values = packed::as_f32(&self.bufs[dz.0]).expect("`available` checked f32");
        let strides = (1, self.rows[dz.0]);
        let panels = if sums.is_empty() {
            pack_pooled(&values[dz.1..], rows, self.columns, strides)
        } else {
            let mut row_sums = pack_pool().take(rows, true);
            let storage = pack_pool().take(PackedMatrix::packed_len(rows, self.columns), false);
            let shape = (rows, self.columns);
            let panels = PackedMatrix::pack_summing_into(
                storage,
                &values[dz.1..],
                shape,
                strides,
                &mut row_sums,
            )
            .expect("`available` checked the instructions");
            for sum in sums.iter_mut() {
                let grad = packed::as_f32_mut(sum.grad).expect("`available` checked f32");
                for (g, s) in grad.iter_mut().zip(&row_sums[sum.row..]) {
                    *g += *s;
                }
            }
            pack_pool().give(row_sums);
            panels
        };
        self.packed_dz.push((key, panels));
        self.packed_dz.len() - 1
    }

    /// Each of `sums` gains its rows of dz (from row `dz.1` of buffer `dz.0`) summed
    /// over every column, column by column.
    fn add_row_sums(&self, dz: (usize, usize), sums: &mut [GradSum<'_, T>]) {
        let (values, ld) = (&self.bufs[dz.0], self.rows[dz.0]);
        for sum in sums.iter_mut() {
            let rows = sum.grad.len();
            for c in 0..self.columns {
                let at = c * ld + dz.1 + sum.row;
                for (g, v) in sum.grad.iter_mut().zip(&values[at..at + rows]) {
                    *g += *v;
                }
            }
        }
    }
}

/// `blocks[k].grad += (dz · vᵀ)[block k's rows]` for `cols` columns of v (vᵀ where
/// `vt_at` says, the packed dz's rows being the blocks' rows one after another): the
/// stack's rows of dz packed into panels once (for every product that reads them), vᵀ
/// read in place (the kernel broadcasts each value of B, and a step's values of v lie
/// side by side: copying vᵀ out first took 2.7% of the tiny MGU's time, for nothing),
/// and the product blocked over the columns. matrixmultiply ran these at about 71% of
/// the multiply-add peak (`perf` of the medium LSTM); see `benches/README.md`.
fn add_weight_grads<T: Scalar>(
    dz: &PackedMatrix,
    vt: &[f32],
    vt_at: Operand,
    cols: usize,
    blocks: &mut [GradBlock<'_, T>],
) {
    let stacked: usize = blocks.iter().map(|b| b.rows).sum();
    let panel = dz.panel_height();
    if blocks.len() == 1 || blocks.iter().all(|b| b.rows.is_multiple_of(panel)) {
        // Each block starts on a panel: its rows of the product go straight into its
        // gradient.
        let mut row = 0;
        for block in blocks {
            let grad = packed::as_f32_mut(block.grad).expect("f32");
            let c_at = (block.col_start * block.grad_rows, block.grad_rows);
            dz.multiply_rows(row..row + block.rows, vt, vt_at, grad, c_at, cols, true);
            row += block.rows;
        }
        return;
    }
    // Blocks that split panels (35 rows in panels of 32): a panel across two blocks
    // adds its rows to both gradients.
    let mut rows: Vec<RowBlock<'_>> = blocks
        .iter_mut()
        .map(|block| RowBlock {
            at: block.col_start * block.grad_rows,
            ld: block.grad_rows,
            rows: block.rows,
            c: packed::as_f32_mut(block.grad).expect("f32"),
        })
        .collect();
    if dz.multiply_add_into_blocks(vt, vt_at, cols, &mut rows) {
        return;
    }
    drop(rows);
    // Where that does not apply (blocks smaller than a panel, or AVX2): the stack's
    // product, in whole panels, then each block's share added to its gradient. (The
    // product overwrites the buffer, so it need not be cleared.)
    let mut product = pool::<T>().take(stacked * cols, false);
    let out = packed::as_f32_mut(&mut product).expect("f32");
    dz.multiply_rows(0..stacked, vt, vt_at, out, (0, stacked), cols, false);
    let mut row = 0;
    for block in blocks.iter_mut() {
        for c in 0..cols {
            let from = &product[c * stacked + row..][..block.rows];
            let at = (block.col_start + c) * block.grad_rows;
            for (g, p) in block.grad[at..at + block.rows].iter_mut().zip(from) {
                *g += *p;
            }
        }
        row += block.rows;
    }
    pool::<T>().give(product);
}

/// Whether a pass of `columns` columns (steps × sequences) reads a stacked weight of
/// `values` values where the parameters lie (`Tape::direct_product`), neither packed
/// nor copied: a pass of one column, and a pass of up to four columns whose weight
/// outgrows the L1 cache. A packing reads and writes the whole weight, which a pass
/// of one column then reads once; a sampling loop runs such a pass at every
/// character. A one-step pass of an LSTM with 512 hidden units (8 MB of weights) spent
/// two thirds of its forward time packing them; read in place, its forward took 0.32
/// ms instead of 0.99 (session 22, `benches/README.md`). A weight that fits in L1 packs
/// cheaply, and the packed kernel then runs several columns faster than the products
/// in place (`scalar::gemm`'s few-column products): at 35 hidden units, four steps of
/// the LSTM took 6.1 µs in place against 3.9 packed. From 128 hidden units, two to
/// four columns in place took 0.44-0.8 of their packed forward time.
/// (Four columns: up to `scalar::gemm`'s few-column products, which read the weight
/// once for all of them.)
fn reads_in_place(columns: usize, values: usize) -> bool {
    /// 64 KiB of f32, past the L1 cache of the machines measured (32 and 48 KiB).
    const LARGE_WEIGHT: usize = 1 << 14;
    columns == 1 || (columns <= 4 && values >= LARGE_WEIGHT)
}

/// A step's product of at least this many multiply-adds is shared with the helper
/// thread where a pass runs on one thread (see `helper`). Its weight stays in the
/// cores' caches from step to step (a batch of one splits it by rows, and each core
/// keeps its half), so only the state and the product's halves move between the
/// cores, about a microsecond of exchange.
/// In a batch of one, the LSTM's and the GRU's passes (70 steps) took 0.60-0.72 of
/// their one-thread time from H = 192 (the LSTM's 768 × 192 weight, 147 K) up; the
/// GRU at H = 192 (576 × 192, 110 K) gained nothing (`examples/helper_speedup.rs`).
const SHARED_STEP_FMAS: usize = 1 << 17;

/// The same for a product over all steps (the input projection, the gradients): its
/// operands were just written on this core, and the helper reads them from its
/// caches. The tiny LSTM's products (343 K multiply-adds over 50 KB) ran 75% slower
/// on the helper than here, taking longer in two halves than in one; at a batch of
/// one, H = 128 (4.6 M) gained nothing and H = 256 (18 M) 1.3-1.5x.
const SHARED_PASS_FMAS: usize = 1 << 23;

/// Whether a product of `fmas` multiply-adds (`per_step`: one step's, or one over all
/// steps) is large enough to share, and a helper may take it.
fn shares(fmas: usize, per_step: bool) -> bool {
    let least = if per_step {
        SHARED_STEP_FMAS
    } else {
        SHARED_PASS_FMAS
    };
    fmas >= least && helper::allowed()
}

/// Where a product of `n` columns and `fmas` multiply-adds (`per_step`: one step's, or
/// one over all steps) splits its columns between this thread and the helper, if it is
/// large enough to share and a helper may take it: about half, rounded to a
/// multiple of 8 columns.
///
/// A product over all steps keeps two columns at least in each half: a half of one
/// column runs the one-column kernel, whose sums differ in the last bits from the
/// many-column kernel's, and `infer`'s chunk of three columns, cut 1 + 2, then
/// differed from `forward`'s one cut over all the steps. (A step's product is cut
/// alike in both, so a batch of two may share its halves of one column.)
fn share_point(n: usize, fmas: usize, per_step: bool) -> Option<usize> {
    let fewest = if per_step { 2 } else { 4 };
    if n < fewest || !shares(fmas, per_step) {
        return None;
    }
    Some(if n >= 16 { (n / 2 + 4) / 8 * 8 } else { n / 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cell::BufferCols;
    use crate::Rng;

    fn spec(rows: usize, cols: BufferCols) -> BufferSpec {
        BufferSpec {
            rows,
            cols,
            what: "test",
        }
    }

    fn fill(values: &mut [f32], rng: &mut Rng) {
        for v in values {
            *v = rng.normal() as f32;
        }
    }

    /// `Σₚ a[a_at + p·a_step] · b[b_at + p·b_step]` over `k` terms, in f64, with the
    /// sum of the terms' magnitudes.
    fn dot(
        a: &[f32],
        (a_at, a_step): (usize, usize),
        b: &[f32],
        (b_at, b_step): (usize, usize),
        k: usize,
    ) -> [f64; 2] {
        (0..k)
            .map(|p| f64::from(a[a_at + p * a_step]) * f64::from(b[b_at + p * b_step]))
            .fold([0.0, 0.0], |[sum, size], term| {
                [sum + term, size + term.abs()]
            })
    }

    /// An f32 sum of many terms against its f64 value: the error grows with the terms'
    /// magnitudes (`size`); a value from the wrong half would be off by about `size`.
    fn assert_close(got: f32, [want, size]: [f64; 2], what: &str) {
        assert!(
            (f64::from(got) - want).abs() <= 1e-5 * (1.0 + size),
            "{what}: {got} against {want}"
        );
    }

    /// A pass of one column reads its stacked weight in place (`direct_product`): a
    /// stack of two blocks, the second a column range of a wider parameter, times a
    /// column, its transpose times a column, each onto a column of stale values and
    /// assigned over it, and from biases.
    #[test]
    fn a_pass_of_one_column_reads_the_weight_in_place() {
        let (k, top, bottom, wide) = (13, 20, 17, 30);
        let m = top + bottom;
        let specs = [
            spec(m, BufferCols::Fixed(k)),
            spec(k, BufferCols::Steps),
            spec(m, BufferCols::Steps),
            spec(k, BufferCols::Steps),
        ];
        let mut tape = Tape::<f32>::new(&specs, 1, 1);
        assert!(tape.direct[0]);
        let mut rng = Rng::seed(5);
        for buf in 0..4 {
            fill(tape.buffer_mut(buf), &mut rng);
        }
        let (mut first, mut second) = (vec![0.0; top * k], vec![0.0; bottom * wide]);
        fill(&mut first, &mut rng);
        fill(&mut second, &mut rng);
        let col_start = wide - k;
        let blocks = || {
            [
                StackBlock {
                    row: 0,
                    values: &first[..],
                    rows: top,
                    col_start: 0,
                },
                StackBlock {
                    row: top,
                    values: &second[..],
                    rows: bottom,
                    col_start,
                },
            ]
        };
        // S's element (i, p), from the block that holds row i.
        let s = |i: usize, p: usize| {
            if i < top {
                f64::from(first[p * top + i])
            } else {
                f64::from(second[(col_start + p) * bottom + i - top])
            }
        };
        // Σₚ weight(p) · v[p], with the sum of the terms' magnitudes.
        let sum_of = |v: &[f32], weight: &dyn Fn(usize) -> f64| {
            v.iter()
                .enumerate()
                .map(|(p, value)| weight(p) * f64::from(*value))
                .fold([0.0, 0.0], |[sum, size], t| [sum + t, size + t.abs()])
        };
        let x = tape.buffer(1)[..k].to_vec();
        let product = |i: usize| sum_of(&x, &|p| s(i, p));
        let in_place = |transpose, (src, dst)| {
            move |tape: &mut Tape<f32>, add| {
                tape.gemm(0, blocks, transpose, (src, 0, 0), (dst, 0, 0), 1, add)
            }
        };
        onto_then_over(&mut tape, (2, m), in_place(false, (1, 2)), product, "S·x");
        let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.25).collect();
        tape.gemm_onto(0, blocks, (1, 0, 0), (2, 0, 0), 1, &[(0, &[&bias[..]])]);
        for (i, b) in bias.iter().map(|b| f64::from(*b)).enumerate() {
            let [sum, size] = product(i);
            let want = [b + sum, size + b];
            assert_close(tape.buffer(2)[i], want, &format!("b + S·x[{i}]"));
        }
        // Sᵀ times the column just made.
        let y = tape.buffer(2)[..m].to_vec();
        let back = |p: usize| sum_of(&y, &|i| s(i, p));
        onto_then_over(&mut tape, (3, k), in_place(true, (2, 3)), back, "Sᵀ·y");
    }

    /// `product` into column 0 of buffer `dst` (`len` values) added onto the values
    /// there, then assigned over them: each value the product's (`want`), plus the
    /// value it was added to.
    fn onto_then_over(
        tape: &mut Tape<f32>,
        (dst, len): (usize, usize),
        mut product: impl FnMut(&mut Tape<f32>, bool),
        want: impl Fn(usize) -> [f64; 2],
        what: &str,
    ) {
        let stale = tape.buffer(dst)[..len].to_vec();
        product(tape, true);
        for (i, was) in stale.iter().enumerate() {
            let [sum, size] = want(i);
            let got = tape.buffer(dst)[i];
            assert_close(
                got,
                [f64::from(*was) + sum, size],
                &format!("stale + {what}[{i}]"),
            );
        }
        product(tape, false);
        for i in 0..len {
            assert_close(tape.buffer(dst)[i], want(i), &format!("{what}[{i}]"));
        }
    }

    /// `gemm_onto` in f32 (the packed kernels) and f64 (the generic product): rows
    /// `0..35` start from two biases, rows `35..70` from none (zero); over many
    /// columns, one column, and (f32) a product large enough to share its columns
    /// with the helper; every other column of the destination left as it was.
    #[test]
    fn products_start_from_their_biases() {
        products_start_from_biases::<f32>(70, 20, 13);
        products_start_from_biases::<f64>(70, 20, 13);
        products_start_from_biases::<f32>(1024, 256, 160);
    }

    fn products_start_from_biases<T: Scalar>(m: usize, k: usize, columns: usize) {
        let specs = [
            spec(m, BufferCols::Fixed(k)),
            spec(k, BufferCols::Steps),
            spec(m, BufferCols::Steps),
        ];
        let mut tape = Tape::<T>::new(&specs, columns, 1);
        let mut rng = Rng::seed(11);
        for buf in 0..3 {
            for v in tape.buffer_mut(buf) {
                *v = T::of(rng.normal());
            }
        }
        let before = tape.buffer(2).to_vec();
        let b1: Vec<T> = (0..35).map(|_| T::of(rng.normal())).collect();
        let b2: Vec<T> = (0..35).map(|_| T::of(rng.normal())).collect();
        let biases: [(usize, &[&[T]]); 1] = [(0, &[&b1, &b2])];
        // All columns but the last; then the last alone.
        tape.gemm_onto(0, || [], (1, 0, 0), (2, 0, 0), columns - 2, &biases);
        tape.gemm_onto(
            0,
            || [],
            (1, 0, columns - 1),
            (2, 0, columns - 1),
            1,
            &biases,
        );
        let (s, src, dst) = (tape.buffer(0), tape.buffer(1), tape.buffer(2));
        for j in 0..columns {
            for i in 0..m {
                let at = j * m + i;
                let got = dst[at].as_f64();
                if j == columns - 2 {
                    assert_eq!(got, before[at].as_f64(), "column {j} is not the product's");
                    continue;
                }
                let (product, size) = (0..k)
                    .map(|p| s[p * m + i].as_f64() * src[j * k + p].as_f64())
                    .fold((0.0, 0.0), |(sum, size), t| (sum + t, size + t.abs()));
                let bias = if i < 35 {
                    b1[i].as_f64() + b2[i].as_f64()
                } else {
                    0.0
                };
                let want = bias + product;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + size + bias.abs()),
                    "{m}×{k}, dst[{i}, {j}]: {got} against {want}"
                );
            }
        }
    }

    /// Products large enough to share with the helper thread: every value of both
    /// halves, over all steps, over one step's columns, and of one column (rows split
    /// by panels), plain, added to, and transposed.
    #[test]
    fn products_shared_with_the_helper_fill_both_halves() {
        if !packed::available::<f32>() {
            return;
        }
        let (m, k, batch, steps) = (1024, 256, 8, 20);
        let columns = batch * steps;
        let specs = [
            spec(m, BufferCols::Fixed(k)),
            spec(k, BufferCols::Steps),
            spec(m, BufferCols::Steps),
            spec(m, BufferCols::Steps),
            spec(k, BufferCols::Steps),
        ];
        let mut tape = Tape::<f32>::new(&specs, columns, batch);
        let mut rng = Rng::seed(7);
        for buf in 0..5 {
            fill(tape.buffer_mut(buf), &mut rng);
        }
        let before = tape.buffer(2).to_vec();
        if helper::allowed() {
            assert!(share_point(columns, m * k * columns, false).is_some());
            assert!(share_point(batch, m * k * batch, true).is_some());
            assert!(shares(m * k, true));
        }
        // All steps: `out = S · src`; one step's columns: `dst += S · src`; one column:
        // `dst = S · src`; then `back = Sᵀ · dst` over all steps, and one column of it
        // added to.
        let off = 3 * batch;
        tape.gemm(0, || [], false, (1, 0, 0), (3, 0, 0), columns, false);
        tape.gemm(0, || [], false, (1, 0, off), (2, 0, off), batch, true);
        tape.gemm(0, || [], false, (1, 0, 1), (2, 0, 1), 1, false);
        tape.gemm(0, || [], true, (2, 0, 0), (4, 0, 0), columns, false);
        tape.gemm(0, || [], true, (2, 0, 2), (4, 0, 2), 1, true);
        let (s, src, dst) = (tape.buffer(0), tape.buffer(1), tape.buffer(2));
        let (out, back) = (tape.buffer(3), tape.buffer(4));
        for j in 0..columns {
            for i in 0..m {
                let [product, size] = dot(s, (i, m), src, (j * k, 1), k);
                assert_close(out[j * m + i], [product, size], &format!("S·src[{i}, {j}]"));
                let was = f64::from(before[j * m + i]);
                let want = match j {
                    1 => product,
                    j if (off..off + batch).contains(&j) => was + product,
                    _ => was,
                };
                assert_close(dst[j * m + i], [want, size], &format!("dst[{i}, {j}]"));
            }
            // Sᵀ · dst: S's column i is Sᵀ's row i, so a column of S times dst's.
            for i in 0..k {
                let [product, size] = dot(s, (i * m, 1), dst, (j * m, 1), m);
                let want = if j == 2 { 2.0 * product } else { product };
                let what = format!("Sᵀ·dst[{i}, {j}]");
                assert_close(back[j * k + i], [want, 2.0 * size], &what);
            }
        }
    }

    /// The biases' sums that weight gradients gather: two gradients of one block's rows
    /// and one of the other's, added to what they held, in f32 (summed while dz is
    /// packed, then from the packed copy's buffer at the second product over the same
    /// dz) and in f64 (the generic product): each the rows' sum over every column.
    #[test]
    fn weight_gradients_sum_the_biases() {
        weight_gradients_sum_biases::<f32>();
        weight_gradients_sum_biases::<f64>();
    }

    fn weight_gradients_sum_biases<T: Scalar>() {
        let (rows, cols, columns) = (35, 20, 13);
        let specs = [
            spec(2 * rows, BufferCols::Steps),
            spec(cols, BufferCols::Steps),
        ];
        let mut tape = Tape::<T>::new(&specs, columns, 1);
        let mut rng = Rng::seed(5);
        for buf in 0..2 {
            for v in tape.buffer_mut(buf) {
                *v = T::of(rng.normal());
            }
        }
        for product in 0..2 {
            let mut weights = [vec![T::zero(); rows * cols], vec![T::zero(); rows * cols]];
            let mut biases = [
                vec![T::of(0.5); rows],
                vec![T::zero(); rows],
                vec![T::zero(); rows],
            ];
            let [w1, w2] = &mut weights;
            let mut blocks = [w1, w2].map(|grad| GradBlock {
                grad,
                grad_rows: rows,
                col_start: 0,
                rows,
            });
            let [b1, b2, b3] = &mut biases;
            let mut sums = [(b1, 0), (b2, 0), (b3, rows)].map(|(grad, row)| GradSum { grad, row });
            tape.weight_grads((0, 0), (1, 0), cols, &mut blocks, &mut sums);
            let dz = tape.buffer(0);
            for (k, (bias, row, start)) in [
                (&biases[0], 0, 0.5),
                (&biases[1], 0, 0.0),
                (&biases[2], rows, 0.0),
            ]
            .into_iter()
            .enumerate()
            {
                for i in 0..rows {
                    let want = (0..columns)
                        .fold(start, |acc, c| acc + dz[c * 2 * rows + row + i].as_f64());
                    let got = bias[i].as_f64();
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "product {product}, sum {k}, row {i}: {got} against {want}"
                    );
                }
            }
        }
    }

    /// Weight gradients large enough to share: blocks that split panels (35 rows) and
    /// blocks on panels, one of them covering its gradient's columns from the fourth.
    #[test]
    fn weight_gradients_shared_with_the_helper_fill_both_halves() {
        if !packed::available::<f32>() {
            return;
        }
        for (rows, cols, col_start, columns) in [(35, 35, 0, 3500), (64, 64, 3, 1100)] {
            let stacked = 2 * rows;
            let specs = [
                spec(stacked, BufferCols::Steps),
                spec(cols, BufferCols::Steps),
            ];
            let mut tape = Tape::<f32>::new(&specs, columns, 1);
            let mut rng = Rng::seed(11);
            fill(tape.buffer_mut(0), &mut rng);
            fill(tape.buffer_mut(1), &mut rng);
            if helper::allowed() {
                assert!(share_point(cols, stacked * columns * cols, false).is_some());
            }
            let grad_cols = col_start + cols;
            let mut grads = [
                vec![0.5f32; rows * grad_cols],
                vec![-0.25f32; rows * grad_cols],
            ];
            let [first, second] = &mut grads;
            let mut blocks = [
                GradBlock {
                    grad: first,
                    grad_rows: rows,
                    col_start,
                    rows,
                },
                GradBlock {
                    grad: second,
                    grad_rows: rows,
                    col_start,
                    rows,
                },
            ];
            tape.weight_grads((0, 0), (1, 0), cols, &mut blocks, &mut []);
            let (dz, v) = (tape.buffer(0), tape.buffer(1));
            for (g, (grad, start)) in grads.iter().zip([0.5, -0.25]).enumerate() {
                for c in 0..grad_cols {
                    for r in 0..rows {
                        // (dz · vᵀ)[g·rows + r, c - col_start], over every column.
                        let what = format!("block {g} of {rows} rows: gradient [{r}, {c}]");
                        let [sum, size] = if c < col_start {
                            [0.0, 0.0]
                        } else {
                            // dz's row g·rows + r times v's row c - col_start.
                            let (row, v_row) = (g * rows + r, c - col_start);
                            dot(dz, (row, stacked), v, (v_row, cols), columns)
                        };
                        assert_close(grad[c * rows + r], [start + sum, size], &what);
                    }
                }
            }
        }
    }

    /// A pass that had more values in use at once than the floor gets all its buffers
    /// back the next time; beyond what was ever in use, buffers are freed.
    #[test]
    fn the_pool_keeps_a_whole_pass_beyond_its_floor() {
        let mut pool = BufferPool::<f32>::with_floor(100);
        let (a, b) = (pool.take(80, false), pool.take(80, false));
        let (a_at, b_at) = (a.as_ptr(), b.as_ptr());
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.held, 160, "both buffers of the 160-value pass kept");
        let again = [pool.take(80, true), pool.take(80, true)];
        let reused: Vec<_> = again.iter().map(|v| v.as_ptr()).collect();
        assert!(reused.contains(&a_at) && reused.contains(&b_at));
        assert!(again.iter().all(|v| v.iter().all(|&x| x == 0.0)));
        assert_eq!(pool.held, 0);
        for buffer in again {
            pool.give(buffer);
        }
        // Never more than 160 values were out at once: a third buffer is freed.
        pool.give(vec![1.0; 80]);
        assert_eq!(pool.held, 160);
        pool.release();
        assert_eq!(pool.held, 0);
        assert!(pool.free.values().all(Vec::is_empty));
    }
}
