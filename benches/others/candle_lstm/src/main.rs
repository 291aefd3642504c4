//! Times candle's LSTM on the project's sizes (medium by default: T=50, B=32, I=256, H=512):
//! forward over the sequence, and forward + backward with loss = sum of all outputs.
use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::{lstm, LSTMConfig, RNN};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (t, b, i, h) = match args.get(1).map(String::as_str) {
        Some("small") => (50, 16, 64, 128),
        Some("tiny") => (70, 1, 35, 35),
        _ => (50, 32, 256, 512),
    };
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cell = lstm(i, h, LSTMConfig::default(), vb.pp("lstm"))?;
    let x = Tensor::randn(0f32, 1f32, (b, t, i), &dev)?;
    let run = |backward: bool| -> candle_core::Result<f64> {
        let began = Instant::now();
        let states = cell.seq(&x)?;
        let hs: Vec<Tensor> = states.iter().map(|s| s.h().clone()).collect();
        let out = Tensor::stack(&hs, 1)?;
        let loss = out.sum_all()?;
        if backward {
            let grads = loss.backward()?;
            std::hint::black_box(grads);
        } else {
            std::hint::black_box(loss.to_scalar::<f32>()?);
        }
        Ok(began.elapsed().as_secs_f64() * 1e3)
    };
    for backward in [false, true] {
        for _ in 0..2 {
            run(backward)?;
        }
        let times: Vec<f64> = (0..7)
            .map(|_| run(backward))
            .collect::<candle_core::Result<_>>()?;
        println!(
            "candle {} ({t},{b},{i},{h}) {}: median {:.2} ms",
            candle_core::utils::get_num_threads(),
            if backward { "fwd+bwd" } else { "fwd" },
            median(times)
        );
    }
    Ok(())
}
