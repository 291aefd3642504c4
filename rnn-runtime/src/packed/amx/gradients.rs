//! The weight gradients' product on the tiles: `C += A · Vᵀ`, dz's rows times the
//! transpose of v over every column of the tape (thousands deep: the large LSTM's
//! 4096 × 3200 by 3200 × 1024 a part).
//!
//! A product that deep needs its own blocking. The weight's products keep a block
//! of the weight's parts and one of B's in L2, each a whole depth block (1024
//! values); here both operands are 3200 deep, and blocks of that depth outgrow L2,
//! so that the tiles wait on L3. So:
//! - v's parts are split once per product (it is the smaller operand), in the
//!   left operand's layout, which asks for a transposition (`TransposedParts`);
//! - dz's parts are split a block at a time (`ROWS` rows by `SLICE` chunks) and used
//!   straight away against every column of a column block, from L2, never written
//!   whole: splitting all of dz first took 15 ms a part at the large size, reading
//!   and writing memory (session 26, `benches/README.md`);
//! - C's block (`ROWS` × `COLUMNS`) is added to over the whole depth before the
//!   next.

use std::arch::x86_64::*;

use super::{
    available, block, give_lines, load16, split16, take_lines, Corner, Line, Operands, TileState,
    BLOCK, CHUNK, PARTS, TILE, TILE_ROWS,
};
use crate::packed::{GradientRows, LineAligned, Start};

/// dz's rows split at a time (a multiple of `BLOCK`): with `SLICE` chunks, 768 KiB of
/// parts, which stay in L2 while every column of C's block meets them.
const ROWS: usize = 512;
/// C's columns per block (a multiple of `BLOCK`): at the benchmark's sizes, all of
/// them, so that dz is split once.
const COLUMNS: usize = 1024;
/// The depth's chunks per block of dz's parts: the kernel loads and stores C's block
/// every `SLICE` chunks.
///
/// In a scratch timing of the GRU's 3072 × 3200 by 3200 × 1024 a part (both cores,
/// median of seven), 512 rows by 1024 columns by 8 chunks took 82-87 ms; 4 chunks
/// 96-101, 16 chunks 88-91; 256 rows 95-100, 768 rows 82-88; 512 columns 91-97,
/// 2048 columns 83-86. The f32 kernel took 164 ms, 26 of them packing dz.
const SLICE: usize = 8;

impl GradientRows<'_> {
    /// Panics unless `depth` columns of the rows lie within the values.
    fn check(&self, depth: usize, what: &str) {
        if self.rows == 0 || depth == 0 {
            return;
        }
        assert!(
            self.ld >= self.rows
                && self.offset + (depth - 1) * self.ld + self.rows <= self.values.len(),
            "tile gradient product: {what}'s {} rows of {depth} columns, {} apart from {}, past \
             its {} values",
            self.rows,
            self.ld,
            self.offset,
            self.values.len()
        );
    }

    /// Up to 16 values of column `k` from row `row` on, none past the rows or the
    /// depth.
    fn run(&self, row: usize, k: usize, depth: usize) -> &[f32] {
        if k >= depth || row >= self.rows {
            return &[];
        }
        &self.values[self.offset + k * self.ld + row..][..TILE_ROWS.min(self.rows - row)]
    }
}

/// The transpose of v split into parts, laid out as the tiles' left operand (as
/// `ColumnParts`): per tile of 16 of v's rows, per chunk of the depth, per part, a
/// tile whose row `r` holds the chunk's 32 values of v's row `r`.
pub(crate) struct TransposedParts {
    rows: usize,
    depth: usize,
    chunks: usize,
    /// bf16 values, two per f32 of the storage, 64-byte aligned.
    parts: LineAligned,
}

impl TransposedParts {
    /// The f32 values the parts of `rows` rows `depth` deep take.
    pub(crate) fn stored_len(rows: usize, depth: usize) -> usize {
        LineAligned::storage_len(Self::parts_len(rows, depth) / 2)
    }

    fn parts_len(rows: usize, depth: usize) -> usize {
        rows.div_ceil(BLOCK) * 2 * depth.div_ceil(CHUNK) * PARTS * TILE
    }

