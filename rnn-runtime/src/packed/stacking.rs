//! Packings made without a column-major copy of the matrix: a stacked weight from its
//! parameters' blocks (`Tape::load_stack`), and the transpose of a packing (backward's
//! products with the transposed weight, which has no copy to transpose once the
//! weight is packed from its blocks).

use super::{transpose_into_panel, Isa, PackedMatrix};
use crate::copies::copy_run;
use crate::tape::StackBlock;

impl PackedMatrix {
    /// Packs the stacked weight made of `blocks` (`rows` × `cols`: each block's rows
    /// in turn, from row 0, see `StackBlock`) into `storage`, as `pack_into` packs the
    /// stack copied column-major, without the copy: a pass of the notebooks' LSTM
    /// copied its two stacks (8 blocks of 35 × 35) column by column into the tape
    /// before packing them, a quarter of a one-step pass's time. `None` where no
    /// kernel runs.
    ///
    /// # Panics
    /// When the blocks do not follow one another from row 0 to `rows`, or a block's
    /// values are too few for its columns (bugs of the caller's).
    pub(crate) fn pack_blocks_into(
        storage: Vec<f32>,
        blocks: &[StackBlock<'_, f32>],
        rows: usize,
        cols: usize,
    ) -> Option<PackedMatrix> {
        let pack = |isa| PackedMatrix::pack_blocks_for_into(isa, storage, blocks, rows, cols);
        Isa::detect().map(pack)
    }

    /// `pack_blocks_into` for the kernels of `isa`, which the processor must have.
    pub(super) fn pack_blocks_for_into(
        isa: Isa,
        storage: Vec<f32>,
        blocks: &[StackBlock<'_, f32>],
        rows: usize,
        cols: usize,
    ) -> PackedMatrix {
        let mut next = 0;
        for block in blocks {
            assert!(
                block.row == next && block.values.len() >= (block.col_start + cols) * block.rows,
                "stacking: a block of {} rows at row {} after {next} rows, with {} values for \
                 {cols} columns from {}",
                block.rows,
                block.row,
                block.values.len(),
                block.col_start
            );
            next += block.rows;
        }
        assert_eq!(
            next, rows,
            "stacking: blocks of {next} rows for a stack of {rows}"
        );
        PackedMatrix::fill_panels(isa, storage, rows, cols, |first, height, panel, stride| {
            if height < stride {
                panel.fill(0.0);
            }
            // The blocks that hold some of the panel's rows, each a run per column.
            for block in blocks {
                let (top, bottom) = (
                    block.row.max(first),
                    (block.row + block.rows).min(first + height),
                );
                if top >= bottom {
                    continue;
                }
                for (k, column) in panel.chunks_exact_mut(stride).enumerate() {
                    let at = (block.col_start + k) * block.rows + top - block.row;
                    copy_run(
                        &mut column[top - first..bottom - first],
                        &block.values[at..at + bottom - top],
                    );
                }
            }
        })
    }

    /// P's transpose packed into `storage`, from P's panels: each is the column-major
    /// matrix of its rows (its stride apart), transposed into every panel of the
    /// transpose as `pack_into` transposes a column-major matrix, so the two packings
    /// are equal value for value (`transposing_the_packing_packs_the_transpose`). A
    /// weight packed from its blocks (`pack_blocks_into`) has no column-major copy to
    /// transpose.
    pub(crate) fn transposed_into(&self, storage: Vec<f32>) -> PackedMatrix {
        let (isa, rows, cols) = (self.isa, self.cols, self.rows);
        PackedMatrix::fill_panels(isa, storage, rows, cols, |first, height, panel, stride| {
            if height < stride {
                panel.fill(0.0);
            }
            for (top, source_height, source_stride, source) in self.panels_with_rows() {
                transpose_into_panel(
                    source,
                    (source_stride, 1),
                    first,
                    height,
                    &mut panel[top * stride..(top + source_height) * stride],
                    stride,
                );
            }
        })
    }
}
