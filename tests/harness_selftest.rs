//! Self-test of the CPU execution harness (kernels/harness, src/backend/gpu/emu.rs), driving
//! the test kernels in kernels/harness/tests/*.cu: correct kernels give the right answers
//! under both schedules, every planted bug is reported (the assertions read the messages),
//! and bf16/f16 conversions round like the hardware.

use armsrace::backend::gpu::device::{DevicePtr, KernelDevice, LaunchConfig};
use armsrace::backend::gpu::emu::{EmuDevice, Schedule};
use bytemuck::{Pod, Zeroable};

/// kernels/harness/tests/test_args.h
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct HtArgs {
    out: u64,
    inp: u64,
    aux: u64,
    n: u32,
    param: i32,
}

const SCHEDULES: [Schedule; 2] = [Schedule::Forward, Schedule::Reverse];

fn cfg(grid: [u32; 3], block: [u32; 3], shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block,
        shared_bytes,
    }
}

fn cfg1(grid: u32, block: u32) -> LaunchConfig {
    cfg([grid, 1, 1], [block, 1, 1], 0)
}

fn up<T: Pod>(dev: &EmuDevice, data: &[T]) -> DevicePtr {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let p = dev.alloc(bytes.len()).expect("alloc");
    dev.upload(&p, 0, bytes).expect("upload");
    p
}

fn zeros(dev: &EmuDevice, bytes: usize) -> DevicePtr {
    let p = dev.alloc(bytes).expect("alloc");
    dev.memset_zero(&p).expect("memset");
    p
}

fn down<T: Pod + Zeroable>(dev: &EmuDevice, p: &DevicePtr, n: usize) -> Vec<T> {
    let mut v = vec![T::zeroed(); n];
    dev.download(p, 0, bytemuck::cast_slice_mut(&mut v))
        .expect("download");
    v
}

fn launch(dev: &EmuDevice, kernel: &str, c: LaunchConfig, a: HtArgs) -> armsrace::Result<()> {
    dev.launch(kernel, c, bytemuck::bytes_of(&a))
}

/// Expects `launch` to fail with a message holding every one of `want`; returns it.
fn expect_err(r: armsrace::Result<()>, want: &[&str]) -> String {
    let msg = match r {
        Ok(()) => panic!("launch succeeded; expected an error with {want:?}"),
        Err(e) => e.to_string(),
    };
    for w in want {
        assert!(msg.contains(w), "error message lacks `{w}`:\n{msg}");
    }
    msg
}

/// Deterministic inputs in [-1, 1).
fn randoms(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A correct kernel still runs after an error (stacks reclaimed, signals unblocked).
fn still_works(dev: &EmuDevice) {
    let x = randoms(256, 99);
    let (i, o) = (up(dev, &x), zeros(dev, 4 * 256));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: 256,
        ..Default::default()
    };
    launch(dev, "harness_test_scale", cfg1(4, 64), a).expect("a correct launch after an error");
    let got: Vec<f32> = down(dev, &o, 256);
    assert!(got.iter().zip(&x).all(|(g, x)| *g == 2.0 * x));
}

// ---- correct kernels, both schedules ----

/// out[b] for harness_test_block_sum, in the kernel's own tree order (so bit-exact).
fn tree_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(256)
        .map(|c| {
            let mut s = [0.0f32; 256];
            s[..c.len()].copy_from_slice(c);
            let mut stride = 128;
            while stride > 0 {
                for t in 0..stride {
                    s[t] += s[t + stride];
                }
                stride /= 2;
            }
            s[0]
        })
        .collect()
}

