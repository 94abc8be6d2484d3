//! A cached prefix plus a batch of continuations must give what the full sequences
//! (prefix ++ continuation) give: logits, classifier pooling and losses.

mod common;

use armsrace::backend::{AttnShape, Backend};
use armsrace::model::config::HeadKind;
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
use common::{assert_close, fixture};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f32 = 1e-5;

const LM_FIXTURES: [&str; 4] = [
    "neox-sequential-lm",
    "neox-lm-bf16-sharded",
    "qwen2-gqa-tied-lm",
    "qwen2-mha-lm-f16",
];
const CLS_FIXTURES: [&str; 2] = ["neox-parallel-cls", "qwen2-untied-cls"];

/// Ids in 2..390: never a special token or a padding row of any fixture's vocabulary.
fn random_ids(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(2..390u32)).collect()
}

struct Case {
    prefix: Vec<u32>,
    conts: Vec<Vec<u32>>,
}

/// Prefixes of several lengths; continuations of different lengths (right-padded in a batch).
fn cases(seed: u64) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    [
        (9usize, vec![4usize, 1, 6, 3]),
        (1, vec![5, 2]),
        (20, vec![7]),
    ]
    .into_iter()
    .map(|(p, lens)| Case {
        prefix: random_ids(&mut rng, p),
        conts: lens.iter().map(|&n| random_ids(&mut rng, n)).collect(),
    })
    .collect()
}

fn pad_of(model: &Model<Cpu>) -> u32 {
    model.cfg.pad_token_id.unwrap_or(0)
}

fn full_batch(case: &Case, pad: u32) -> Batch {
    let full: Vec<Vec<u32>> = case
        .conts
        .iter()
        .map(|c| case.prefix.iter().chain(c).copied().collect())
        .collect();
    Batch::from_sequences(&full, pad).unwrap()
}

#[test]
fn lm_logits_with_prefix_match_full_sequences() {
    for (fi, name) in LM_FIXTURES.iter().enumerate() {
        let model = Model::load(&fixture(name), Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.cfg.head, HeadKind::CausalLm);
        let v = model.cfg.vocab;
        for (ci, case) in cases(fi as u64).iter().enumerate() {
            let what = format!("{name} case {ci}");
            let p = case.prefix.len();
            let cont = Batch::from_sequences(&case.conts, pad_of(&model)).unwrap();
            let full = full_batch(case, pad_of(&model));
            let cache = model.prefix_cache(&case.prefix).unwrap();
            let got = model.logits_with_prefix(&cache, &cont).unwrap();
            assert_eq!(
                got.len(),
                cont.rows() * v,
                "{what}: one row per batch position"
            );
            let want = model.logits(&full).unwrap();
            // Compare every real continuation row with the same token of the full sequence.
            let (mut g, mut w) = (Vec::new(), Vec::new());
            for (b, &len) in cont.lens.iter().enumerate() {
                for t in 0..len {
                    let r = b * cont.seq + t;
                    let rf = b * full.seq + p + t;
                    g.extend_from_slice(&got[r * v..(r + 1) * v]);
                    w.extend_from_slice(&want[rf * v..(rf + 1) * v]);
                }
            }
            assert_close(&format!("{what} logits"), &g, &w, TOL);

            // The cache is not consumed or altered: a second, different batch against it
            // matches too (here each continuation alone, unpadded).
            for (b, c) in case.conts.iter().enumerate() {
                let one = Batch::from_sequences(std::slice::from_ref(c), 0).unwrap();
                let got1 = model.logits_with_prefix(&cache, &one).unwrap();
                let r0 = b * cont.seq;
                assert_close(
                    &format!("{what} continuation {b} alone"),
                    &got1,
                    &got[r0 * v..(r0 + c.len()) * v],
                    TOL,
                );
            }
        }
    }
}

