use rnn_runtime::prelude::*;

#[recurrent]
fn broken(x: Input, h: State<P>) {
    h = tahn(W * x + U * h);
}

fn main() {
    let mut rng = Rng::seed(0);
    let cell: Broken<f64> = Broken::new(3, 4, 2, &mut rng);
    let _ = cell.parameters();
    let _ = gradcheck::<Broken<f64>>(&[3, 4, 2], 2, 3, 0);
}