#[test]
fn block_sum_is_right_and_identical_under_both_schedules() {
    let x = randoms(256 * 6 - 17, 1);
    let want = tree_sums(&x);
    let mut outs = Vec::new();
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let (i, o) = (up(&dev, &x), zeros(&dev, 4 * 6));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            n: x.len() as u32,
            ..Default::default()
        };
        launch(&dev, "harness_test_block_sum", cfg1(6, 256), a).unwrap();
        let got: Vec<f32> = down(&dev, &o, 6);
        assert_eq!(bits(&got), bits(&want), "{s:?}");
        outs.push(got);
    }
    assert_eq!(bits(&outs[0]), bits(&outs[1]));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn missing_syncthreads_shows_up_as_a_schedule_difference() {
    let x = randoms(256 * 4, 2);
    let mut outs = Vec::new();
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let (i, o) = (up(&dev, &x), zeros(&dev, 4 * 4));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            n: x.len() as u32,
            ..Default::default()
        };
        launch(&dev, "harness_test_block_sum_nosync", cfg1(4, 256), a).unwrap();
        outs.push(down::<f32>(&dev, &o, 4));
    }
    assert_ne!(
        bits(&outs[0]),
        bits(&outs[1]),
        "the race must change the result"
    );
    // Forward: thread 0 adds slot 128 before thread 128 has written it (poison = NaN).
    assert!(outs[0].iter().all(|v| v.is_nan()), "forward: {:?}", outs[0]);
    assert_eq!(
        bits(&outs[1]),
        bits(&tree_sums(&x)),
        "reverse happens to see every write"
    );
}

#[test]
fn warp_shuffles_and_votes() {
    let n = 128;
    let x = randoms(n, 3);
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let (i, o, v) = (up(&dev, &x), zeros(&dev, 4 * 5 * n), zeros(&dev, 4 * 6 * n));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            aux: v.addr,
            n: n as u32,
            ..Default::default()
        };
        launch(&dev, "harness_test_warp", cfg1(2, 64), a).unwrap();
        let got: Vec<f32> = down(&dev, &o, 5 * n);
        let votes: Vec<u32> = down(&dev, &v, 6 * n);
        for (w, xs) in x.chunks(32).enumerate() {
            // CUDA semantics, simulated: xor butterfly, down tree (out of range: own value),
            // up scan, broadcast, width-8 rotate.
            let mut b = xs.to_vec();
            let mut d = xs.to_vec();
            let mut p = xs.to_vec();
            let mut k = 16;
            while k > 0 {
                b = (0..32).map(|l| b[l] + b[l ^ k]).collect();
                d = (0..32)
                    .map(|l| d[l] + if l + k < 32 { d[l + k] } else { d[l] })
                    .collect();
                k /= 2;
            }
            let mut k = 1;
            while k < 32 {
                p = (0..32)
                    .map(|l| if l >= k { p[l] + p[l - k] } else { p[l] })
                    .collect();
                k *= 2;
            }
            let ballot = (0..32).fold(0u32, |m, l| m | ((xs[l] > 0.0) as u32) << l);
            for l in 0..32 {
                let g = w * 32 + l;
                let o = &got[5 * g..5 * g + 5];
                assert_eq!(o[0].to_bits(), b[l].to_bits(), "xor sum, lane {l}");
                assert_eq!(o[1].to_bits(), d[l].to_bits(), "down sum, lane {l}");
                assert_eq!(o[2].to_bits(), p[l].to_bits(), "up scan, lane {l}");
                assert_eq!(o[3], xs[5], "broadcast");
                assert_eq!(o[4], xs[(l & !7) | ((l + 1) & 7)], "width 8, lane {l}");
                let vt = &votes[6 * g..6 * g + 6];
                assert_eq!(vt[0], ballot);
                assert_eq!(vt[1], xs.iter().any(|&v| v > 0.9) as u32);
                assert_eq!(vt[2], 1);
                assert_eq!(vt[3], u32::MAX, "activemask");
                assert_eq!(vt[4], 0x1111_1111u32 << (l & 3), "match_any");
                assert_eq!(vt[5], (0..32).sum::<u32>(), "reduce_add");
            }
        }
    }
}

