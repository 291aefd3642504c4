//! Products of a packed weight with many columns on Intel's AMX tiles, as accurate as
//! f32 multiply-adds.
//!
//! AMX multiplies bf16 values (8 significant bits) into f32 accumulators, 16 × 16 ×
//! 32 multiply-adds per instruction: on this project's machine 3.7 TF/s a core from
//! tile registers, against 0.2 for AVX-512's f32 multiply-adds. A bf16 product alone
//! would lose f32's precision, so every f32 value is split into three bf16 values
//! whose sum it is to 24 significant bits (`split16`), and the product sums the six
//! pairs of parts whose own product matters at f32's precision: high·high, high·mid,
//! mid·high, high·low, low·high and mid·mid. Each part's product is exact in f32 and
//! the dropped ones (mid·low, low·mid, low·low) are below 2⁻²⁶ of the whole, so the
//! sums are as close to the exact product as an f32 multiply-add chain's: 3-4·10⁻⁸
//! of the sum of the terms' magnitudes, against 8-10·10⁻⁸ for an f32 chain (a scratch
//! program, 512- to 1536-long dot products). Six products take a sixth of the tile
//! rate, 0.6 TF/s a core, three times the f32 rate; with the operands coming from L2
//! and L3, the products run 1.4-1.6 times as fast as the f32 kernels: the large
//! LSTM's step product (4096 × 1024 by 32 columns) in 1.09-1.15 ms against
//! 1.57-1.69, and its input terms over all steps (4096 × 512 by 3200 columns) at
//! 290-310 GF/s a core against about 190 (`benches/README.md`, session 26).
//!
//! Both operands' parts lie on 64-byte boundaries: a tile row 16 bytes off a line
//! straddles two, and the products ran at half the rate.
//!
//! The tiles differ from f32 on values no RNN produces: bf16 parts below 2⁻¹²⁶ count
//! as zero (the instruction flushes subnormals), so values under about 10⁻³³ lose
//! their low parts, and those under 10⁻³⁸ count as zero.
//!
//! Layout: a tile row of the left operand holds 32 values of the inner dimension, and
//! a row of C 16 values; the weight is the right operand, so that a row of C is 16 of
//! the weight's rows for one column of B, which is how the tape's column-major C
//! lies. B's columns (the samples) are split into tiles per product; the weight once
//! per sequence, when it is packed.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{check_bias, check_product_bounds, LineAligned, Operand, PackedMatrix, Start};

mod gradients;

pub(crate) use gradients::TransposedParts;

/// Rows of a tile, and f32 values per row of C's tiles.
const TILE_ROWS: usize = 16;
/// The inner dimension's values per tile row (bf16).
const CHUNK: usize = 32;
/// bf16 values per tile: 1 KiB.
const TILE: usize = TILE_ROWS * CHUNK;
/// The bf16 parts of each f32 value: high, mid and low.
const PARTS: usize = 3;
/// C's block per kernel call: two tiles of B's columns by two of the weight's rows.
const BLOCK: usize = 2 * TILE_ROWS;

/// B's columns split into tiles at a time: 256 columns of a 512-deep product are 768
/// KiB of parts, which stay in L2 while every block of the weight's rows meets them.
const COLUMN_BLOCK: usize = 256;
/// The inner dimension's chunks per kernel call (1024 values), C loaded again for
/// the next block: the large LSTM's step product (1024 deep) in one block ran its
/// forward in 228-231 ms against 234-248 in blocks of 16 (a scratch loop, two
/// alternations), and in the scratch program a 1536-deep product in one block ran
/// at 217 GF/s against 280-310 for 512 deep.
const DEPTH_BLOCK: usize = 32;
/// The weight's row tiles per block, whose parts (up to 768 KiB) stay in L2 while
/// every pair of column tiles meets them. In the scratch program the 4096 × 512
/// weight times 3200 columns ran at 310 GF/s with blocks of 16 tiles, 218 with 64.
const ROW_BLOCK: usize = 16;

/// The fewest sequences in a part of a batch for which its passes multiply on the
/// tiles: with fewer, the kernel's two tiles of columns are partly padding at every
/// step.
pub(crate) const MIN_BATCH: usize = BLOCK;

