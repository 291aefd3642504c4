use rnn_runtime::prelude::*;

/// Two inputs of different sizes, a projected state, concatenation, literals, unary
/// minus, every function, and the cell state as the output.
#[recurrent(output = c)]
pub fn everything(x: Input, e: Input<E>, h: State<P>, c: State) {
    let i = sigmoid(W_i * [x, e] + U_i * h + b_i);
    let f = softplus(W_f * x + V_f * e - U_f * h);
    let a = exp(-relu(identity(W_a * x)));
    c = f * c + i * tanh(W_c * [h, x, e]) + 0.5 * a;
    h = R * ((1.0 - i) * tanh(c));
}

fn main() -> Result<(), Error> {
    let mut rng = Rng::seed(0);
    let cell: Everything<f64> = Everything::new(3, 4, 2, 5, &mut rng);
    assert_eq!(cell.W_c.shape(), (4, 5 + 3 + 2));
    assert_eq!(Everything::<f64>::SPEC.size_symbols, &["I", "H", "E", "P"]);
    assert!(gradcheck::<Everything<f64>>(&[3, 4, 2, 5], 2, 3, 1)? < 1e-6);
    Ok(())
}