    /// v's `depth` columns split, in `storage` (from `into_storage`, or any); `None`
    /// where the tiles do not run (see `available`).
    pub(crate) fn split(
        storage: Vec<f32>,
        v: GradientRows<'_>,
        depth: usize,
    ) -> Option<TransposedParts> {
        if !available() {
            return None;
        }
        v.check(depth, "v");
        let chunks = depth.div_ceil(CHUNK);
        let mut split = TransposedParts {
            rows: v.rows,
            depth,
            chunks,
            parts: LineAligned::new(storage, Self::parts_len(v.rows, depth) / 2),
        };
        let parts = split.lines_mut();
        // Chunk by chunk, all of v's rows in turn: a chunk's 32 columns are read
        // down their rows. (Tile by tile, each column's 64 bytes were read in a
        // sweep over all of v, and the split of the GRU's 1024 × 3200 a part took 8
        // ms, waiting on memory.)
        for chunk in 0..chunks {
            for tile in 0..v.rows.div_ceil(BLOCK) * 2 {
                let first = (tile * chunks + chunk) * PARTS * TILE_ROWS;
                for half in 0..2 {
                    let k = chunk * CHUNK + half * TILE_ROWS;
                    // SAFETY: `available` found AMX, so AVX-512F; each store writes
                    // half a line.
                    unsafe {
                        let samples =
                            std::array::from_fn(|i| load16(v.run(tile * TILE_ROWS, k + i, depth)));
                        for (row, values) in transpose16(samples).into_iter().enumerate() {
                            for (part, bits) in split16(values).into_iter().enumerate() {
                                let narrowed = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(bits));
                                let line = &mut parts[first + part * TILE_ROWS + row];
                                _mm256_store_si256(
                                    line[half * TILE_ROWS..].as_mut_ptr().cast(),
                                    narrowed,
                                );
                            }
                        }
                    }
                }
            }
        }
        Some(split)
    }

    /// The storage, for another split to reuse.
    pub(crate) fn into_storage(self) -> Vec<f32> {
        self.parts.into_storage()
    }

    /// The parts as tile rows of 32 bf16.
    fn lines_mut(&mut self) -> &mut [[u16; CHUNK]] {
        let lines = self.parts.len() * 2 / CHUNK;
        // SAFETY: the storage's f32 values are two bf16 each, a line's 64 bytes are
        // 16 f32, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.parts.as_mut_ptr().cast(), lines) }
    }

    /// Row tile `tile`'s parts from chunk `chunk` on.
    fn at(&self, tile: usize, chunk: usize) -> *const u16 {
        self.parts[(tile * self.chunks + chunk) * PARTS * TILE / 2..]
            .as_ptr()
            .cast()
    }

    /// Bytes from a row tile's parts to the next's.
    fn tile_stride(&self) -> usize {
        self.chunks * PARTS * TILE * size_of::<u16>()
    }

    /// `C += A · Vᵀ`: A's `a.rows` rows (as deep as this split) times the transpose
    /// of the split v, added to C's columns of `a.rows` values (one column per row
    /// of v), the first at `c_at.0`, each next `c_at.1` on.
    ///
    /// # Panics
    /// Where A's or C's values do not reach as far.
    pub(crate) fn add_product(
        &self,
        a: GradientRows<'_>,
        c: &mut [f32],
        (c_offset, ldc): (usize, usize),
    ) {
        a.check(self.depth, "dz");
        let (m, n) = (a.rows, self.rows);
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            ldc >= m && c_offset + (n - 1) * ldc + m <= c.len(),
            "tile gradient product: C's {n} columns of {m}, {ldc} apart from {c_offset}, past \
             its {} values",
            c.len()
        );
        let _tiles = TileState::configure();
        let mut dz = RowParts::take();
        for first in (0..n).step_by(COLUMNS) {
            let width = COLUMNS.min(n - first);
            for top in (0..m).step_by(ROWS) {
                let height = ROWS.min(m - top);
                let c_first = c_offset + first * ldc + top;
                for slice in (0..self.chunks).step_by(SLICE) {
                    let chunks = SLICE.min(self.chunks - slice);
                    dz.split(a, top, height, slice, chunks, self.depth);
                    for pair in (0..width).step_by(BLOCK) {
                        for row in (0..height).step_by(BLOCK) {
                            let at = Corner {
                                column: pair,
                                columns: BLOCK.min(width - pair),
                                row,
                                rows: BLOCK.min(height - row),
                            };
                            let operands = Operands {
                                left: self.at((first + pair) / TILE_ROWS, slice),
                                left_next: self.tile_stride(),
                                right: dz.at(row / TILE_ROWS, chunks),
                                right_next: dz.tile_stride(chunks),
                                chunks,
                            };
                            block(&operands, c, (c_first, ldc), at, Start::C);
                        }
                    }
                }
            }
        }
        dz.give_back();
    }
}

/// A block of dz's rows split into parts, laid out as the tiles' right operand (as
/// `TileWeight`): per tile of 16 rows, per chunk, per part, a tile whose row `q`
/// holds samples `2q` and `2q + 1` of the chunk for each of the 16 rows, interleaved.
/// Its storage comes from, and goes back to, a buffer per thread (`take_lines`).
struct RowParts {
    lines: Vec<Line>,
}