#[test]
fn partial_warps_and_half_warp_masks() {
    let dev = EmuDevice::new();
    let (o, v) = (zeros(&dev, 4 * 48), zeros(&dev, 4 * 48));
    let a = HtArgs {
        out: o.addr,
        aux: v.addr,
        ..Default::default()
    };
    launch(&dev, "harness_test_partial_warp", cfg1(1, 48), a).unwrap();
    let mask: Vec<u32> = down(&dev, &o, 48);
    let sums: Vec<u32> = down(&dev, &v, 48);
    for (t, &m) in mask.iter().enumerate() {
        assert_eq!(m, if t < 32 { u32::MAX } else { 0xffff }, "thread {t}");
    }
    for t in (0..16).chain(32..48) {
        let base = t as u32 & !15;
        assert_eq!(sums[t], (base..base + 16).sum::<u32>(), "thread {t}");
    }
}

#[test]
fn atomics_on_shared_and_global_memory() {
    let n = 1000usize;
    let vals: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % 2003).collect();
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let mut init = vec![0u32; 69];
        init[67] = i32::MIN as u32;
        init[68] = i32::MAX as u32;
        let (i, o, f) = (up(&dev, &vals), up(&dev, &init), zeros(&dev, 8));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            aux: f.addr,
            n: n as u32,
            ..Default::default()
        };
        launch(&dev, "harness_test_atomics", cfg1(4, 64), a).unwrap();
        let out: Vec<u32> = down(&dev, &o, 69);
        let fl: Vec<f32> = down(&dev, &f, 2);
        let mut hist = vec![0u32; 64];
        for v in &vals {
            hist[(v & 63) as usize] += 1;
        }
        assert_eq!(&out[..64], &hist[..]);
        assert_eq!(out[64], n as u32, "atomicCAS loop");
        assert!(
            vals.contains(&out[65]),
            "atomicExch leaves one of the values"
        );
        assert_eq!(out[66], n as u32 % 8, "atomicInc wraps at 7");
        assert_eq!(out[67] as i32, *vals.iter().max().unwrap() as i32 - 1000);
        assert_eq!(out[68] as i32, *vals.iter().min().unwrap() as i32 - 1000);
        assert_eq!(fl, vec![n as f32, n as f32 * 0.5]);
    }
}

#[test]
fn dynamic_shared_memory() {
    let x = randoms(4 * 64, 4);
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let (i, o) = (up(&dev, &x), zeros(&dev, 4 * x.len()));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            n: x.len() as u32,
            ..Default::default()
        };
        launch(
            &dev,
            "harness_test_reverse",
            cfg([4, 1, 1], [64, 1, 1], 256),
            a,
        )
        .unwrap();
        let got: Vec<f32> = down(&dev, &o, x.len());
        for (b, c) in got.chunks(64).enumerate() {
            let want: Vec<f32> = x[64 * b..64 * b + 64].iter().rev().copied().collect();
            assert_eq!(c, &want[..]);
        }
    }
}

#[test]
fn static_shared_memory_is_poisoned_in_every_block() {
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s).with_workers(1);
        let o = zeros(&dev, 4 * 8);
        let a = HtArgs {
            out: o.addr,
            ..Default::default()
        };
        launch(&dev, "harness_test_poison", cfg1(4, 32), a).unwrap();
        let got: Vec<f32> = down(&dev, &o, 8);
        assert_eq!(got[0], 5.0);
        for b in 0..4 {
            if b > 0 {
                assert!(
                    got[2 * b].is_nan(),
                    "{s:?}: block {b} saw another block's write: {got:?}"
                );
            }
            assert_eq!(got[2 * b + 1], b as f32);
        }
    }
}

#[test]
fn namespace_scope_shared_variable_is_per_block() {
    for s in SCHEDULES {
        let dev = EmuDevice::with_schedule(s);
        let o = zeros(&dev, 4 * 5);
        let a = HtArgs {
            out: o.addr,
            ..Default::default()
        };
        launch(&dev, "harness_test_ns_shared", cfg1(5, 96), a).unwrap();
        assert_eq!(down::<u32>(&dev, &o, 5), vec![96; 5]);
    }
}

