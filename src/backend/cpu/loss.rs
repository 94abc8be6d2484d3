//! Row-wise softmax cross-entropy with its gradient, in one pass over each row.

use rayon::prelude::*;

pub fn cross_entropy(
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    scale: &[f32],
    classes: usize,
) -> Vec<f32> {
    let mut losses = vec![0.0f32; targets.len()];
    dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(losses.par_iter_mut())
        .enumerate()
        .for_each(|(r, ((d, l), loss))| {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = l.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let lse = max + sum.ln() as f32;
            let t = targets[r] as usize;
            *loss = lse - l[t];
            for (dj, &x) in d.iter_mut().zip(l) {
                *dj = (x - lse).exp() * scale[r];
            }
            d[t] -= scale[r];
        });
    losses
}