/// The fewest values of a weight whose products go to the tiles: splitting a smaller
/// one and setting the tiles up cost more than the tiles save. (The tiny LSTM's
/// input terms, 140 × 35 by 70 columns, made its forward pass take 0.036-0.040 ms
/// against 0.023 with the f32 kernels.)
pub(crate) const MIN_VALUES: usize = 1 << 19;

/// Whether this process runs AMX: the processor has the tiles and their bf16
/// products, Linux granted the process the tiles' state, and `RNN_AMX` is not `0`
/// (for comparing the f32 kernels on the same machine).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("RNN_AMX").map_or(true, |v| v != "0")
            && has_amx_bf16()
            && linux_grants_tiles()
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
fn has_amx_bf16() -> bool {
    // Leaf 0 gives the highest leaf.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`), without which a tile instruction faults. Linux grants it to
/// the whole process, from 5.16 on.
fn linux_grants_tiles() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: the system call reads two integers and changes only the process's
    // permissions; `syscall` clobbers rcx and r11, as declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

/// Sixteen f32 values as three bf16 values each, whose sum is the value to 24
/// significant bits; each part as f32 bits with a zero low half (the bf16 is the
/// high half). Each part is the nearest bf16 to what the ones before leave, rounding
/// ties to even, and each remainder is exact in f32 (it has at most 16, then 8,
/// significant bits). Infinities are their high part, and NaN a NaN high part.
///
/// # Safety
/// The processor has AVX-512F (every one with AMX does).
#[target_feature(enable = "avx512f")]
unsafe fn split16(x: __m512) -> [__m512i; PARTS] {
    let high = bf16_bits16(x);
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let finite = _mm512_cmpneq_epi32_mask(_mm512_and_si512(high, exponent), exponent);
    let rest = _mm512_maskz_sub_ps(finite, x, _mm512_castsi512_ps(high));
    let mid = bf16_bits16(rest);
    let low = bf16_bits16(_mm512_sub_ps(rest, _mm512_castsi512_ps(mid)));
    [high, mid, low]
}

/// The nearest f32 with 8 significant bits (bf16's) to each of 16 values, rounding
/// ties to even, as f32 bits whose low half is zero. Infinities stay, NaN stays NaN,
/// and finite values that would round past bf16's largest are truncated instead (an
/// infinite high part would leave no finite remainder).
///
/// # Safety
/// As `split16`.
#[target_feature(enable = "avx512f")]
unsafe fn bf16_bits16(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let half_up = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd);
    let rounded = _mm512_and_si512(_mm512_add_epi32(bits, half_up), high_half);
    let overflows = _mm512_cmpeq_epi32_mask(_mm512_and_si512(rounded, exponent), exponent);
    let kept = _mm512_mask_blend_epi32(overflows, rounded, _mm512_and_si512(bits, high_half));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_mask_blend_epi32(nan, kept, _mm512_set1_epi32(0x7fc0_0000))
}

/// Up to 16 values, zeros past them.
///
/// # Safety
/// As `split16`.
#[target_feature(enable = "avx512f")]
unsafe fn load16(values: &[f32]) -> __m512 {
    debug_assert!(values.len() <= 16);
    let valid = ((1u32 << values.len()) - 1) as __mmask16;
    // SAFETY: the mask reads only `values`.
    unsafe { _mm512_maskz_loadu_ps(valid, values.as_ptr()) }
}

/// A weight's bf16 parts, laid out for the tiles' right operand: per tile of 16
/// rows, per chunk of 32 columns, per part, a tile whose row `q` holds columns `2q`
/// and `2q + 1` of the chunk for each of the 16 rows, interleaved (the pairs that
/// `tdpbf16ps` multiplies).
pub(crate) struct TileWeight {
    rows: usize,
    cols: usize,
    chunks: usize,
    /// bf16 values (two per f32 of the storage), 64-byte aligned.
    parts: LineAligned,
}

impl TileWeight {
    /// The f32 values a `rows` × `cols` weight's parts take.
    pub(crate) fn stored_len(rows: usize, cols: usize) -> usize {
        LineAligned::storage_len(Self::parts_len(rows, cols) / 2)
    }