#[test]
fn device_memory_starts_poisoned() {
    let dev = EmuDevice::new();
    let p = dev.alloc(37).unwrap();
    let got: Vec<u8> = down(&dev, &p, 37);
    assert!(got.iter().all(|&b| b == 0xff));
    dev.memset_zero(&p).unwrap();
    assert!(down::<u8>(&dev, &p, 37).iter().all(|&b| b == 0));
    let e = dev.upload(&p, 30, &[0u8; 8]).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    let mut buf = [0u8; 2];
    assert!(dev.download(&p, 36, &mut buf).is_err());
    dev.free(&p);
    assert!(dev
        .download(&p, 0, &mut buf)
        .unwrap_err()
        .to_string()
        .contains("not a live allocation"));
}

#[test]
fn barrier_reductions() {
    let dev = EmuDevice::new();
    let o = zeros(&dev, 4 * 6);
    launch(
        &dev,
        "harness_test_sync_ops",
        cfg1(2, 100),
        HtArgs {
            out: o.addr,
            ..Default::default()
        },
    )
    .unwrap();
    let got: Vec<i32> = down(&dev, &o, 6);
    assert_eq!(got, vec![34, 1, 1, 34, 1, 1]);
}

#[test]
fn grid_and_block_indices_in_3d() {
    let (g, b) = ([2u32, 3, 2], [4u32, 2, 3]);
    let dev = EmuDevice::with_schedule(Schedule::Reverse);
    let total = (g.iter().product::<u32>() * b.iter().product::<u32>()) as usize;
    let o = zeros(&dev, 4 * total);
    let dims = (g[0] | g[1] << 4 | g[2] << 8 | b[0] << 12 | b[1] << 16 | b[2] << 20) as i32;
    let a = HtArgs {
        out: o.addr,
        param: dims,
        ..Default::default()
    };
    launch(&dev, "harness_test_index", cfg(g, b, 0), a).unwrap();
    let got: Vec<u32> = down(&dev, &o, total);
    let mut k = 0;
    for bz in 0..g[2] {
        for by in 0..g[1] {
            for bx in 0..g[0] {
                for tz in 0..b[2] {
                    for ty in 0..b[1] {
                        for tx in 0..b[0] {
                            let want =
                                bx | by << 4 | bz << 8 | tx << 12 | ty << 16 | tz << 20 | 1 << 24;
                            assert_eq!(got[k], want, "linear thread {k}");
                            k += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn math_intrinsics() {
    let mut x = randoms(256, 5);
    x.iter_mut().for_each(|v| *v *= 3.0);
    x[0] = 0.0;
    x[1] = -0.05;
    x[2] = 0.25; // 2.5 -> rounds to even: 2
    let dev = EmuDevice::new();
    let (i, o) = (up(&dev, &x), zeros(&dev, 4 * 16 * x.len()));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: x.len() as u32,
        ..Default::default()
    };
    launch(&dev, "harness_test_math", cfg1(4, 64), a).unwrap();
    let got: Vec<f32> = down(&dev, &o, 16 * x.len());
    let close = |a: f32, b: f32| a == b || (a - b).abs() <= 2e-6 * b.abs().max(1.0);
    for (j, &v) in x.iter().enumerate() {
        let g = &got[16 * j..16 * j + 16];
        let l = (v.abs() + 1.0).ln();
        let want = [
            v.exp(),
            v.exp(),
            l,
            l,
            1.0 / (v.abs() + 1.0).sqrt(),
            libm::erff(v),
            v.tanh(),
            v / 3.0,
            v.mul_add(2.0, 1.0),
            v,
            v.clamp(0.0, 1.0),
            (v * 10.0).round_ties_even(),
            v,
            ((v * 4.0) as i32).max(-1) as f32 + 7.0,
            if v > 0.0 {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            },
            v.abs().sqrt(),
        ];
        for k in 0..16 {
            assert!(
                close(g[k], want[k]),
                "x = {v}, intrinsic {k}: got {}, want {}",
                g[k],
                want[k]
            );
        }
    }
}

// ---- bf16 / f16 ----

/// f32 inputs that exercise rounding: specials, ties (odd and even), boundaries, subnormals,
/// and random bit patterns.
fn conversion_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        65536.0,
        2f32.powi(-14),
        2f32.powi(-24),
        2f32.powi(-25),
        1.5 * 2f32.powi(-25),
        2f32.powi(-26),
        3.0 * 2f32.powi(-25),
        f32::from_bits(0x7f7f_8000), // bf16 tie just below max: rounds to inf
        f32::from_bits(0x7f7f_7fff),
    ];
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s as u32
    };
    for _ in 0..20000 {
        let u = next();
        v.push(f32::from_bits(u));
        v.push(f32::from_bits((u & 0xffff_0000) | 0x8000)); // bf16 tie
        v.push(f32::from_bits((u & 0xffff_0000) | 0x8001)); // just above a tie
        v.push(f32::from_bits((u & 0xffff_0000) | 0x7fff)); // just below
                                                            // f16 range: exponent 2^-27 .. 2^17, ties in the low 13 bits and subnormal ties.
        let e = 100 + (u >> 24) % 45;
        let m = next() & 0x007f_ffff;
        v.push(f32::from_bits(
            e << 23 | (m & !0x1fff) | 0x1000 | (u & 0x8000_0000),
        ));
        v.push(f32::from_bits(e << 23 | m | (u & 0x8000_0000)));
    }
    v
}

#[test]
fn bf16_and_f16_round_like_the_hardware() {
    let x = conversion_inputs();
    let n = x.len();
    let dev = EmuDevice::new();
    let (i, b, h) = (up(&dev, &x), zeros(&dev, 2 * n), zeros(&dev, 2 * n));
    let a = HtArgs {
        out: b.addr,
        inp: i.addr,
        aux: h.addr,
        n: n as u32,
        ..Default::default()
    };
    launch(
        &dev,
        "harness_test_to_16",
        cfg1(n.div_ceil(128) as u32, 128),
        a,
    )
    .unwrap();
    let bf: Vec<u16> = down(&dev, &b, n);
    let hf: Vec<u16> = down(&dev, &h, n);
    for k in 0..n {
        let v = x[k];
        let (wb, wh) = (half::bf16::from_f32(v), half::f16::from_f32(v));
        if v.is_nan() {
            // The hardware (cvt.rn) returns the canonical NaN; the half crate keeps the payload.
            assert_eq!(bf[k], 0x7fff, "bf16 of NaN {:#x}", v.to_bits());
            assert_eq!(hf[k], 0x7fff, "f16 of NaN {:#x}", v.to_bits());
        } else {
            assert_eq!(bf[k], wb.to_bits(), "bf16 of {v:e} ({:#010x})", v.to_bits());
            assert_eq!(hf[k], wh.to_bits(), "f16 of {v:e} ({:#010x})", v.to_bits());
        }
    }

    // Back to f32, every 16-bit pattern.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let (i, o) = (up(&dev, &all), zeros(&dev, 8 * all.len()));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: all.len() as u32,
        ..Default::default()
    };
    launch(&dev, "harness_test_from_16", cfg1(512, 128), a).unwrap();
    let got: Vec<f32> = down(&dev, &o, 2 * all.len());
    for &u in &all {
        let (wb, wh) = (
            half::bf16::from_bits(u).to_f32(),
            half::f16::from_bits(u).to_f32(),
        );
        let (gb, gh) = (got[2 * u as usize], got[2 * u as usize + 1]);
        assert!(
            gb.to_bits() == wb.to_bits() || (gb.is_nan() && wb.is_nan()),
            "bf16 {u:#x}"
        );
        assert!(
            gh.to_bits() == wh.to_bits() || (gh.is_nan() && wh.is_nan()),
            "f16 {u:#x}"
        );
    }

    // Operators: bf16(x) * bf16(2) + bf16(1), each step rounded.
    let x = randoms(1000, 6);
    let (i, o) = (up(&dev, &x), zeros(&dev, 4 * x.len()));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: x.len() as u32,
        ..Default::default()
    };
    launch(&dev, "harness_test_bf16_ops", cfg1(8, 128), a).unwrap();
    let got: Vec<f32> = down(&dev, &o, x.len());
    for (k, &v) in x.iter().enumerate() {
        let bf = |f: f32| half::bf16::from_f32(f).to_f32();
        assert_eq!(got[k], bf(bf(bf(v) * 2.0) + 1.0), "x = {v}");
    }
}

// ---- planted bugs: each must come back as an error naming kernel, block and thread ----

#[test]
fn off_by_one_read_is_reported() {
    let dev = EmuDevice::new();
    let x = randoms(100, 7); // 400 bytes: in[100] is the first byte of the guard page
    let (i, o) = (up(&dev, &x), zeros(&dev, 400));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: 100,
        ..Default::default()
    };
    launch(&dev, "harness_test_scale", cfg1(2, 64), a).unwrap();
    let msg = expect_err(
        launch(&dev, "harness_test_scale_off_by_one", cfg1(2, 64), a),
        &[
            "kernel `harness_test_scale_off_by_one`",
            "bounds.cu",
            "block (1,0,0) thread (36,0,0)",
            "invalid read",
        ],
    );
    assert!(
        msg.contains(&format!(
            "0 bytes past the end of allocation {:#x} (400 bytes",
            i.handle
        )),
        "{msg}"
    );
    still_works(&dev);
}

