//! Out of device memory during candidate scoring: the scorer halves its candidate calls and
//! the run goes on with the same results. Runs a GCG step on the GPU backend over the CPU
//! execution harness (EmuDevice) with no memory cap, then with caps that leave too little
//! memory for the step's scoring call, and requires identical losses, picks and FLOP counts;
//! a cap that leaves no room for even one candidate gives `Error::OutOfMemory` (no panic), and
//! the backend works again afterwards. The victim remembers the size that fitted: a second
//! step under the same cap is refused fewer times, with the same results. (512 candidates, so
//! that scoring, not the gradient pass, is what overflows first.)
//!
//! With feature `cuda` and a GPU the same test runs on the device, its memory capped by a
//! counting wrapper (`Capped`, below) that refuses allocations as a full GPU does, so the
//! real device's allocator, kernels, sticky errors and synchronizes go through every split
//! and failure; no GPU: a visible SKIPPED line. The device leg launches the engine's own GEMM
//! kernel (kernels/gemm.cu) rather than cuBLASLt: cuBLASLt may pick another algorithm for a
//! split call's fewer rows and change the last bits (src/attack/scoring.rs), the engine's
//! kernels compute each row the same whatever the batch, so bit-identical results stay the
//! requirement there too.

mod common;

use armsrace::attack::subject::{build_subjects, AttackState};
use armsrace::attack::FastPaths;
use armsrace::attack::{Attack, Gcg, GcgConfig, GoalSpec, StepReport, Subject, Victim, Vocab};
use armsrace::backend::gpu::device::KernelDevice;
use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::error::Result;
use armsrace::task::{attack_init, Task, ThreatModel};
use armsrace::tokenize::Tokenizer;
use armsrace::Model;
use common::fixture;

/// A device whose memory can be capped and measured (the harness does it itself; a GPU
/// through [`Capped`]).
trait MemCap: KernelDevice + Sized {
    fn set_mem_cap(&self, bytes: Option<usize>);
    fn mem_used(&self) -> usize;
    fn mem_peak(&self) -> usize;
    fn reset_mem_peak(&self);
    fn oom_count(&self) -> usize;
}

impl MemCap for EmuDevice {
    fn set_mem_cap(&self, bytes: Option<usize>) {
        EmuDevice::set_mem_cap(self, bytes)
    }
    fn mem_used(&self) -> usize {
        EmuDevice::mem_used(self)
    }
    fn mem_peak(&self) -> usize {
        EmuDevice::mem_peak(self)
    }
    fn reset_mem_peak(&self) {
        EmuDevice::reset_mem_peak(self)
    }
    fn oom_count(&self) -> usize {
        EmuDevice::oom_count(self)
    }
}

#[cfg(feature = "cuda")]
mod capped {
    use super::MemCap;
    use armsrace::backend::gpu::device::{DevicePtr, GemmDesc, KernelDevice, LaunchConfig};
    use armsrace::error::{Error, Result};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A real device with a memory cap: allocations past `cap` bytes live fail with
    /// `Error::OutOfMemory`, as the driver's do on a full GPU; everything else goes to the
    /// device, except library GEMMs (see the module documentation).
    pub struct Capped<D: KernelDevice> {
        dev: D,
        cap: AtomicUsize,
        used: AtomicUsize,
        peak: AtomicUsize,
        ooms: AtomicUsize,
    }

    impl<D: KernelDevice> Capped<D> {
        pub fn new(dev: D) -> Self {
            Capped {
                dev,
                cap: AtomicUsize::new(usize::MAX),
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                ooms: AtomicUsize::new(0),
            }
        }
    }

