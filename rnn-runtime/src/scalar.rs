//! The element type: `f32` (the default) or `f64` (for gradient checks).

use nalgebra::RealField;

/// A floating-point element: what nalgebra needs, plus conversions and a GEMM.
pub trait Scalar: RealField + Copy + Send + Sync + Default + 'static {
    /// Converts a literal of the equations or a hyper-parameter.
    fn of(value: f64) -> Self;

    /// The value as an f64.
    fn as_f64(self) -> f64;

    /// `C = alpha * A * B + beta * C` over raw strided memory (matrixmultiply's kernels).
    ///
    /// # Safety
    /// Every element addressed through the pointers, the sizes and the strides must be
    /// in bounds of its allocation, and `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        a_strides: (isize, isize),
        b: *const Self,
        b_strides: (isize, isize),
        beta: Self,
        c: *mut Self,
        c_strides: (isize, isize),
    );
}

macro_rules! impl_scalar {
    ($t:ty, $gemm:path) => {
        impl Scalar for $t {
            #[inline(always)]
            fn of(value: f64) -> Self {
                value as $t
            }

            #[inline(always)]
            fn as_f64(self) -> f64 {
                self as f64
            }

            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                (rsa, csa): (isize, isize),
                b: *const Self,
                (rsb, csb): (isize, isize),
                beta: Self,
                c: *mut Self,
                (rsc, csc): (isize, isize),
            ) {
                // SAFETY: forwarded; the caller guarantees the extents.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_scalar!(f32, matrixmultiply::sgemm);
impl_scalar!(f64, matrixmultiply::dgemm);

/// A strided view of a matrix inside a slice: element (i, j) is at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Strided {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided {
    /// Columns `col0..col0 + cols` and rows `row0..row0 + rows` of a column-major buffer
    /// with leading dimension `ld`.
    pub fn column_major(ld: usize, row0: usize, col0: usize, rows: usize, cols: usize) -> Strided {
        Strided {
            offset: col0 * ld + row0,
            rows,
            cols,
            row_stride: 1,
            col_stride: ld,
        }
    }

    /// The same memory read as the transpose.
    pub fn t(self) -> Strided {
        Strided {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }

    fn strides(&self) -> (isize, isize) {
        (self.row_stride as isize, self.col_stride as isize)
    }
}

/// `C = A * B + beta * C` on strided views, with their extents checked.
pub fn gemm<T: Scalar>(
    a: &[T],
    av: Strided,
    b: &[T],
    bv: Strided,
    beta: T,
    c: &mut [T],
    cv: Strided,
) {
    assert!(
        av.rows == cv.rows && bv.cols == cv.cols && av.cols == bv.rows,
        "gemm: mismatched views {av:?} {bv:?} {cv:?}"
    );
    if cv.rows == 0 || cv.cols == 0 {
        return;
    }
    if av.cols == 0 {
        // An empty inner dimension: the product is zero.
        for j in 0..cv.cols {
            for i in 0..cv.rows {
                let at = cv.offset + i * cv.row_stride + j * cv.col_stride;
                c[at] = if beta == T::zero() {
                    T::zero()
                } else {
                    beta * c[at]
                };
            }
        }
        return;
    }
    assert!(
        av.last_index() < a.len() && bv.last_index() < b.len() && cv.last_index() < c.len(),
        "gemm: view out of bounds"
    );
    // SAFETY: every view's last element is in bounds (checked above), and `c` is a
    // unique borrow, so it aliases neither `a` nor `b`.
    unsafe {
        T::gemm_raw(
            cv.rows,
            av.cols,
            cv.cols,
            T::one(),
            a.as_ptr().add(av.offset),
            av.strides(),
            b.as_ptr().add(bv.offset),
            bv.strides(),
            beta,
            c.as_mut_ptr().add(cv.offset),
            cv.strides(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_nalgebra_with_transposes_and_offsets() {
        let a = nalgebra::DMatrix::<f64>::from_fn(5, 3, |i, j| (i * 3 + j) as f64 * 0.5 - 2.0);
        let b = nalgebra::DMatrix::<f64>::from_fn(5, 4, |i, j| (i + 2 * j) as f64 * 0.25);
        let expected = a.transpose() * &b;
        let mut c = vec![7.0; 3 * 4 + 2];
        gemm(
            a.as_slice(),
            Strided::column_major(5, 0, 0, 5, 3).t(),
            b.as_slice(),
            Strided::column_major(5, 0, 0, 5, 4),
            0.0,
            &mut c,
            Strided::column_major(3, 0, 0, 3, 4).t().t(),
        );
        assert_eq!(&c[..12], expected.as_slice());
    }
}
