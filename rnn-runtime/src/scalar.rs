//! The element type: `f32` (the default) or `f64` (for gradient checks).

use nalgebra::RealField;

/// A floating-point element: what nalgebra needs, plus conversions and a GEMM.
pub trait Scalar: RealField + Copy + Send + Sync + Default + 'static {
    /// Converts a literal of the equations or a hyper-parameter.
    fn of(value: f64) -> Self;

    /// The value as an f64.
    fn as_f64(self) -> f64;

    /// eˣ for the activations: f32 uses a branch-free polynomial that vectorises
    /// (relative error ~1e-7); f64 the exact libm function, for gradient checks.
    fn fast_exp(self) -> Self;

    /// tanh for the activations (see `fast_exp`).
    fn fast_tanh(self) -> Self;

    /// The pool of tape buffers of this type.
    #[doc(hidden)]
    fn buffer_pool() -> &'static std::sync::Mutex<crate::tape::BufferPool<Self>>;

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

/// `a · b + c`, as one fused multiply-add where the build targets FMA (as the
/// workspace's `target-cpu=native` does), and as a multiply and an add elsewhere:
/// without the instruction, `f32::mul_add` is a call to libm that no loop vectorises.
/// Fused, the polynomials below take half the instructions and their chains of
/// dependent operations a third less latency.
#[inline(always)]
fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// eˣ in f32 without branches or libm calls, so that loops over it vectorise: x = n·ln2
/// + r, eʳ by the Cephes polynomial on |r| ≤ ln2/2, 2ⁿ by building the exponent bits.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n · ln2 is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // Beyond these, 2ⁿ leaves the normal range of f32.
    let x = x.clamp(-87.3, 88.0);
    let shifted = mul_add(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add(-n, LN2_LO, mul_add(-n, LN2_HI, x));
    // The Cephes polynomial by Estrin's scheme (in r², from three pairs of terms) rather
    // than Horner's: a chain of four operations after r (r², two multiply-adds and the
    // last one), not seven. A tiny cell's step waits on these chains (its next product
    // needs the state they make): the tiny MGU ran 4-5% faster, with the same error
    // (session 18, `benches/README.md`).
    let r2 = r * r;
    let p01 = mul_add(1.666_666_5e-1, r, 0.5);
    let p23 = mul_add(8.333_452e-3, r, 4.166_579_6e-2);
    let p45 = mul_add(1.987_569_2e-4, r, 1.398_199_9e-3);
    let p = mul_add(mul_add(p45, r2, p23), r2, p01);
    let er = mul_add(p, r2, r + 1.0);
    // 2ⁿ from the bits: `shifted` holds n in its low mantissa bits. Reading n from
    // there, not with `n as i32` (a saturating cast LLVM cannot vectorise), keeps the
    // whole function in vector registers. n + 127 lies in 1..=254 after the clamp.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    er * scale
}

/// tanh in f32 as a rational function of x (Eigen's `ptanh_float`): odd polynomials
/// of degree 13 over 6, relative error ~4e-7, no `exp`, one division. Beyond ±7.9
/// tanh lies within 3e-7 of ±1, and the clamp keeps it there (never past ±1). It took
/// half the time of tanh built from `exp_f32` with a Taylor branch near 0.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    // p by Estrin's scheme, as in `exp_f32`: a chain of four operations after x² (x⁴
    // and three multiply-adds), not six.
    let x4 = x2 * x2;
    let p01 = mul_add(6.372_619_3e-4, x2, 4.893_524_6e-3);
    let p23 = mul_add(5.122_297e-8, x2, 1.485_722_4e-5);
    let p45 = mul_add(2.000_188e-13, x2, -8.604_672e-11);
    let p = mul_add(
        mul_add(mul_add(-2.760_768_5e-16, x4, p45), x4, p23),
        x4,
        p01,
    );
    let mut q = 1.198_258_4e-6_f32;
    q = mul_add(q, x2, 1.185_347_1e-4);
    q = mul_add(q, x2, 2.268_434_6e-3);
    q = mul_add(q, x2, 4.893_525e-3);
    p * x / q
}