    impl<D: KernelDevice> KernelDevice for Capped<D> {
        fn name(&self) -> String {
            format!("{} (memory-capped for the test)", self.dev.name())
        }
        fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
            let cap = self.cap.load(SeqCst);
            let reserved = self.used.fetch_update(SeqCst, SeqCst, |u| {
                u.checked_add(bytes).filter(|&t| t <= cap)
            });
            let used = match reserved {
                Ok(used) => used,
                Err(used) => {
                    self.ooms.fetch_add(1, SeqCst);
                    return Err(Error::out_of_memory(
                        self.name(),
                        bytes,
                        format!(
                            ", {} bytes free of a {cap}-byte cap",
                            cap.saturating_sub(used)
                        ),
                    ));
                }
            };
            match self.dev.alloc(bytes) {
                Ok(p) => {
                    self.peak.fetch_max(used + bytes, SeqCst);
                    Ok(p)
                }
                Err(e) => {
                    self.used.fetch_sub(bytes, SeqCst);
                    Err(e)
                }
            }
        }
        fn free(&self, ptr: &DevicePtr) {
            self.dev.free(ptr);
            self.used.fetch_sub(ptr.bytes, SeqCst);
        }
        fn upload(&self, dst: &DevicePtr, offset: usize, src: &[u8]) -> Result<()> {
            self.dev.upload(dst, offset, src)
        }
        fn download(&self, src: &DevicePtr, offset: usize, dst: &mut [u8]) -> Result<()> {
            self.dev.download(src, offset, dst)
        }
        fn memset_zero(&self, dst: &DevicePtr) -> Result<()> {
            self.dev.memset_zero(dst)
        }
        fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[u8]) -> Result<()> {
            self.dev.launch(kernel, cfg, args)
        }
        fn synchronize(&self) -> Result<()> {
            self.dev.synchronize()
        }
        fn gemm(&self, _desc: &GemmDesc) -> Option<Result<()>> {
            None // the engine's kernels/gemm.cu: row results independent of the row count
        }
        fn is_hardware(&self) -> bool {
            self.dev.is_hardware()
        }
    }

    impl<D: KernelDevice> MemCap for Capped<D> {
        fn set_mem_cap(&self, bytes: Option<usize>) {
            self.cap.store(bytes.unwrap_or(usize::MAX), SeqCst);
        }
        fn mem_used(&self) -> usize {
            self.used.load(SeqCst)
        }
        fn mem_peak(&self) -> usize {
            self.peak.load(SeqCst)
        }
        fn reset_mem_peak(&self) {
            self.peak.store(self.mem_used(), SeqCst);
        }
        fn oom_count(&self) -> usize {
            self.ooms.load(SeqCst)
        }
    }
}

struct Setup<D: MemCap> {
    be: GpuBackend<D>,
    model: Model<GpuBackend<D>>,
    tok: Tokenizer,
    vocab: Vocab,
}

fn setup<D: MemCap>(dev: D) -> Setup<D> {
    let dir = fixture("neox-parallel-cls");
    let be = GpuBackend::new(dev, Precision::F32);
    let model = Model::load(&dir, be.clone()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    Setup {
        be,
        model,
        tok,
        vocab,
    }
}

fn subjects<D: MemCap>(s: &Setup<D>) -> Vec<Subject<GpuBackend<D>>> {
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(2, 3).unwrap();
    let init = attack_init(&s.tok, 6).unwrap();
    let threat = ThreatModel::parse("suffix").unwrap();
    let spec = GoalSpec::Classify;
    let mut subs = build_subjects(
        &s.tok, &task.def, &examples, &threat, 0, &spec, &init, false,
    )
    .unwrap();
    for sub in subs.iter_mut() {
        sub.ensure_cache(&s.model).unwrap();
    }
    subs
}

/// One GCG iteration on `subs` (fresh ones, prompt caches built): the reports and the attack
/// states it leaves.
fn gcg_step<D: MemCap>(
    s: &Setup<D>,
    subs: Vec<Subject<GpuBackend<D>>>,
) -> Result<(Vec<StepReport>, Vec<AttackState>)> {
    gcg_step_on(&victim(s), subs)
}

fn victim<D: MemCap>(s: &Setup<D>) -> Victim<'_, GpuBackend<D>> {
    Victim {
        model: &s.model,
        tok: Some(&s.tok),
        vocab: &s.vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    }
}

/// The same step on a given victim (which remembers a scoring size that fitted).
fn gcg_step_on<D: MemCap>(
    v: &Victim<'_, GpuBackend<D>>,
    mut subs: Vec<Subject<GpuBackend<D>>>,
) -> Result<(Vec<StepReport>, Vec<AttackState>)> {
    let gcg = Gcg::new(GcgConfig {
        search_width: 512,
        topk: 32,
        filter: false,
        ..GcgConfig::default()
    });
    let mut refs: Vec<&mut Subject<GpuBackend<D>>> = subs.iter_mut().collect();
    let reports = gcg.step(v, &mut refs, 1)?;
    Ok((reports, subs.into_iter().map(|x| x.state).collect()))
}