#[test]
fn out_of_bounds_write_is_reported() {
    let x = randoms(128, 8);
    // Forward: block 0 is fine; block 1 thread 0 (i = 64) is the first to store out[128].
    // Reverse: block 1 thread 63 (i = 127) stores out[254] first, 504 bytes past the end.
    for (s, thread, past) in [(Schedule::Forward, 0, 0), (Schedule::Reverse, 63, 504)] {
        let dev = EmuDevice::with_schedule(s).with_workers(1);
        let (i, o) = (up(&dev, &x), zeros(&dev, 512));
        let a = HtArgs {
            out: o.addr,
            inp: i.addr,
            n: 128,
            ..Default::default()
        };
        launch(&dev, "harness_test_stride_store", cfg1(2, 64), a).unwrap();
        let msg = expect_err(
            launch(&dev, "harness_test_stride_store_oob", cfg1(2, 64), a),
            &[
                "kernel `harness_test_stride_store_oob`",
                &format!("block (1,0,0) thread ({thread},0,0)"),
                "invalid write",
                &format!("{past} bytes past the end of allocation {:#x}", o.handle),
            ],
        );
        assert!(!msg.contains("invalid read"), "{msg}");
        still_works(&dev);
    }
}

#[test]
fn write_into_the_alignment_gap_is_caught_by_the_guard_bytes() {
    let dev = EmuDevice::new();
    let o = zeros(&dev, 20); // 5 floats; out[5] lands in the 12-byte gap before the guard page
    let a = HtArgs {
        out: o.addr,
        n: 5,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_tail_write", cfg1(1, 64), a),
        &[
            "kernel `harness_test_tail_write`",
            "wrote outside allocation",
            "4 guard byte(s) changed",
            "0 bytes past its end",
        ],
    );
    // The pattern is restored: the device checks clean afterwards.
    dev.synchronize().unwrap();
    still_works(&dev);
}

