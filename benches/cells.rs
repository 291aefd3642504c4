//! Criterion benches: forward (`infer`, nothing kept for backward, as PyTorch's under
//! `torch.no_grad()`), and forward + backward (loss = sum of outputs), of every measured
//! cell at every size (`cargo bench`; `cargo bench -- small` for one size).
//! `examples/throughput` prints the same measurements as a table or JSON.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_suite::bench_cells::{Mgu, PeepholeLstm, Shape, SIZES};

fn bench_cell<C: Cell<f32>>(c: &mut Criterion, name: &str) {
    for (size, (t, b, i, h)) in SIZES {
        let mut group = c.benchmark_group(format!("{size}/{name}"));
        if size == "medium" || size == "large" {
            group.sample_size(10);
        }
        let mut rng = Rng::seed(0);
        let cell =
            C::with_dims(&[i, h], &Init::pytorch_default(h), &mut rng).expect("benchmark sizes");
        let steps = Steps::full(t, b).expect("benchmark sizes");
        let x = DMatrix::from_fn(i, steps.columns(), |_, _| rng.normal() as f32);
        let ones = DMatrix::from_element(cell.output_size(), steps.columns(), 1.0f32);
        let shape: Shape = (t, b, i, h);
        group.bench_function(BenchmarkId::new("fwd", format!("{shape:?}")), |bench| {
            bench.iter(|| {
                infer(&cell, &steps, &[&x], None, Direction::Forward).expect("valid sizes")
            })
        });
        group.bench_function(BenchmarkId::new("fwdbwd", format!("{shape:?}")), |bench| {
            bench.iter(|| {
                let mut run =
                    forward(&cell, &steps, &[&x], None, Direction::Forward).expect("valid sizes");
                run.backward_with(&cell, Some(&ones), &[], InputGrads::Skip)
                    .expect("valid sizes")
            })
        });
        group.finish();
    }
}

fn cells(c: &mut Criterion) {
    bench_cell::<LstmCell<f32>>(c, "lstm");
    bench_cell::<GruCell<f32>>(c, "gru");
    bench_cell::<RnnTanhCell<f32>>(c, "rnn_tanh");
    bench_cell::<PeepholeLstm<f32>>(c, "peephole_lstm");
    bench_cell::<Mgu<f32>>(c, "mgu");
}

criterion_group!(benches, cells);
criterion_main!(benches);
