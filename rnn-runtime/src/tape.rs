//! The tape: every buffer one sequence batch needs, forward and backward, allocated once
//! per forward pass so the time loop allocates nothing. Buffers are column-major
//! matrices; the generated code addresses them by number.

use crate::cell::{BufferCols, BufferSpec};
use crate::scalar::{gemm, Strided};
use crate::Scalar;

/// (buffer, first row, first column).
pub type At = (usize, usize, usize);

/// The buffers of one forward and backward pass.
pub struct Tape<T> {
    bufs: Vec<Vec<T>>,
    rows: Vec<usize>,
    cols: Vec<usize>,
    columns: usize,
    /// Transposed copies of stacked weights, made on first use: the backward step's
    /// product with a transpose then reads contiguous columns.
    transposed: Vec<Option<Vec<T>>>,
}

impl<T: Scalar> Tape<T> {
    /// Buffers for `columns` (step, sequence) columns and `batch` sequences.
    pub fn new(specs: &[BufferSpec], columns: usize, batch: usize) -> Tape<T> {
        let cols: Vec<usize> = specs
            .iter()
            .map(|s| match s.cols {
                BufferCols::Steps => columns,
                BufferCols::Batch => batch,
                BufferCols::Fixed(cols) => cols,
            })
            .collect();
        let rows: Vec<usize> = specs.iter().map(|s| s.rows).collect();
        let bufs = rows
            .iter()
            .zip(&cols)
            .map(|(r, c)| vec![T::zero(); r * c])
            .collect();
        let transposed = vec![None; specs.len()];
        Tape {
            bufs,
            rows,
            cols,
            columns,
            transposed,
        }
    }

    /// The number of (step, sequence) columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// A buffer's leading dimension.
    pub fn rows(&self, buf: usize) -> usize {
        self.rows[buf]
    }

    /// A buffer's values, column-major.
    pub fn buffer(&self, buf: usize) -> &[T] {
        &self.bufs[buf]
    }

    /// A buffer's values, to be changed.
    pub fn buffer_mut(&mut self, buf: usize) -> &mut [T] {
        &mut self.bufs[buf]
    }

    /// Several distinct buffers at once, for a fused loop.
    pub fn buffers_mut<const N: usize>(&mut self, ids: [usize; N]) -> [&mut [T]; N] {
        self.bufs
            .get_disjoint_mut(ids)
            .expect("generated code names distinct buffers")
            .map(|buf| buf.as_mut_slice())
    }

    fn view(&self, (buf, row, col): At, rows: usize, cols: usize) -> Strided {
        Strided::column_major(self.rows[buf], row, col, rows, cols)
    }

    /// `dst = S * src` (or `Sᵀ * src`) over `n` columns, S a stacked weight buffer.
    pub fn gemm(&mut self, stack: usize, transpose: bool, src: At, dst: At, n: usize) {
        let (s_rows, s_cols) = (self.rows[stack], self.cols[stack]);
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
            gemm(t, t_view, b, src_view, T::zero(), c, dst_view);
            return;
        }
        let s_view = Strided::column_major(s_rows, 0, 0, s_rows, s_cols);
        let (s_view, inner) = if transpose {
            (s_view.t(), s_rows)
        } else {
            (s_view, s_cols)
        };
        let src_view = self.view(src, inner, n);
        let dst_view = self.view(dst, s_view.rows, n);
        let [s, b, c] = self
            .bufs
            .get_disjoint_mut([stack, src.0, dst.0])
            .expect("distinct GEMM operands");
        gemm(s, s_view, b, src_view, T::zero(), c, dst_view);
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
                b[to..to + rows].copy_from_slice(&a[from..from + rows]);
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
            self.bufs[stack][to..to + param_rows].copy_from_slice(&param[from..from + param_rows]);
        }
    }

    /// `grad[:, col_start..col_start + cols] += dz · vᵀ` over all columns of the tape:
    /// a weight's gradient from every step in one GEMM.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_grad(
        &self,
        grad: &mut [T],
        grad_rows: usize,
        col_start: usize,
        dz: (usize, usize),
        rows: usize,
        v: (usize, usize),
        cols: usize,
    ) {
        let dz_view = self.view((dz.0, dz.1, 0), rows, self.columns);
        let v_view = self.view((v.0, v.1, 0), cols, self.columns).t();
        let grad_view = Strided::column_major(grad_rows, 0, col_start, rows, cols);
        gemm(
            &self.bufs[dz.0],
            dz_view,
            &self.bufs[v.0],
            v_view,
            T::one(),
            grad,
            grad_view,
        );
    }
}