#[test]
fn classifier_logits_with_prefix_match_full_sequences() {
    for (fi, name) in CLS_FIXTURES.iter().enumerate() {
        let model = Model::load(&fixture(name), Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let labels = model.cfg.num_labels().expect("a classifier");
        for (ci, case) in cases(10 + fi as u64).iter().enumerate() {
            let what = format!("{name} case {ci}");
            let cont = Batch::from_sequences(&case.conts, pad_of(&model)).unwrap();
            let full = full_batch(case, pad_of(&model));
            let cache = model.prefix_cache(&case.prefix).unwrap();
            let got = model.logits_with_prefix(&cache, &cont).unwrap();
            assert_eq!(
                got.len(),
                cont.batch * labels,
                "{what}: one row per sequence"
            );
            let want = model.logits(&full).unwrap();
            assert_close(&format!("{what} logits"), &got, &want, TOL);
            // Pooling reads the last real token: each continuation alone gives its row.
            for (b, c) in case.conts.iter().enumerate() {
                let one = Batch::from_sequences(std::slice::from_ref(c), pad_of(&model)).unwrap();
                let got1 = model.logits_with_prefix(&cache, &one).unwrap();
                assert_close(
                    &format!("{what} continuation {b} alone"),
                    &got1,
                    &want[b * labels..(b + 1) * labels],
                    TOL,
                );
            }
        }
    }
}

#[test]
fn loss_with_prefix_matches_full_loss() {
    for (fi, name) in LM_FIXTURES.iter().chain(&CLS_FIXTURES).enumerate() {
        let model = Model::load(&fixture(name), Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (ci, case) in cases(20 + fi as u64).iter().enumerate() {
            let what = format!("{name} case {ci}");
            let p = case.prefix.len();
            let cont = Batch::from_sequences(&case.conts, pad_of(&model)).unwrap();
            let full = full_batch(case, pad_of(&model));
            let (obj_cont, obj_full) = objectives(&model, &cont, &full, p, ci);
            // Length-1 continuations have no target: those cases only run for classifiers.
            if model.cfg.num_labels().is_none() && cont.lens.iter().any(|&l| l < 2) {
                let cache = model.prefix_cache(&case.prefix).unwrap();
                let err = model.loss_with_prefix(&cache, &cont, &obj_cont);
                assert!(
                    err.is_err(),
                    "{what}: a sequence without targets must be refused"
                );
                continue;
            }
            let cache = model.prefix_cache(&case.prefix).unwrap();
            let got = model.loss_with_prefix(&cache, &cont, &obj_cont).unwrap();
            let want = model
                .loss_and_grads(&full, &obj_full, &GradRequest::default())
                .unwrap()
                .loss_per_seq;
            assert_eq!(got.len(), cont.batch);
            assert!(
                got.iter().all(|l| l.is_finite() && *l > 0.0),
                "{what}: {got:?}"
            );
            assert_close(&format!("{what} loss"), &got, &want, TOL);
        }
    }
}

/// The same loss for the continuations and for the full sequences: classifier labels, or
/// (causal LM) every continuation token from position 1 on as a target (position 0 would be
/// predicted from the prefix's last row, which the prefix APIs do not read).
fn objectives(
    model: &Model<Cpu>,
    cont: &Batch,
    full: &Batch,
    p: usize,
    ci: usize,
) -> (Objective, Objective) {
    match model.cfg.num_labels() {
        Some(n) => {
            let labels: Vec<u32> = (0..cont.batch).map(|b| ((b + ci) % n) as u32).collect();
            (
                Objective::Classify {
                    labels: labels.clone(),
                },
                Objective::Classify { labels },
            )
        }
        None => {
            let mut mc = vec![false; cont.rows()];
            let mut mf = vec![false; full.rows()];
            for (b, &len) in cont.lens.iter().enumerate() {
                for t in 1..len {
                    mc[b * cont.seq + t] = true;
                    mf[b * full.seq + p + t] = true;
                }
            }
            (
                Objective::Target { mask: mc },
                Objective::Target { mask: mf },
            )
        }
    }
}

/// One-hot gradients (GCG's gradient) of continuations of a cached prefix equal those of the
/// full sequences at the same tokens, and so do the losses; weight gradients are refused.
#[test]
fn onehot_grads_with_prefix_match_full_sequences() {
    for (fi, name) in LM_FIXTURES.iter().chain(&CLS_FIXTURES).enumerate() {
        let model = Model::load(&fixture(name), Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let vocab = model.cfg.vocab;
        for (ci, case) in cases(30 + fi as u64).iter().enumerate() {
            let what = format!("{name} case {ci}");
            let p = case.prefix.len();
            let cont = Batch::from_sequences(&case.conts, pad_of(&model)).unwrap();
            let full = full_batch(case, pad_of(&model));
            if model.cfg.num_labels().is_none() && cont.lens.iter().any(|&l| l < 2) {
                continue; // no targets in a length-1 continuation
            }
            let (obj_cont, obj_full) = objectives(&model, &cont, &full, p, ci);
            let (mut rows_cont, mut rows_full) = (vec![], vec![]);
            for (b, &len) in cont.lens.iter().enumerate() {
                for t in 0..len {
                    rows_cont.push(b * cont.seq + t);
                    rows_full.push(b * full.seq + p + t);
                }
            }
            let req = |rows: Vec<usize>| GradRequest {
                onehot_rows: Some(rows),
                weights: false,
            };
            let cache = model.prefix_cache(&case.prefix).unwrap();
            let got = model
                .loss_and_grads_with_prefix(&cache, &cont, &obj_cont, &req(rows_cont))
                .unwrap();
            let want = model
                .loss_and_grads(&full, &obj_full, &req(rows_full))
                .unwrap();
            assert_close(
                &format!("{what} loss"),
                &got.loss_per_seq,
                &want.loss_per_seq,
                TOL,
            );
            let (g, w) = (got.onehot_grad.unwrap(), want.onehot_grad.unwrap());
            assert_eq!(g.len(), w.len(), "{what}: one-hot gradient size");
            assert_eq!(g.len() % vocab, 0);
            assert!(w.iter().any(|&x| x != 0.0), "{what}: a gradient to compare");
            assert_close(&format!("{what} one-hot gradient"), &g, &w, 1e-4);
            let weights = GradRequest {
                onehot_rows: None,
                weights: true,
            };
            assert!(
                model
                    .loss_and_grads_with_prefix(&cache, &cont, &obj_cont, &weights)
                    .is_err(),
                "{what}: weight gradients through a prefix must be refused"
            );
        }
    }
}

/// LM continuations where every sequence has targets (so the loss comparison also runs for
/// the LM fixtures on a padded batch).
#[test]
fn lm_loss_with_prefix_padded_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for name in LM_FIXTURES {
        let model = Model::load(&fixture(name), Cpu).unwrap();
        let prefix = random_ids(&mut rng, 6);
        let conts: Vec<Vec<u32>> = [5usize, 2, 8]
            .iter()
            .map(|&n| random_ids(&mut rng, n))
            .collect();
        let case = Case { prefix, conts };
        let cont = Batch::from_sequences(&case.conts, pad_of(&model)).unwrap();
        let full = full_batch(&case, pad_of(&model));
        let p = case.prefix.len();
        // Targets: the last min(3, len - 1) tokens of each continuation.
        let mut mc = vec![false; cont.rows()];
        let mut mf = vec![false; full.rows()];
        for (b, &len) in cont.lens.iter().enumerate() {
            for t in len.saturating_sub(3).max(1)..len {
                mc[b * cont.seq + t] = true;
                mf[b * full.seq + p + t] = true;
            }
        }
        let cache = model.prefix_cache(&case.prefix).unwrap();
        let got = model
            .loss_with_prefix(&cache, &cont, &Objective::Target { mask: mc })
            .unwrap();
        let want = model
            .loss_and_grads(
                &full,
                &Objective::Target { mask: mf },
                &GradRequest::default(),
            )
            .unwrap()
            .loss_per_seq;
        assert_close(&format!("{name} padded loss"), &got, &want, TOL);
    }
}

/// The backend op itself: attention of new rows against a prefix's keys/values equals the
/// same rows of attention over the concatenated sequence (GQA, MHA, MQA; padded lens).
#[test]
fn attention_op_with_prefix_matches_concatenation() {
    let be = Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (heads, kv_heads, p_len, lens) in [
        (4usize, 2usize, 5usize, vec![4usize, 2, 1]),
        (3, 3, 3, vec![6, 6]),
        (4, 1, 1, vec![3, 0, 2]),
    ] {
        let hd = 8;
        let seq = *lens.iter().max().unwrap();
        let batch = lens.len();
        let width = (heads + 2 * kv_heads) * hd;
        let out_w = heads * hd;
        let prefix: Vec<f32> = (0..p_len * width)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let new: Vec<f32> = (0..batch * seq * width)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let shape = AttnShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim: hd,
            prefix: p_len,
        };
        let mut out = be.zeros(batch * seq * out_w);
        let mut lse = be.zeros(batch * seq * heads);
        be.attention(&mut out, &mut lse, &new, Some(&prefix), &lens, shape);
        for b in 0..batch {
            // The same sequence written out in full: prefix rows then its new rows.
            let fseq = p_len + seq;
            let mut full = prefix.clone();
            full.extend_from_slice(&new[b * seq * width..(b + 1) * seq * width]);
            let fshape = AttnShape {
                batch: 1,
                seq: fseq,
                prefix: 0,
                ..shape
            };
            let mut fout = be.zeros(fseq * out_w);
            let mut flse = be.zeros(fseq * heads);
            be.attention(
                &mut fout,
                &mut flse,
                &full,
                None,
                &[p_len + lens[b]],
                fshape,
            );
            let what = format!(
                "{heads}/{kv_heads} prefix {p_len} seq {b} (len {})",
                lens[b]
            );
            let len = lens[b];
            if len == 0 {
                continue;
            }
            assert_close(
                &format!("{what} out"),
                &out[b * seq * out_w..(b * seq + len) * out_w],
                &fout[p_len * out_w..(p_len + len) * out_w],
                1e-6,
            );
            assert_close(
                &format!("{what} lse"),
                &lse[b * seq * heads..(b * seq + len) * heads],
                &flse[p_len * heads..(p_len + len) * heads],
                1e-6,
            );
        }
    }
}