#[test]
fn null_pointer_and_use_after_free_are_reported() {
    let dev = EmuDevice::new().with_workers(1);
    let o = zeros(&dev, 256);
    let a = HtArgs {
        out: o.addr,
        aux: 0,
        n: 64,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_deref", cfg1(1, 64), a),
        &[
            "kernel `harness_test_deref`",
            "block (0,0,0) thread (0,0,0)",
            "invalid read at 0x0",
            "null",
        ],
    );
    still_works(&dev); // maps every worker stack this test will need
    let i = up(&dev, &randoms(64, 9));
    let stale = i.addr;
    dev.free(&i);
    let a = HtArgs {
        out: o.addr,
        aux: stale,
        n: 64,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_deref", cfg1(1, 64), a),
        &["invalid read", "use after free"],
    );
}

#[test]
fn dynamic_shared_overread_is_reported() {
    let dev = EmuDevice::new();
    let x = randoms(128, 10);
    let (i, o) = (up(&dev, &x), zeros(&dev, 512));
    let a = HtArgs {
        out: o.addr,
        inp: i.addr,
        n: 128,
        ..Default::default()
    };
    expect_err(
        launch(
            &dev,
            "harness_test_reverse_overread",
            cfg([2, 1, 1], [64, 1, 1], 256),
            a,
        ),
        &[
            "harness_test_reverse_overread",
            "thread (0,0,0)",
            "0 bytes past the end of dynamic shared memory",
            "256",
        ],
    );
    still_works(&dev);
}