impl RowParts {
    fn take() -> RowParts {
        RowParts {
            lines: take_lines(ROWS / TILE_ROWS * SLICE * PARTS * TILE_ROWS),
        }
    }

    fn give_back(self) {
        give_lines(self.lines);
    }

    /// Splits A's rows `top..top + height` over chunks `slice..slice + chunks` (a
    /// depth of `depth`), padded with zeros to a whole pair of tiles and whole
    /// chunks.
    fn split(
        &mut self,
        a: GradientRows<'_>,
        top: usize,
        height: usize,
        slice: usize,
        chunks: usize,
        depth: usize,
    ) {
        let tiles = height.div_ceil(BLOCK) * 2;
        let block = GradientRows {
            offset: a.offset + top,
            rows: height,
            ..a
        };
        // Sample pair by sample pair, each read down its rows: two runs of memory
        // at a time.
        for chunk in 0..chunks {
            for pair in 0..CHUNK / 2 {
                let k = (slice + chunk) * CHUNK + 2 * pair;
                for tile in 0..tiles {
                    let first = (tile * chunks + chunk) * PARTS * TILE_ROWS + pair;
                    // SAFETY: `available` found AMX (a `TransposedParts` exists), so
                    // AVX-512F; each store writes one line.
                    unsafe {
                        let even = split16(load16(block.run(tile * TILE_ROWS, k, depth)));
                        let odd = split16(load16(block.run(tile * TILE_ROWS, k + 1, depth)));
                        for part in 0..PARTS {
                            let word =
                                _mm512_or_si512(_mm512_srli_epi32::<16>(even[part]), odd[part]);
                            let line = &mut self.lines[first + part * TILE_ROWS];
                            _mm512_store_si512(line.0.as_mut_ptr().cast(), word);
                        }
                    }
                }
            }
        }
    }

    /// Row tile `tile`'s parts, in a split of `chunks` chunks.
    fn at(&self, tile: usize, chunks: usize) -> *const u16 {
        self.lines[tile * chunks * PARTS * TILE_ROWS..]
            .as_ptr()
            .cast()
    }

    /// Bytes from a row tile's parts to the next's, in a split of `chunks` chunks.
    fn tile_stride(&self, chunks: usize) -> usize {
        chunks * PARTS * TILE * size_of::<u16>()
    }
}

/// The 16 × 16 matrix whose rows are `rows`, transposed: the standard three rounds of
/// shuffles (pairs of values, of pairs, then of 128-bit lanes, twice). v's split
/// loads runs of a column and transposes them here, rather than gathering a row's
/// values across columns (a gather's offsets are 32-bit, and the columns lie 4 KiB
/// apart at the large size).
///
/// # Safety
/// The processor has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(rows: [__m512; 16]) -> [__m512; 16] {
    let (pd, ps) = (_mm512_castps_pd, _mm512_castpd_ps);
    // Per group of four rows a, b, c, d and per 128-bit lane L: column 4L + j of
    // the four rows, in `by_lane[group][j]`'s lane L.
    let by_lane: [[__m512; 4]; 4] = std::array::from_fn(|group| {
        let [a, b, c, d] = std::array::from_fn(|i| rows[4 * group + i]);
        let (ab_low, ab_high) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (cd_low, cd_high) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        [
            ps(_mm512_unpacklo_pd(pd(ab_low), pd(cd_low))),
            ps(_mm512_unpackhi_pd(pd(ab_low), pd(cd_low))),
            ps(_mm512_unpacklo_pd(pd(ab_high), pd(cd_high))),
            ps(_mm512_unpackhi_pd(pd(ab_high), pd(cd_high))),
        ]
    });
    let mut columns = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        // Lanes 0 and 2, then 1 and 3, of groups 0 and 1, and of groups 2 and 3.
        let even01 = _mm512_shuffle_f32x4::<0x88>(by_lane[0][j], by_lane[1][j]);
        let odd01 = _mm512_shuffle_f32x4::<0xdd>(by_lane[0][j], by_lane[1][j]);
        let even23 = _mm512_shuffle_f32x4::<0x88>(by_lane[2][j], by_lane[3][j]);
        let odd23 = _mm512_shuffle_f32x4::<0xdd>(by_lane[2][j], by_lane[3][j]);
        columns[j] = _mm512_shuffle_f32x4::<0x88>(even01, even23);
        columns[4 + j] = _mm512_shuffle_f32x4::<0x88>(odd01, odd23);
        columns[8 + j] = _mm512_shuffle_f32x4::<0xdd>(even01, even23);
        columns[12 + j] = _mm512_shuffle_f32x4::<0xdd>(odd01, odd23);
    }
    columns
}
