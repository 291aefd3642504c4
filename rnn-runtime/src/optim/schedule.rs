//! Learning-rate schedules, as `torch.optim.lr_scheduler` defines them. A schedule
//! gives the learning rate of an epoch (or step); `apply` sets it on an optimizer.

use super::Optimizer;
use crate::Scalar;

/// A learning rate per epoch.
pub trait Schedule {
    /// The learning rate for epoch `epoch` (from 0).
    fn lr(&self, epoch: usize) -> f64;

    /// Sets the optimizer's learning rate for `epoch`.
    fn apply<T: Scalar>(&self, epoch: usize, optimizer: &mut dyn Optimizer<T>)
    where
        Self: Sized,
    {
        optimizer.set_lr(self.lr(epoch));
    }
}

/// `StepLR`: multiplied by `gamma` every `step_size` epochs.
#[derive(Clone, Debug)]
pub struct StepLr {
    /// The starting learning rate.
    pub base_lr: f64,
    /// Epochs between decays.
    pub step_size: usize,
    /// The decay factor (PyTorch: 0.1).
    pub gamma: f64,
}

/// `ExponentialLR`: multiplied by `gamma` every epoch.
#[derive(Clone, Debug)]
pub struct ExponentialLr {
    /// The starting learning rate.
    pub base_lr: f64,
    /// The decay factor.
    pub gamma: f64,
}

/// `CosineAnnealingLR`: from `base_lr` down to `eta_min` along half a cosine over
/// `t_max` epochs.
#[derive(Clone, Debug)]
pub struct CosineAnnealingLr {
    /// The starting learning rate.
    pub base_lr: f64,
    /// Epochs to reach `eta_min`.
    pub t_max: usize,
    /// The smallest learning rate (PyTorch: 0).
    pub eta_min: f64,
}

/// `LinearLR`, a linear warm-up: the factor goes from `start_factor` to `end_factor`
/// over `total_iters` epochs, then stays.
#[derive(Clone, Debug)]
pub struct LinearWarmup {
    /// The learning rate the factors multiply.
    pub base_lr: f64,
    /// The first factor (PyTorch: 1/3).
    pub start_factor: f64,
    /// The last factor (PyTorch: 1).
    pub end_factor: f64,
    /// Epochs of warm-up (PyTorch: 5).
    pub total_iters: usize,
}

impl Schedule for StepLr {
    fn lr(&self, epoch: usize) -> f64 {
        self.base_lr * self.gamma.powi((epoch / self.step_size.max(1)) as i32)
    }
}

impl Schedule for ExponentialLr {
    fn lr(&self, epoch: usize) -> f64 {
        self.base_lr * self.gamma.powi(epoch as i32)
    }
}

impl Schedule for CosineAnnealingLr {
    fn lr(&self, epoch: usize) -> f64 {
        let t_max = self.t_max.max(1) as f64;
        self.eta_min
            + (self.base_lr - self.eta_min)
                * (1.0 + (std::f64::consts::PI * epoch as f64 / t_max).cos())
                / 2.0
    }
}

impl Schedule for LinearWarmup {
    fn lr(&self, epoch: usize) -> f64 {
        let progress = epoch.min(self.total_iters) as f64 / self.total_iters.max(1) as f64;
        self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)
    }
}

/// `ReduceLROnPlateau` (mode `min`, relative threshold): when the metric has not
/// improved for more than `patience` epochs, the learning rate is multiplied by
/// `factor`, then waits `cooldown` epochs.
#[derive(Clone, Debug)]
pub struct ReduceLrOnPlateau {
    /// The decay factor (PyTorch: 0.1).
    pub factor: f64,
    /// Epochs without improvement tolerated (PyTorch: 10).
    pub patience: usize,
    /// A relative improvement smaller than this does not count (PyTorch: 1e-4).
    pub threshold: f64,
    /// Epochs to wait after a reduction (PyTorch: 0).
    pub cooldown: usize,
    /// The learning rate never goes below this (PyTorch: 0).
    pub min_lr: f64,
    best: f64,
    bad_epochs: usize,
    cooldown_left: usize,
}

impl Default for ReduceLrOnPlateau {
    fn default() -> Self {
        ReduceLrOnPlateau {
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            best: f64::INFINITY,
            bad_epochs: 0,
            cooldown_left: 0,
        }
    }
}

impl ReduceLrOnPlateau {
    /// Records the epoch's metric (lower is better) and lowers the optimizer's learning
    /// rate on a plateau. Returns whether it did.
    pub fn step<T: Scalar>(&mut self, metric: f64, optimizer: &mut dyn Optimizer<T>) -> bool {
        if metric < self.best * (1.0 - self.threshold) {
            self.best = metric;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs > self.patience {
            let lr = (optimizer.lr() * self.factor).max(self.min_lr);
            // PyTorch skips changes smaller than eps (1e-8).
            let reduced = optimizer.lr() - lr > 1e-8;
            if reduced {
                optimizer.set_lr(lr);
            }
            self.cooldown_left = self.cooldown;
            self.bad_epochs = 0;
            return reduced;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Sgd;

    #[test]
    fn closed_forms() {
        let step = StepLr {
            base_lr: 1.0,
            step_size: 3,
            gamma: 0.5,
        };
        assert_eq!([0, 2, 3, 6].map(|e| step.lr(e)), [1.0, 1.0, 0.5, 0.25]);
        assert_eq!(
            ExponentialLr {
                base_lr: 2.0,
                gamma: 0.5
            }
            .lr(3),
            0.25
        );
        let cosine = CosineAnnealingLr {
            base_lr: 1.0,
            t_max: 10,
            eta_min: 0.1,
        };
        assert!(
            (cosine.lr(0) - 1.0).abs() < 1e-12
                && (cosine.lr(5) - 0.55).abs() < 1e-12
                && (cosine.lr(10) - 0.1).abs() < 1e-12
        );
        let warm = LinearWarmup {
            base_lr: 0.3,
            start_factor: 1.0 / 3.0,
            end_factor: 1.0,
            total_iters: 4,
        };
        assert!(
            (warm.lr(0) - 0.1).abs() < 1e-12
                && (warm.lr(2) - 0.2).abs() < 1e-12
                && (warm.lr(9) - 0.3).abs() < 1e-12
        );
    }

    #[test]
    fn plateau_reduces_after_patience_and_waits_out_the_cooldown() {
        let mut sgd = Sgd::<f64>::new(1.0);
        let mut plateau = ReduceLrOnPlateau {
            patience: 2,
            cooldown: 1,
            ..ReduceLrOnPlateau::default()
        };
        let reductions: Vec<bool> = [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
            .iter()
            .map(|&m| plateau.step(m, &mut sgd))
            .collect();
        assert_eq!(
            reductions,
            [false, false, false, false, true, false, false, false]
        );
        assert!((sgd.lr - 0.1).abs() < 1e-15);
    }
}
