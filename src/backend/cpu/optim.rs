//! Optimizer updates, CPU reference (kernels/optim.cu is checked against these). Both work in
//! f32 with the same operation order as the kernels.
//!
//! - AdamW: torch.optim.AdamW (decoupled weight decay, bias-corrected moments).
//! - Adafactor: transformers' `Adafactor` with relative_step=False, scale_parameter=False,
//!   warmup_init=False, beta1=None: lr is used as given, eps[1] and the parameter RMS never
//!   enter (they only scale a relative step), matrices keep factored row/column second
//!   moments, vectors a full one, and the update is clipped to RMS <= clip_threshold.

/// AdamW hyperparameters (torch defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// Bias corrections 1 - beta^step, computed in f64 as torch does (Python floats), then
    /// handed to the f32 update.
    pub fn bias_corrections(&self, step: u32) -> (f32, f32) {
        let bc1 = 1.0 - (self.beta1 as f64).powi(step as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(step as i32);
        (bc1 as f32, bc2 as f32)
    }
}

/// One AdamW step (`step` counts from 1) on `p` with gradient `g`; m and v start at zero.
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamW, step: u32) {
    let (bc1, bc2) = hp.bias_corrections(step);
    let step_size = hp.lr / bc1;
    let bc2s = bc2.sqrt();
    for i in 0..p.len() {
        let gi = g[i];
        let mi = m[i] + (1.0 - hp.beta1) * (gi - m[i]);
        let vi = hp.beta2 * v[i] + (1.0 - hp.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let mut pi = p[i] * (1.0 - hp.lr * hp.weight_decay);
        pi -= step_size * mi / (vi.sqrt() / bc2s + hp.eps);
        p[i] = pi;
    }
}

/// Adafactor hyperparameters (transformers' defaults apart from the fixed flags above).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adafactor {
    pub lr: f32,
    /// eps[0]: added to the squared gradient.
    pub eps1: f32,
    pub clip_threshold: f32,
    /// beta2 at step t is 1 - t^decay_rate.
    pub decay_rate: f32,
    pub weight_decay: f32,
}

impl Default for Adafactor {
    fn default() -> Self {
        Adafactor {
            lr: 1e-3,
            eps1: 1e-30,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            weight_decay: 0.0,
        }
    }
}

impl Adafactor {
    pub fn beta2t(&self, step: u32) -> f32 {
        (1.0 - (step as f64).powf(self.decay_rate as f64)) as f32
    }
}

/// Adafactor second-moment state of one parameter.
pub enum AdafactorState<'a> {
    /// A [rows, cols] matrix: row [rows] and col [cols] moments (start at zero).
    Factored {
        row: &'a mut [f32],
        col: &'a mut [f32],
    },
    /// A vector: v [n] (starts at zero).
    Vector { v: &'a mut [f32] },
}

/// One Adafactor step (`step` counts from 1) on `p` [rows, cols] (a vector: rows = 1).
pub fn adafactor_step(
    p: &mut [f32],
    g: &[f32],
    rows: usize,
    cols: usize,
    state: AdafactorState<'_>,
    hp: &Adafactor,
    step: u32,
) {
    let b = hp.beta2t(step);
    let n = rows * cols;
    let update: Vec<f32> = match state {
        AdafactorState::Factored { row, col } => {
            for r in 0..rows {
                let s: f32 = g[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&x| x * x + hp.eps1)
                    .sum();
                row[r] = b * row[r] + (1.0 - b) * (s / cols as f32);
            }
            for c in 0..cols {
                let s: f32 = (0..rows)
                    .map(|r| g[r * cols + c])
                    .map(|x| x * x + hp.eps1)
                    .sum();
                col[c] = b * col[c] + (1.0 - b) * (s / rows as f32);
            }
            let row_mean = row.iter().sum::<f32>() / rows as f32;
            (0..n)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    let rf = 1.0 / (row[r] / row_mean).sqrt();
                    let cf = 1.0 / col[c].sqrt();
                    rf * cf * g[i]
                })
                .collect()
        }
        AdafactorState::Vector { v } => (0..n)
            .map(|i| {
                v[i] = b * v[i] + (1.0 - b) * (g[i] * g[i] + hp.eps1);
                (1.0 / v[i].sqrt()) * g[i]
            })
            .collect(),
    };
    let rms = (update.iter().map(|u| u * u).sum::<f32>() / n as f32).sqrt();
    let denom = (rms / hp.clip_threshold).max(1.0);
    for i in 0..n {
        let u = update[i] / denom * hp.lr;
        let pi = p[i] + p[i] * (-hp.weight_decay * hp.lr);
        p[i] = pi - u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // With m = v = 0 the first bias-corrected step is lr * g / (|g| + eps) ~ lr * sign(g).
        let hp = AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        };
        let mut p = vec![1.0f32, -1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_step(&mut p, &[0.5, -2.0], &mut m, &mut v, &hp, 1);
        assert!((p[0] - (1.0 - 1e-3)).abs() < 1e-6);
        assert!((p[1] - (-1.0 + 1e-3)).abs() < 1e-6);
    }

    #[test]
    fn adafactor_update_is_clipped_to_unit_rms() {
        // Step 1: beta2t = 0, so v = g^2 and the update g / |g| has RMS exactly 1.
        let hp = Adafactor {
            lr: 0.1,
            ..Adafactor::default()
        };
        let mut p = vec![0.0f32; 3];
        let mut v = vec![0.0f32; 3];
        adafactor_step(
            &mut p,
            &[2.0, -3.0, 0.5],
            1,
            3,
            AdafactorState::Vector { v: &mut v },
            &hp,
            1,
        );
        for (x, want) in p.iter().zip([-0.1, 0.1, -0.1]) {
            assert!((x - want).abs() < 1e-6, "{x} vs {want}");
        }
    }
}