    fn parts_len(rows: usize, cols: usize) -> usize {
        Self::row_tiles(rows) * cols.div_ceil(CHUNK) * PARTS * TILE
    }

    /// Tiles of `rows` rows, rounded up to pairs (the kernel's block is two).
    fn row_tiles(rows: usize) -> usize {
        rows.div_ceil(BLOCK) * 2
    }

    /// The parts of `matrix` (f32 panels, packed for AVX-512) in `storage` (another
    /// weight's, from `into_storage`, or empty); `None` where the tiles do not run
    /// (see `available`), so that a `TileWeight`'s products can run.
    pub(crate) fn from_packed(storage: Vec<f32>, matrix: &PackedMatrix) -> Option<TileWeight> {
        if !available() {
            return None;
        }
        let (rows, cols) = (matrix.rows, matrix.cols);
        let chunks = cols.div_ceil(CHUNK);
        let row_tiles = Self::row_tiles(rows);
        let mut weight = TileWeight {
            rows,
            cols,
            chunks,
            parts: LineAligned::new(storage, Self::parts_len(rows, cols) / 2),
        };
        // Each pair of columns as words: column k's part in the low half, k + 1's
        // in the high half (little-endian: the pair in order).
        let words = weight.words_mut();
        for tile in 0..row_tiles {
            let top = tile * TILE_ROWS;
            for chunk in 0..chunks {
                let tiles = &mut words[(tile * chunks + chunk) * PARTS * TILE / 2..];
                for pair in 0..CHUNK / 2 {
                    let k = chunk * CHUNK + 2 * pair;
                    // SAFETY: `available` found AMX, so AVX-512F; each store writes a
                    // row of 16 words within `tiles`, checked by the slicing.
                    unsafe {
                        let even = split16(load16(matrix.tile_column(top, k)));
                        let odd = split16(load16(matrix.tile_column(top, k + 1)));
                        for part in 0..PARTS {
                            let row = &mut tiles[part * TILE / 2 + pair * TILE_ROWS..][..TILE_ROWS];
                            let word =
                                _mm512_or_si512(_mm512_srli_epi32::<16>(even[part]), odd[part]);
                            _mm512_storeu_si512(row.as_mut_ptr().cast(), word);
                        }
                    }
                }
            }
        }
        Some(weight)
    }

    /// The weight's storage, for another to reuse.
    pub(crate) fn into_storage(self) -> Vec<f32> {
        self.parts.into_storage()
    }

    fn parts(&self) -> &[u16] {
        // SAFETY: the storage's f32 values are two bf16 each, and u16's alignment
        // divides f32's.
        unsafe { std::slice::from_raw_parts(self.parts.as_ptr().cast(), self.parts.len() * 2) }
    }

