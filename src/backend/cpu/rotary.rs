//! Rotary position embedding, rotate-half convention (GPTNeoX and Qwen2 in transformers),
//! applied to the first `rot_dims` dims of each q and k head. Angles are computed in f32 the
//! way transformers does (inv_freq = 1 / base^(2i/d), angle = pos * inv_freq) so long
//! positions round the same way.

use crate::backend::RotaryShape;
use rayon::prelude::*;

pub fn inv_freq(rot_dims: usize, base: f32) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / rot_dims as f32))
        .collect()
}

pub fn rotary(qkv: &mut [f32], positions: &[u32], s: RotaryShape, inverse: bool) {
    if s.rot_dims == 0 {
        return;
    }
    let width = (s.heads + 2 * s.kv_heads) * s.head_dim;
    let freqs = inv_freq(s.rot_dims, s.base);
    let half = s.rot_dims / 2;
    let rotated_heads = s.heads + s.kv_heads; // q heads then k heads; v untouched
    qkv.par_chunks_mut(width)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            let (sin, cos): (Vec<f32>, Vec<f32>) = freqs
                .iter()
                .map(|&f| {
                    let a = pos as f32 * f;
                    let s = a.sin();
                    (if inverse { -s } else { s }, a.cos())
                })
                .unzip();
            for h in 0..rotated_heads {
                let x = &mut row[h * s.head_dim..h * s.head_dim + s.rot_dims];
                for i in 0..half {
                    let (x1, x2) = (x[i], x[i + half]);
                    x[i] = x1 * cos[i] - x2 * sin[i];
                    x[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
}
