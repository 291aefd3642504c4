//! Times burn's LSTM on the project's sizes, on the ndarray and flex CPU backends:
//! forward over the sequence, and forward + backward with loss = sum of all outputs.
#![allow(deprecated)]
use burn::nn::{Lstm, LstmConfig};
use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (t, b, i, h) = match args.get(1).map(String::as_str) {
        Some("small") => (50, 16, 64, 128),
        Some("tiny") => (70, 1, 35, 35),
        _ => (50, 32, 256, 512),
    };
    for backend in ["ndarray", "flex"] {
        let device = if backend == "flex" {
            Device::flex()
        } else {
            Device::ndarray()
        };
        let fwd_model: Lstm = LstmConfig::new(i, h, true).init(&device);
        let x = Tensor::<3>::random([b, t, i], Distribution::Normal(0.0, 1.0), &device);
        let run_fwd = || {
            let began = Instant::now();
            let (out, _) = fwd_model.forward(x.clone(), None);
            let s: f32 = out.sum().into_scalar();
            std::hint::black_box(s);
            began.elapsed().as_secs_f64() * 1e3
        };
        let ad = device.clone().autodiff();
        let model: Lstm = LstmConfig::new(i, h, true).init(&ad);
        let xa = Tensor::<3>::random([b, t, i], Distribution::Normal(0.0, 1.0), &ad);
        let run_bwd = || {
            let began = Instant::now();
            let (out, _) = model.forward(xa.clone(), None);
            let grads = out.sum().backward();
            std::hint::black_box(grads);
            began.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..2 {
            run_fwd();
            run_bwd();
        }
        let f = median((0..7).map(|_| run_fwd()).collect());
        let fb = median((0..7).map(|_| run_bwd()).collect());
        println!(
            "burn {backend} ({t},{b},{i},{h}) fwd: median {f:.2} ms, fwd+bwd: median {fb:.2} ms"
        );
    }
}