macro_rules! impl_scalar {
    ($t:ty, $gemm:path, $exp:expr, $tanh:expr) => {
        impl Scalar for $t {
            #[inline(always)]
            fn fast_exp(self) -> Self {
                $exp(self)
            }

            #[inline(always)]
            fn fast_tanh(self) -> Self {
                $tanh(self)
            }

            #[inline(always)]
            fn of(value: f64) -> Self {
                value as $t
            }

            #[inline(always)]
            fn as_f64(self) -> f64 {
                self as f64
            }

            fn buffer_pool() -> &'static std::sync::Mutex<crate::tape::BufferPool<Self>> {
                static POOL: std::sync::Mutex<crate::tape::BufferPool<$t>> =
                    std::sync::Mutex::new(crate::tape::BufferPool::new());
                &POOL
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

impl_scalar!(f32, matrixmultiply::sgemm, exp_f32, tanh_f32);
impl_scalar!(f64, matrixmultiply::dgemm, f64::exp, f64::tanh);

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
    // A batch of a few sequences (the notebooks' batch of 1) is a few matrix-vector
    // products: packing the matrix for each would cost more than the product.
    if cv.cols <= SMALL_BATCH && cv.row_stride == 1 && bv.row_stride == 1 {
        if av.row_stride == 1 {
            return gemv_columns(a, av, b, bv, beta, c, cv);
        }
        if av.col_stride == 1 {
            return gemv_rows(a, av, b, bv, beta, c, cv);
        }
    }
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

/// Up to this many columns, products go through `gemv_columns`/`gemv_rows`.
const SMALL_BATCH: usize = 4;

/// C = A·B + βC for column-major A and at most `SMALL_BATCH` columns of B: C's columns
/// accumulate A's columns, scaled, in blocks of rows whose sums stay in registers over
/// all of A's columns, every column of B at once, so that A is read once (contiguous
/// loads, vectorised by the compiler). Summed into C's column at every column of A,
/// as it was, the sums were loaded and stored at each: four one-column products of a
/// 140 × 35 weight took 7 µs against 4 for packing the weight and running its kernel
/// (session 22, `benches/README.md`).
fn gemv_columns<T: Scalar>(
    a: &[T],
    av: Strided,
    b: &[T],
    bv: Strided,
    beta: T,
    c: &mut [T],
    cv: Strided,
) {
    // Four columns of B at a time (more than `gemm` sends here), each count of columns
    // its own kernel, called directly. Called through a recursion for more columns, or
    // through a table of function pointers, the kernel for four kept its sums on the
    // stack (`perf annotate`), and four sequences ran 2x slower (session 22).
    for first in (0..cv.cols).step_by(4) {
        let (bv, cv) = (four_from(bv, first), four_from(cv, first));
        let operands = (a, av, b, bv, beta);
        match cv.cols {
            1 => columns_at_once::<T, 1, 128>(operands, c, cv),
            2 => columns_at_once::<T, 2, 128>(operands, c, cv),
            3 => columns_at_once::<T, 3, 64>(operands, c, cv),
            _ => columns_at_once::<T, 4, 64>(operands, c, cv),
        }
    }
}

/// Columns `first..` of a view, at most four of them.
fn four_from(v: Strided, first: usize) -> Strided {
    Strided {
        offset: v.offset + first * v.col_stride,
        cols: (v.cols - first).min(4),
        ..v
    }
}

/// A and B's columns of a product, and β (see `gemv_columns`).
type Operands<'a, T> = (&'a [T], Strided, &'a [T], Strided, T);

/// `gemv_columns` for N columns of B: blocks of 128 rows for one or two columns (eight
/// AVX-512 registers of f32 a column), of 64 (four), then of 16, the last rows as the
/// block of 16 that ends with them (its rows done already left as they are), and one
/// at a time only below 16 rows. The taller blocks read a weight's columns in longer
/// runs: a block of 64 rows of a 1024-row parameter reads 256 bytes every 4 KiB, and
/// one step of the LSTM with 1024 hidden units ran forward in 0.81 of its time with
/// blocks of 128 (session 22).
fn columns_at_once<T: Scalar, const N: usize, const TALL: usize>(
    (a, av, b, bv, beta): Operands<'_, T>,
    c: &mut [T],
    cv: Strided,
) {
    let m = cv.rows;
    let xs: [&[T]; N] = std::array::from_fn(|j| &b[bv.offset + j * bv.col_stride..][..av.cols]);
    // (Which lets the compiler drop the bounds checks of `x[k]` in the blocks.)
    assert!(
        xs.iter().all(|x| x.len() == av.cols),
        "B's columns hold A's columns"
    );
    let mut row = 0;
    while m - row >= TALL {
        rows_times_columns::<T, TALL, N>((a, av, row), &xs, beta, (c, cv, 0));
        row += TALL;
    }
    while m - row >= 64 {
        rows_times_columns::<T, 64, N>((a, av, row), &xs, beta, (c, cv, 0));
        row += 64;
    }
    while m - row >= 16 {
        rows_times_columns::<T, 16, N>((a, av, row), &xs, beta, (c, cv, 0));
        row += 16;
    }
    if row == m {
        return;
    }
    if m >= 16 {
        let start = m - 16;
        rows_times_columns::<T, 16, N>((a, av, start), &xs, beta, (c, cv, row - start));
        return;
    }
    for i in row..m {
        rows_times_columns::<T, 1, N>((a, av, i), &xs, beta, (c, cv, 0));
    }
}

/// Rows `row..row + R` of C = A·B + βC for B's N columns `xs`, the R × N sums in an
/// array the compiler keeps in registers; C's rows from `row + first` stored.
#[inline(always)]
fn rows_times_columns<T: Scalar, const R: usize, const N: usize>(
    (a, av, row): (&[T], Strided, usize),
    xs: &[&[T]; N],
    beta: T,
    (c, cv, first): (&mut [T], Strided, usize),
) {
    let mut sums = [[T::zero(); R]; N];
    for k in 0..av.cols {
        let column: &[T; R] = a[av.offset + k * av.col_stride + row..][..R]
            .try_into()
            .expect("R rows");
        for (sums, x) in sums.iter_mut().zip(xs) {
            let xk = x[k];
            for (sum, value) in sums.iter_mut().zip(column) {
                *sum += *value * xk;
            }
        }
    }
    for (j, sums) in sums.iter().enumerate() {
        let out = &mut c[cv.offset + j * cv.col_stride + row..][..R];
        for (o, sum) in out.iter_mut().zip(sums).skip(first) {
            *o = if beta == T::zero() {
                *sum
            } else {
                beta * *o + *sum
            };
        }
    }
}

/// C = A·B + βC for row-major A (a transposed matrix): each element of C is the dot
/// product of a contiguous row of A with a column of B.
fn gemv_rows<T: Scalar>(
    a: &[T],
    av: Strided,
    b: &[T],
    bv: Strided,
    beta: T,
    c: &mut [T],
    cv: Strided,
) {
    let k = av.cols;
    for j in 0..cv.cols {
        let x = &b[bv.offset + j * bv.col_stride..][..k];
        for i in 0..cv.rows {
            let row = &a[av.offset + i * av.row_stride..][..k];
            let dot = dot(row, x);
            let at = cv.offset + i + j * cv.col_stride;
            c[at] = if beta == T::zero() {
                dot
            } else {
                beta * c[at] + dot
            };
        }
    }
}

/// Eight independent partial sums, so that the compiler vectorises the reduction.
fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = a_rest
        .iter()
        .zip(b_rest)
        .fold(T::zero(), |s, (x, y)| s + *x * *y);
    for v in acc {
        sum += v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_batch_paths_match_the_general_product() {
        for (m, k, n) in [
            (7, 5, 1),
            (33, 17, 3),
            (140, 35, 4),
            (9, 1, 2),
            (64, 20, 8),
            (70, 9, 13),
            (512, 128, 16),
            (81, 6, 2),
            (300, 5, 1),
            (211, 7, 2),
        ] {
            let a =
                nalgebra::DMatrix::<f64>::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
            // A as a block of a larger matrix: rows from 2, columns from 1.
            let within = nalgebra::DMatrix::<f64>::from_fn(m + 3, k + 2, |i, j| {
                if (2..m + 2).contains(&i) && (1..k + 1).contains(&j) {
                    a[(i - 2, j - 1)]
                } else {
                    f64::NAN
                }
            });
            let b = nalgebra::DMatrix::<f64>::from_fn(k, n, |i, j| ((i + 2 * j) % 5) as f64 * 0.5);
            let at = a.transpose();
            for (beta, start) in [(0.0, 9.0), (1.0, 2.0)] {
                let expected = &a * &b + nalgebra::DMatrix::from_element(m, n, beta * start);
                let max_error = |c: &[f64]| {
                    c.iter()
                        .zip(expected.iter())
                        .fold(0.0f64, |e, (x, y)| e.max((x - y).abs()))
                };
                // A stored column-major, and stored transposed (row-major) and read so.
                for (what, stored, view) in [
                    ("columns", &a, Strided::column_major(m, 0, 0, m, k)),
                    ("rows", &at, Strided::column_major(k, 0, 0, k, m).t()),
                    ("a block", &within, Strided::column_major(m + 3, 2, 1, m, k)),
                ] {
                    let mut c = vec![start; m * n];
                    let b_view = Strided::column_major(k, 0, 0, k, n);
                    gemm(
                        stored.as_slice(),
                        view,
                        b.as_slice(),
                        b_view,
                        beta,
                        &mut c,
                        Strided::column_major(m, 0, 0, m, n),
                    );
                    let error = max_error(&c);
                    assert!(error < 1e-9, "{what} {m}x{k}x{n}: {error}");
                    if what != "a block" && n > SMALL_BATCH {
                        // The few-column products themselves, four columns at a time.
                        let few = if what == "columns" {
                            gemv_columns
                        } else {
                            gemv_rows
                        };
                        let mut c = vec![start; m * n];
                        let c_view = Strided::column_major(m, 0, 0, m, n);
                        let a = stored.as_slice();
                        few(a, view, b.as_slice(), b_view, beta, &mut c, c_view);
                        let error = max_error(&c);
                        assert!(error < 1e-9, "{what}, few: {m}x{k}x{n}: {error}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_f32_exp_and_tanh_are_accurate_everywhere() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.35e-4; // -87 ..= 87, inside the clamp
            let exact = (x as f64).exp();
            worst_exp = worst_exp.max(((exp_f32(x) as f64) - exact).abs() / exact);
            let t = (x as f64).tanh();
            worst_tanh = worst_tanh.max(((tanh_f32(x) as f64) - t).abs() / t.abs().max(1e-30));
            // Never past ±1: tanh' = 1 - y² must not turn negative.
            assert!(tanh_f32(x).abs() <= 1.0, "tanh({x}) = {}", tanh_f32(x));
        }
        assert!(worst_exp < 3e-7, "exp: {worst_exp}");
        // Near 0 too, where tanh x ≈ x, and at the clamp.
        for e in -30..0 {
            let x = 1.7f32 * 10f32.powi(e);
            let t = (x as f64).tanh();
            worst_tanh = worst_tanh.max(((tanh_f32(x) as f64) - t).abs() / t);
        }
        assert!(worst_tanh < 1e-6, "tanh: {worst_tanh}");
        // Saturated: within 3e-7 of ±1, odd, the clamp's value far out.
        assert!(tanh_f32(30.0) <= 1.0 && tanh_f32(30.0) > 1.0 - 3e-7);
        assert_eq!(tanh_f32(-30.0), -tanh_f32(30.0));
        assert_eq!(tanh_f32(1e30), tanh_f32(7.905_311));
        assert!(tanh_f32(7.9) < 1.0 && tanh_f32(7.9) > 0.999_999);
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.3));
        assert!(exp_f32(1000.0).is_finite());
        assert_eq!(tanh_f32(0.0), 0.0);
    }

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