    /// The parts as 32-bit words, two bf16 each.
    fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: the storage's f32 values are as many words, aligned alike; the
        // borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.parts.as_mut_ptr().cast(), self.parts.len()) }
    }

    /// `C = W · B` for `n` columns, as `PackedMatrix::multiply` (whose arguments and
    /// panics it has), on the tiles.
    pub(crate) fn multiply(
        &self,
        b: &[f32],
        (b_offset, ldb): (usize, usize),
        c: &mut [f32],
        (c_offset, ldc): (usize, usize),
        n: usize,
        start: Start<'_>,
    ) {
        let b_at = Operand::columns(b_offset, ldb);
        check_product_bounds(self.cols, b, b_at, c, (c_offset, ldc), n, self.rows);
        check_bias(start, self.rows);
        if n == 0 || self.rows == 0 {
            return;
        }
        let _tiles = TileState::configure();
        let mut columns = ColumnParts::new(self.chunks);
        let row_tiles = Self::row_tiles(self.rows);
        for first in (0..n).step_by(COLUMN_BLOCK) {
            let width = COLUMN_BLOCK.min(n - first);
            columns.split(&b[b_offset + first * ldb..], ldb, width, self.cols);
            let c_first = c_offset + first * ldc;
            for depth in (0..self.chunks).step_by(DEPTH_BLOCK) {
                let start = if depth == 0 { start } else { Start::C };
                let chunks = DEPTH_BLOCK.min(self.chunks - depth);
                for row_block in (0..row_tiles).step_by(ROW_BLOCK) {
                    let row_end = (row_block + ROW_BLOCK).min(row_tiles);
                    for pair in (0..width).step_by(BLOCK) {
                        for tile in (row_block..row_end).step_by(2) {
                            let at = Corner {
                                column: pair,
                                columns: BLOCK.min(width - pair),
                                row: tile * TILE_ROWS,
                                rows: BLOCK.min(self.rows - tile * TILE_ROWS),
                            };
                            let operands = Operands {
                                left: columns.at(pair / TILE_ROWS, depth),
                                left_next: columns.tile_stride(),
                                right: self.at(tile, depth),
                                right_next: self.tile_stride(),
                                chunks,
                            };
                            block(&operands, c, (c_first, ldc), at, start);
                        }
                    }
                }
            }
        }
        columns.give_back();
    }

    /// Row tile `tile`'s parts from chunk `chunk` on.
    fn at(&self, tile: usize, chunk: usize) -> *const u16 {
        self.parts()[(tile * self.chunks + chunk) * PARTS * TILE..].as_ptr()
    }

    /// Bytes from a row tile's parts to the next's.
    fn tile_stride(&self) -> usize {
        self.chunks * PARTS * TILE * size_of::<u16>()
    }
}

/// One 32 × 32 block of C (the left operand's columns `at.column..`, the right
/// operand's rows `at.row..`, from C's corner `c_first`), from `start`: straight into
/// C where the block lies wholly within it, else through a copy that keeps the
/// kernel's stores off C's neighbours. The caller has configured the tiles
/// (`TileState`).
fn block(
    operands: &Operands,
    c: &mut [f32],
    (c_first, ldc): (usize, usize),
    at: Corner,
    start: Start<'_>,
) {
    let corner = c_first + at.column * ldc + at.row;
    if at.columns == BLOCK && at.rows == BLOCK {
        let into = c[corner..][..(BLOCK - 1) * ldc + BLOCK].as_mut_ptr();
        let from = match start {
            Start::Zero => Initial::Zero,
            Start::C => Initial::Values(into.cast_const(), ldc),
            Start::Bias(bias) => Initial::Values(bias[at.row..][..BLOCK].as_ptr(), 0),
        };
        // SAFETY: the operands hold `chunks` chunks of two tiles each (their
        // storage is padded to whole pairs of tiles), `into` holds the block's
        // 32 columns of 32 values `ldc` apart, and so does `from`'s source (C's
        // block, or the bias's 32 values read for every column); the caller
        // configured the tiles.
        unsafe { kernel(operands, from, into, ldc) };
        return;
    }
    let mut copy = [0.0f32; BLOCK * BLOCK];
    for j in 0..at.columns {
        let column = &mut copy[j * BLOCK..][..at.rows];
        match start {
            Start::Zero => {}
            Start::C => column.copy_from_slice(&c[corner + j * ldc..][..at.rows]),
            Start::Bias(bias) => column.copy_from_slice(&bias[at.row..][..at.rows]),
        }
    }
    let from = match start {
        Start::Zero => Initial::Zero,
        Start::C | Start::Bias(_) => Initial::Values(copy.as_ptr(), BLOCK),
    };
    // SAFETY: as above, with the copy as C (32 columns of 32).
    unsafe { kernel(operands, from, copy.as_mut_ptr(), BLOCK) };
    for j in 0..at.columns {
        c[corner + j * ldc..][..at.rows].copy_from_slice(&copy[j * BLOCK..][..at.rows]);
    }
}

/// Where a 32 × 32 block of C lies and how much of it is C's.
#[derive(Clone, Copy)]
struct Corner {
    column: usize,
    columns: usize,
    row: usize,
    rows: usize,
}

/// The two operands of a kernel call: the first of two tiles of B's columns' parts
/// (the second `left_next` bytes on), the first of two of the weight's
/// (`right_next` on), each from its first chunk on, over `chunks` chunks. (In the
/// weight gradients' products, v's rows take B's columns' place and dz's rows the
/// weight's: `gradients`.)
struct Operands {
    left: *const u16,
    left_next: usize,
    right: *const u16,
    right_next: usize,
    chunks: usize,
}

