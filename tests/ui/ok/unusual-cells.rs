use rnn_runtime::prelude::*;

/// The state is never read: a feed-forward layer applied at each step.
#[recurrent]
pub fn feedforward(x: Input, h: State) {
    h = tanh(W * x + b);
}

/// The input is never read.
#[recurrent]
pub fn autonomous(x: Input, h: State) {
    h = tanh(U * h);
}

/// The state is a parameter.
#[recurrent]
pub fn constant(x: Input, h: State) {
    h = b;
}

/// The state carries over unchanged; a second state does the work. `T` names a
/// parameter although the struct is generic over `T`.
#[recurrent(output = c)]
pub fn carry(x: Input, h: State, c: State) {
    h = h;
    c = tanh(T * x) + h * c;
}

fn main() -> Result<(), Error> {
    assert!(gradcheck::<Feedforward<f64>>(&[2, 3], 2, 3, 1)? < 1e-6);
    assert!(gradcheck::<Autonomous<f64>>(&[2, 3], 2, 3, 1)? < 1e-6);
    assert!(gradcheck::<Constant<f64>>(&[2, 3], 2, 3, 1)? < 1e-6);
    assert!(gradcheck::<Carry<f64>>(&[2, 3], 2, 3, 1)? < 1e-6);
    Ok(())
}