fn assert_same(
    what: &str,
    got: &(Vec<StepReport>, Vec<AttackState>),
    want: &(Vec<StepReport>, Vec<AttackState>),
) {
    for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
        assert_eq!(
            g.loss.to_bits(),
            w.loss.to_bits(),
            "{what}: example {i} loss {} vs {}",
            g.loss,
            w.loss
        );
    }
    assert_eq!(got.0, want.0, "{what}: step reports");
    assert_eq!(got.1, want.1, "{what}: attacks picked");
}

#[test]
fn oom_in_scoring_halves_the_batch_with_the_same_results() {
    // One worker: blocks run in a fixed order, so even float atomics are reproducible and
    // any difference below comes from the split alone.
    oom_halves(EmuDevice::new().with_workers(1));
    #[cfg(feature = "cuda")]
    match armsrace::backend::gpu::cuda::CudaDevice::new(0) {
        Ok(dev) => oom_halves(capped::Capped::new(dev)),
        Err(e) => println!(
            "SKIPPED: no CUDA device ({e}): out-of-memory splits checked on the CPU harness only"
        ),
    }
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: no CUDA device (built without feature `cuda`): out-of-memory splits checked on the CPU harness only");
}

fn oom_halves<D: MemCap>(dev: D) {
    let s = setup(dev);
    let dev = s.be.device();
    println!("device: {}", dev.name());
    let subs = subjects(&s);
    s.be.trim();
    let base = dev.mem_used();
    dev.reset_mem_peak();
    let want = gcg_step(&s, subs).unwrap();
    s.be.check().unwrap();
    let need = dev.mem_peak() - base;
    assert!(need > 0, "the step allocated device memory");

    // Caps between the step's peak and almost nothing: the larger ones must split the
    // scoring calls and agree; the smallest leave no room for even the gradient pass or one
    // candidate and must fail with OutOfMemory.
    let mut split_ok = 0;
    let mut failed = 0;
    for frac in [0.6, 0.4, 0.25, 0.0] {
        let subs = subjects(&s);
        s.be.trim();
        let cap = dev.mem_used() + (need as f64 * frac) as usize;
        dev.set_mem_cap(Some(cap));
        let ooms = dev.oom_count();
        let v = victim(&s);
        let got = gcg_step_on(&v, subs);
        let refusals = dev.oom_count() - ooms;
        let hit = refusals > 0;
        println!(
            "cap {frac} of the step's {need} bytes: {refusals} refusals, {}",
            if got.is_ok() { "ok" } else { "failed" }
        );
        match got {
            Ok(got) => {
                s.be.check().unwrap();
                assert_same(&format!("cap {frac} of the peak"), &got, &want);
                // A refusal the allocator absorbs (it frees its cache and retries) splits
                // nothing; a scoring call that failed did, and set the victim's cap.
                if v.rows_cap.get().is_some() {
                    split_ok += 1;
                    // The victim remembers a size that fitted: the next step under the same
                    // cap is refused less often and gives the same result.
                    s.be.trim();
                    let before = dev.oom_count();
                    let next = gcg_step_on(&v, subjects(&s)).unwrap();
                    let refused_again = dev.oom_count() - before;
                    println!("  next step on the same victim: {refused_again} refusals");
                    assert!(
                        refused_again < refusals,
                        "cap {frac}: {refused_again} refusals after the first step's {refusals}"
                    );
                    assert_same(&format!("cap {frac}, second step"), &next, &want);
                }
                dev.set_mem_cap(None);
            }
            Err(e) => {
                dev.set_mem_cap(None);
                assert!(
                    e.is_out_of_memory(),
                    "cap {frac}: expected OutOfMemory, got {e}"
                );
                assert!(hit, "cap {frac}: the device refused an allocation");
                // The error was handed over: the backend is clean again.
                s.be.check().unwrap();
                failed += 1;
            }
        }
    }
    assert!(
        split_ok > 0,
        "some cap forced the scorer to split and it still succeeded"
    );
    assert!(failed > 0, "the smallest cap made the step fail");

    // After every failure above the backend still works and gives the same step.
    let again = gcg_step(&s, subjects(&s)).unwrap();
    assert_same("after the failures", &again, &want);
}