/// What C's tiles start from: zero, or f32 values (C's own, a copy, or a bias read
/// for every column with a stride of 0), their columns `ld` values apart.
#[derive(Clone, Copy)]
enum Initial {
    Zero,
    Values(*const f32, usize),
}

/// The tiles' configuration for the thread, released when dropped: every tile 16
/// rows of 64 bytes. The state lives per thread, so every product sets it.
struct TileState;

/// `ldtilecfg`'s 64 bytes: palette 1, then per tile its row bytes and rows.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    row_bytes: [u16; 16],
    rows: [u8; 16],
}

impl TileState {
    fn configure() -> TileState {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            row_bytes: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            config.row_bytes[t] = (CHUNK * size_of::<u16>()) as u16;
            config.rows[t] = TILE_ROWS as u8;
        }
        // SAFETY: `available` found the tiles and Linux granted their state; the
        // configuration is valid for palette 1 (8 tiles of at most 16 × 64 bytes).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        TileState
    }
}

impl Drop for TileState {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured; releasing returns them to their initial
        // state, which the kernel then need not save for this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// B's columns split into parts, laid out for the tiles' left operand: per tile of
/// 16 columns, per chunk, per part, a tile whose row `r` holds the chunk's 32 values
/// of column `r`. Its storage comes from, and goes back to, a buffer per thread
/// (`take_lines`).
struct ColumnParts {
    chunks: usize,
    parts: Vec<Line>,
}

/// 64 bytes on a 64-byte boundary: a tile row.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; CHUNK]);

thread_local! {
    /// The lines of the operand split per product (`ColumnParts`, or dz's block in
    /// `gradients`), kept for the thread's next product: one buffer, since no
    /// product splits both.
    static SPLIT_LINES: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's split buffer, `len` lines at least (a new one if it is taken).
fn take_lines(len: usize) -> Vec<Line> {
    let mut lines = SPLIT_LINES.take();
    if lines.len() < len {
        lines.resize(len, Line([0; CHUNK]));
    }
    lines
}

/// Keeps `lines` as this thread's split buffer.
fn give_lines(lines: Vec<Line>) {
    SPLIT_LINES.set(lines);
}

impl ColumnParts {
    fn new(chunks: usize) -> ColumnParts {
        let parts = take_lines(COLUMN_BLOCK * chunks * PARTS);
        ColumnParts { chunks, parts }
    }

    fn give_back(self) {
        give_lines(self.parts);
    }

    /// Splits `width` columns of `depth` values each (the first at `b[0]`, the next
    /// `ldb` on), padding them with zero columns to a whole pair of tiles.
    fn split(&mut self, b: &[f32], ldb: usize, width: usize, depth: usize) {
        let padded_width = width.next_multiple_of(BLOCK);
        for j in 0..padded_width {
            let (tile, row) = (j / TILE_ROWS, j % TILE_ROWS);
            for chunk in 0..self.chunks {
                let first = (tile * self.chunks + chunk) * PARTS * TILE_ROWS + row;
                let [high, mid, low] = self.parts[first..]
                    .get_disjoint_mut([0, TILE_ROWS, 2 * TILE_ROWS])
                    .expect("three distinct lines");
                let k = chunk * CHUNK;
                let run = if j < width {
                    &b[j * ldb + k..j * ldb + depth.min(k + CHUNK)]
                } else {
                    &[]
                };
                let (first_half, second_half) = run.split_at(run.len().min(CHUNK / 2));
                for (half, values) in [first_half, second_half].into_iter().enumerate() {
                    // SAFETY: `available` found AMX, so AVX-512F; each store writes
                    // half a line.
                    unsafe {
                        let parts = split16(load16(values));
                        for (line, part) in
                            [&mut *high, &mut *mid, &mut *low].into_iter().zip(parts)
                        {
                            let narrowed = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(part));
                            let at = line.0[half * CHUNK / 2..].as_mut_ptr();
                            _mm256_storeu_si256(at.cast(), narrowed);
                        }
                    }
                }
            }
        }
    }

    /// Column tile `tile`'s parts from chunk `chunk` on.
    fn at(&self, tile: usize, chunk: usize) -> *const u16 {
        self.parts[(tile * self.chunks + chunk) * PARTS * TILE_ROWS..]
            .as_ptr()
            .cast()
    }

    /// Bytes from a column tile's parts to the next's.
    fn tile_stride(&self) -> usize {
        self.chunks * PARTS * TILE * size_of::<u16>()
    }
}

/// C's 32 × 32 block at `c` (columns `ldc` values apart) from `from`, plus the
/// products of `operands`' chunks: for each chunk, the six pairs of parts (see the
/// module's doc), each multiplying two tiles of B's columns by two of the weight's
/// rows into C's four tiles (tmm0-3: columns 0-15 by rows 0-15, columns 0-15 by rows
/// 16-31, then columns 16-31 by each).
///
/// The tile operands come from memory at every use: eight tile registers hold C's
/// four tiles and one tile of each operand pair at a time.
///
/// # Safety
/// The tiles are configured (`TileState`); `operands` hold `chunks` chunks of parts
/// (three tiles each) from each pointer and from each pointer plus its `next`
/// bytes; C's 32 columns of 32 values from `c`, `ldc` apart, are writable, and
/// `from`'s are readable.
#[inline(never)]
unsafe fn kernel(operands: &Operands, from: Initial, c: *mut f32, ldc: usize) {
    let c_stride = ldc * size_of::<f32>();
    let row_stride = CHUNK * size_of::<u16>();
    // SAFETY (all blocks): per the function's contract.
    unsafe {
        match from {
            Initial::Zero => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            ),
            Initial::Values(values, ld) => {
                let stride = ld * size_of::<f32>();
                asm!(
                    "tileloadd tmm0, [{c} + {s}*1]",
                    "tileloadd tmm1, [{c} + {s}*1 + 64]",
                    "tileloadd tmm2, [{c1} + {s}*1]",
                    "tileloadd tmm3, [{c1} + {s}*1 + 64]",
                    c = in(reg) values,
                    c1 = in(reg) values.add(TILE_ROWS * ld),
                    s = in(reg) stride,
                    options(nostack, readonly)
                )
            }
        }
        chunk_products(operands, row_stride);
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c1} + {s}*1], tmm2",
            "tilestored [{c1} + {s}*1 + 64], tmm3",
            c = in(reg) c,
            c1 = in(reg) c.add(TILE_ROWS * ldc),
            s = in(reg) c_stride,
            options(nostack)
        );
    }
}