#[test]
fn divergent_barrier_deadlock_is_reported() {
    let dev = EmuDevice::new();
    let o = zeros(&dev, 4 * 64);
    expect_err(
        launch(
            &dev,
            "harness_test_divergent_shuffle",
            cfg1(1, 64),
            HtArgs {
                out: o.addr,
                ..Default::default()
            },
        ),
        &[
            "harness_test_divergent_shuffle",
            "deadlock",
            "__shfl_xor_sync",
            "__syncthreads",
        ],
    );
    still_works(&dev);
}

#[test]
fn assert_trap_division_and_stack_overflow_are_reported() {
    let dev = EmuDevice::new();
    let o = zeros(&dev, 4 * 64);
    let a = HtArgs {
        out: o.addr,
        n: 10,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_assert", cfg1(2, 32), a),
        &["harness_test_assert", "assertion `a.n < 5` failed"],
    );
    let a = HtArgs {
        out: o.addr,
        param: 3,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_trap", cfg1(1, 32), a),
        &["harness_test_trap", "thread (3,0,0)", "__trap()"],
    );
    let a = HtArgs {
        out: o.addr,
        param: 0,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_divide", cfg1(1, 32), a),
        &["harness_test_divide", "integer division by zero"],
    );
    let a = HtArgs {
        out: o.addr,
        param: 1,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_big_stack", cfg1(1, 4), a),
        &["harness_test_big_stack", "stack overflow"],
    );
    still_works(&dev);
}

#[test]
fn bad_launches_are_errors() {
    let dev = EmuDevice::new();
    let o = zeros(&dev, 1024);
    let a = HtArgs {
        out: o.addr,
        inp: o.addr,
        n: 1,
        ..Default::default()
    };
    expect_err(
        launch(&dev, "harness_test_two_args", cfg1(1, 32), a),
        &["harness_test_two_args", "more than one argument"],
    );
    expect_err(
        launch(&dev, "no_such_kernel", cfg1(1, 32), a),
        &["no kernel `no_such_kernel`"],
    );
    expect_err(
        dev.launch("harness_test_scale", cfg1(1, 32), &[0u8; 12]),
        &["12 bytes", "32 bytes"],
    );
    expect_err(
        launch(&dev, "harness_test_scale", cfg1(1, 2048), a),
        &["block (2048,1,1)"],
    );
    expect_err(
        launch(&dev, "harness_test_scale", cfg1(0, 32), a),
        &["grid (0,1,1)"],
    );
    expect_err(
        launch(
            &dev,
            "harness_test_scale",
            cfg([1, 1, 1], [32, 1, 1], 1 << 20),
            a,
        ),
        &["dynamic shared memory"],
    );
    still_works(&dev);
}

/// Every `extern "C" __global__` kernel written out in kernels/*.cu is launchable by name.
#[test]
fn every_kernel_in_kernels_dir_is_registered() {
    let names = EmuDevice::kernel_names().unwrap();
    assert!(names.contains(&"harness_test_block_sum"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        for line in src
            .lines()
            .filter(|l| l.trim_start().starts_with("extern \"C\" __global__"))
        {
            let mut l = line.to_string();
            while let Some(p) = l.find("__launch_bounds__(") {
                let end = p + l[p..].find(')').unwrap();
                l.replace_range(p..=end, "");
            }
            let name = l
                .split('(')
                .next()
                .and_then(|s| s.split_whitespace().last())
                .unwrap_or("");
            assert!(
                names.contains(&name),
                "{} defines `{name}`, missing from the harness",
                path.display()
            );
        }
    }
}