/// The loop over chunks of `kernel`, with C in tmm0-3.
///
/// # Safety
/// As `kernel`.
#[inline(always)]
unsafe fn chunk_products(operands: &Operands, row_stride: usize) {
    // The six pairs of parts, written out: a tile's part is at `part * 1024` bytes.
    macro_rules! pairs {
        ($(($l:literal, $r:literal)),*) => {
            concat!($(
                "tileloadd tmm4, [{a0} + {s}*1 + ", $l, "*1024]\n",
                "tileloadd tmm6, [{b0} + {s}*1 + ", $r, "*1024]\n",
                "tdpbf16ps tmm0, tmm4, tmm6\n",
                "tileloadd tmm7, [{b1} + {s}*1 + ", $r, "*1024]\n",
                "tdpbf16ps tmm1, tmm4, tmm7\n",
                "tileloadd tmm5, [{a1} + {s}*1 + ", $l, "*1024]\n",
                "tdpbf16ps tmm2, tmm5, tmm6\n",
                "tdpbf16ps tmm3, tmm5, tmm7\n",
            )*)
        };
    }
    let chunk_bytes = PARTS * TILE * size_of::<u16>();
    let right1 = operands.right.byte_add(operands.right_next);
    // SAFETY: per the caller's contract: every address read lies in the operands'
    // `chunks` chunks.
    unsafe {
        asm!(
            "2:",
            pairs!((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)),
            "add {a0}, {step}",
            "add {a1}, {step}",
            "add {b0}, {step}",
            "add {b1}, {step}",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) operands.left => _,
            a1 = inout(reg) operands.left.byte_add(operands.left_next) => _,
            b0 = inout(reg) operands.right => _,
            b1 = inout(reg) right1 => _,
            n = inout(reg) operands.chunks => _,
            s = in(reg) row_stride,
            step = in(reg) chunk_bytes,
            options(nostack, readonly)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bf16_bits16` for one value: the definition it follows.
    fn bf16_bits(x: f32) -> u32 {
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
        let kept = if rounded & 0x7f80_0000 == 0x7f80_0000 {
            bits & 0xffff_0000
        } else {
            rounded
        };
        if x.is_nan() {
            0x7fc0_0000
        } else {
            kept
        }
    }

    /// `split16` for one value: the definition it follows.
    fn split(x: f32) -> [u32; PARTS] {
        let high = bf16_bits(x);
        let high_f = f32::from_bits(high);
        let rest = if high_f.is_finite() { x - high_f } else { 0.0 };
        let mid = bf16_bits(rest);
        let low = bf16_bits(rest - f32::from_bits(mid));
        [high, mid, low]
    }

    /// `split16` of `values`, value by value; `None` without AMX (and so perhaps
    /// without AVX-512F).
    fn split_each(values: &[f32; 16]) -> Option<[[u32; PARTS]; 16]> {
        if !available() {
            eprintln!("no AMX here: the splits are not tested");
            return None;
        }
        let mut parts = [[0u32; 16]; PARTS];
        // SAFETY: AVX-512F is there; each store writes one of `parts`' rows.
        unsafe {
            for (row, part) in parts.iter_mut().zip(split16(load16(values))) {
                _mm512_storeu_si512(row.as_mut_ptr().cast(), part);
            }
        }
        Some(std::array::from_fn(|i| parts.map(|part| part[i])))
    }

    /// Random values with random signs and mantissas, exponents from 2⁻⁴⁰ to 2⁴⁰.
    fn random_values(state: &mut u32) -> [f32; 16] {
        std::array::from_fn(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 17;
            *state ^= *state << 5;
            let exponent = (127 - 40 + *state % 81) << 23;
            f32::from_bits((*state & 0x807f_ffff) | exponent)
        })
    }

    #[test]
    fn parts_are_bf16_and_sum_to_the_value() {
        let mut state = 0x2545_f491u32;
        for _ in 0..10_000 {
            let values = random_values(&mut state);
            let Some(parts) = split_each(&values) else {
                return;
            };
            for (&x, parts) in values.iter().zip(&parts) {
                assert_eq!(*parts, split(x), "{x}: the vector split differs");
                assert!(
                    parts.iter().all(|p| p & 0xffff == 0),
                    "{x}: parts past bf16"
                );
                let sum: f64 = parts.iter().map(|&p| f64::from(f32::from_bits(p))).sum();
                let error = (sum - f64::from(x)).abs();
                assert!(
                    error <= f64::from(x.abs()) * 2f64.powi(-26),
                    "{x}: parts sum to {sum}"
                );
            }
        }
    }

    #[test]
    fn parts_keep_infinities_and_nan() {
        let mut values = [1.0f32; 16];
        values[..4].copy_from_slice(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX]);
        let Some(parts) = split_each(&values) else {
            return;
        };
        assert_eq!(parts[0], [f32::INFINITY.to_bits(), 0, 0]);
        assert_eq!(parts[1], [f32::NEG_INFINITY.to_bits(), 0, 0]);
        assert!(f32::from_bits(parts[2][0]).is_nan() && parts[2][1..] == [0, 0]);
        // Rounding f32's largest value to bf16 would overflow: its high part is
        // truncated, and the parts still sum to it.
        let max: Vec<f64> = parts[3]
            .iter()
            .map(|&p| f64::from(f32::from_bits(p)))
            .collect();
        assert!(max.iter().all(|p| p.is_finite()), "{max:?}");
        let sum: f64 = max.iter().sum();
        assert!((sum - f64::from(f32::MAX)).abs() <= 2f64.powi(-26) * f64::from(f32::MAX));
    }
}
