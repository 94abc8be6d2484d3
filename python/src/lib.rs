//! `armsrace._armsrace`: the engine's Python bindings (the `armsrace` package wraps them).
//!
//! Engine work runs with the GIL released. An attack runs on a worker thread while the
//! calling thread waits for its progress messages without the GIL, calls the Python
//! progress callback with it, and checks for signals: on Ctrl-C it asks the engine to stop
//! at its next safe point (`armsrace::interrupt`), waits for it, and raises
//! KeyboardInterrupt; the results written so far resume like a killed run's. Engine errors
//! become Python exceptions with the engine's message (ValueError for bad input, OSError for
//! files, ArmsraceError otherwise); a panic in the engine surfaces as PanicException, never
//! an abort.

use armsrace::attack::budget::generative_params;
use armsrace::attack::runner::{Progress, RunOutput};
use armsrace::attack::session::{
    attack_examples, load_examples, run_plan_on, AttackSpec, ExampleRun, Plan, Target,
};
use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::model::config::{Arch, HeadKind};
use armsrace::task::Task;
use armsrace::tokenize::Tokenizer;
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

create_exception!(
    _armsrace,
    ArmsraceError,
    PyException,
    "An error of the armsrace engine (its message names the file, tensor or field)."
);

fn py_err(e: armsrace::Error) -> PyErr {
    use armsrace::Error as E;
    let msg = e.to_string();
    match e {
        E::Input(_) | E::Config { .. } => PyValueError::new_err(msg),
        E::Io { .. } => PyOSError::new_err(msg),
        E::Interrupted => PyKeyboardInterrupt::new_err(msg),
        _ => ArmsraceError::new_err(msg),
    }
}

/// A model on one of the backends.
enum AnyModel {
    Cpu(Model<Cpu>),
    /// The CUDA kernels on the CPU execution harness (slow; checks the GPU path anywhere).
    Emu(Model<GpuBackend<EmuDevice>>),
    #[cfg(feature = "cuda")]
    Cuda(Model<GpuBackend<armsrace::backend::gpu::cuda::CudaDevice>>),
}

/// Runs `$body` with `$m` bound to the concrete `Model<B>` of `$any`.
macro_rules! with_model {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            AnyModel::Cpu($m) => $body,
            AnyModel::Emu($m) => $body,
            #[cfg(feature = "cuda")]
            AnyModel::Cuda($m) => $body,
        }
    };
}

fn precision(dtype: &str) -> PyResult<Precision> {
    match dtype {
        "f32" | "float32" => Ok(Precision::F32),
        "bf16" | "bfloat16" => Ok(Precision::Bf16),
        d => Err(PyValueError::new_err(format!(
            "dtype {d:?}: use \"f32\" or \"bf16\""
        ))),
    }
}

fn load_any(dir: &Path, device: &str, dtype: &str) -> PyResult<AnyModel> {
    let p = precision(dtype)?;
    let e = py_err;
    match device {
        "cpu" => {
            if p != Precision::F32 {
                return Err(PyValueError::new_err(
                    "dtype \"bf16\" needs device=\"cuda\" (the CPU backend computes in f32)",
                ));
            }
            Ok(AnyModel::Cpu(Model::load(dir, Cpu).map_err(e)?))
        }
        "emu" => Ok(AnyModel::Emu(
            Model::load(dir, GpuBackend::new(EmuDevice::new(), p)).map_err(e)?,
        )),
        "cuda" => load_cuda(dir, p),
        d => Err(PyValueError::new_err(format!(
            "device {d:?}: use \"cpu\" or \"cuda\" (\"emu\": the CUDA kernels on the CPU harness)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn load_cuda(dir: &Path, p: Precision) -> PyResult<AnyModel> {
    use armsrace::backend::gpu::cuda::CudaDevice;
    let dev = CudaDevice::new(0).map_err(|e| ArmsraceError::new_err(format!("cuda: {e}")))?;
    Ok(AnyModel::Cuda(
        Model::load(dir, GpuBackend::new(dev, p)).map_err(py_err)?,
    ))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_: &Path, _: Precision) -> PyResult<AnyModel> {
    Err(ArmsraceError::new_err(
        "device=\"cuda\": this build has no CUDA support; reinstall with \
         `pip install ./python --config-settings=build-args=\"--features cuda\"`",
    ))
}

/// A checkpoint loaded onto a backend, with its tokenizer.
#[pyclass(name = "Model", module = "armsrace._armsrace", frozen)]
struct PyModel {
    inner: AnyModel,
    tok: Tokenizer,
    dir: PathBuf,
    device: String,
    dtype: String,
}

impl PyModel {
    fn cfg(&self) -> &armsrace::ModelConfig {
        with_model!(&self.inner, m => &m.cfg)
    }

    fn batch(&self, seqs: &[Vec<u32>]) -> PyResult<Batch> {
        let pad = self.cfg().pad_token_id.unwrap_or(0);
        Batch::from_sequences(seqs, pad).map_err(py_err)
    }

    /// The objective of `batch`: class labels, or per-sequence target masks (causal LM).
    fn objective(
        &self,
        batch: &Batch,
        labels: Option<Vec<u32>>,
        target_mask: Option<Vec<Vec<bool>>>,
    ) -> PyResult<Objective> {
        match (labels, target_mask) {
            (Some(labels), None) => {
                if labels.len() != batch.batch {
                    return Err(PyValueError::new_err(format!(
                        "{} labels for {} sequences",
                        labels.len(),
                        batch.batch
                    )));
                }
                Ok(Objective::Classify { labels })
            }
            (None, Some(masks)) => {
                if masks.len() != batch.batch {
                    return Err(PyValueError::new_err(format!(
                        "{} target masks for {} sequences",
                        masks.len(),
                        batch.batch
                    )));
                }
                let mut mask = vec![false; batch.rows()];
                for (b, m) in masks.iter().enumerate() {
                    if m.len() != batch.lens[b] {
                        return Err(PyValueError::new_err(format!(
                            "target mask {b} has {} entries for a sequence of {} tokens",
                            m.len(),
                            batch.lens[b]
                        )));
                    }
                    mask[b * batch.seq..b * batch.seq + m.len()].copy_from_slice(m);
                }
                Ok(Objective::Target { mask })
            }
            _ => Err(PyValueError::new_err(
                "give exactly one of labels (a classifier) or target_mask (a causal LM)",
            )),
        }
    }
}

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}

#[pymethods]
impl PyModel {
    /// Loads a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json).
    #[staticmethod]
    #[pyo3(signature = (dir, device = "cpu", dtype = "f32"))]
    fn load(py: Python<'_>, dir: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let (inner, tok) = py.detach(|| -> PyResult<_> {
            let inner = load_any(&dir, device, dtype)?;
            let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).map_err(py_err)?;
            Ok((inner, tok))
        })?;
        Ok(PyModel {
            inner,
            tok,
            dir,
            device: device.to_string(),
            dtype: dtype.to_string(),
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }
    #[getter]
    fn device(&self) -> &str {
        &self.device
    }
    #[getter]
    fn dtype(&self) -> &str {
        &self.dtype
    }
    /// N as the study counts it: input embeddings and score head in, LM head out.
    #[getter]
    fn n_params(&self) -> usize {
        armsrace::model::param_count(self.cfg())
    }
    /// N_gen: the causal LM's parameters (untied output embedding in, score head out).
    #[getter]
    fn n_gen(&self) -> usize {
        generative_params(self.cfg())
    }
    #[getter]
    fn architecture(&self) -> &'static str {
        match self.cfg().arch {
            Arch::GptNeoX => "gpt_neox",
            Arch::Qwen2 => "qwen2",
        }
    }
    /// "classifier" or "causal_lm".
    #[getter]
    fn head(&self) -> &'static str {
        match self.cfg().head {
            HeadKind::Classifier { .. } => "classifier",
            HeadKind::CausalLm => "causal_lm",
        }
    }
    #[getter]
    fn num_labels(&self) -> Option<usize> {
        self.cfg().num_labels()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.cfg().vocab
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.cfg().hidden
    }
    #[getter]
    fn num_layers(&self) -> usize {
        self.cfg().layers
    }
    #[getter]
    fn max_position_embeddings(&self) -> Option<usize> {
        Some(self.cfg().max_positions).filter(|&p| p != usize::MAX)
    }
    #[getter]
    fn pad_token_id(&self) -> Option<u32> {
        self.cfg().pad_token_id
    }

    /// Token ids of `text` (no special tokens added).
    fn tokenize(&self, text: &str) -> PyResult<Vec<u32>> {
        self.tok.encode(text).map_err(py_err)
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.tok.decode(&ids).map_err(py_err)
    }

    /// Classifier logits of `texts`: (little-endian f32 bytes, rows, labels).
    #[pyo3(signature = (texts, batch_tokens = 16384))]
    fn classify_logits<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_tokens: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let width = self.cfg().num_labels().ok_or_else(|| {
            PyValueError::new_err(format!(
                "{}: not a classifier (no `score` head); classify needs \
                 *ForSequenceClassification",
                self.dir.display()
            ))
        })?;
        let logits = py.detach(|| -> armsrace::Result<Vec<f32>> {
            let ids: Vec<Vec<u32>> = texts
                .par_iter()
                .map(|t| self.tok.encode(t))
                .collect::<armsrace::Result<_>>()?;
            if let Some(i) = ids.iter().position(Vec::is_empty) {
                return Err(armsrace::Error::input(format!(
                    "text {i} tokenizes to nothing"
                )));
            }
            with_model!(&self.inner, m => m.classify_ids(&ids, batch_tokens.max(1)))
        });
        let logits = logits.map_err(py_err)?;
        Ok((f32_bytes(py, &logits), texts.len(), width))
    }

    /// Loss per sequence of token-id sequences: `labels` for a classifier, or a target
    /// mask per sequence for a causal LM (token t marked: predicted from t - 1).
    #[pyo3(signature = (seqs, labels = None, target_mask = None))]
    fn loss(
        &self,
        py: Python<'_>,
        seqs: Vec<Vec<u32>>,
        labels: Option<Vec<u32>>,
        target_mask: Option<Vec<Vec<bool>>>,
    ) -> PyResult<Vec<f32>> {
        let batch = self.batch(&seqs)?;
        let obj = self.objective(&batch, labels, target_mask)?;
        let req = GradRequest::default();
        py.detach(|| with_model!(&self.inner, m => m.loss_and_grads(&batch, &obj, &req)))
            .map(|o| o.loss_per_seq)
            .map_err(py_err)
    }

    /// The loss per sequence and its gradient with respect to the one-hot token inputs at
    /// `positions` ((sequence, token) pairs): (losses, f32 bytes, rows, vocab).
    #[pyo3(signature = (seqs, positions, labels = None, target_mask = None))]
    fn onehot_grad<'py>(
        &self,
        py: Python<'py>,
        seqs: Vec<Vec<u32>>,
        positions: Vec<(usize, usize)>,
        labels: Option<Vec<u32>>,
        target_mask: Option<Vec<Vec<bool>>>,
    ) -> PyResult<(Vec<f32>, Bound<'py, PyBytes>, usize, usize)> {
        let batch = self.batch(&seqs)?;
        let mut rows = Vec::with_capacity(positions.len());
        for &(b, t) in &positions {
            if b >= batch.batch || t >= batch.lens[b] {
                return Err(PyValueError::new_err(format!(
                    "position ({b}, {t}) is outside the {} sequences given",
                    batch.batch
                )));
            }
            rows.push(b * batch.seq + t);
        }
        let obj = self.objective(&batch, labels, target_mask)?;
        let req = GradRequest {
            onehot_rows: Some(rows),
            weights: false,
        };
        let out = py
            .detach(|| with_model!(&self.inner, m => m.loss_and_grads(&batch, &obj, &req)))
            .map_err(py_err)?;
        let grad = out.onehot_grad.unwrap_or_default();
        let vocab = self.cfg().vocab;
        Ok((
            out.loss_per_seq,
            f32_bytes(py, &grad),
            positions.len(),
            vocab,
        ))
    }
}

/// The study's plan for `attack` on the checkpoint `model` (JSON; the Python layer sets
/// options on it): the defaults live in the engine only.
#[pyfunction]
#[pyo3(signature = (model, attack = "gcg", sampler = None))]
fn default_plan(model: PathBuf, attack: &str, sampler: Option<PathBuf>) -> PyResult<String> {
    let spec = AttackSpec::study(attack, sampler).map_err(py_err)?;
    let mut plan = Plan::study_gcg(model);
    plan.budget.iterations = spec.study_iterations();
    plan.attack = spec;
    Ok(serde_json::to_string(&plan).expect("plain data"))
}

#[derive(serde::Serialize)]
struct Finished<'a> {
    complete: bool,
    summary: &'a armsrace::attack::summary::Summary,
    examples: &'a [armsrace::attack::results::ExampleRecord],
}

/// What the worker thread sends the waiting one.
enum Msg {
    Progress(Progress),
    Done(Box<armsrace::Result<RunOutput>>),
}

fn progress_dict<'py>(py: Python<'py>, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("done", p.done)?;
    d.set_item("total", p.total)?;
    d.set_item("broken", p.broken)?;
    d.set_item("attacked", p.attacked)?;
    d.set_item("nominal_flops", p.nominal)?;
    d.set_item("executed_flops", p.executed)?;
    d.set_item("replayed", p.replayed)?;
    Ok(d)
}

/// Runs `plan` on a loaded `model` (its backend), or loads `plan.model` on `device`.
fn run_attack(
    plan: &Plan,
    out: &Path,
    overwrite: bool,
    model: Option<&PyModel>,
    device: &str,
    progress: &mut dyn FnMut(&Progress),
) -> armsrace::Result<RunOutput> {
    let Some(pm) = model else {
        return match device {
            "cpu" => run_plan_on(plan, Cpu, out, overwrite, None, progress),
            "emu" => {
                let be = GpuBackend::new(EmuDevice::new(), Precision::F32);
                run_plan_on(plan, be, out, overwrite, None, progress)
            }
            d => Err(armsrace::Error::input(format!(
                "device {d:?}: without a loaded model, attack runs on \"cpu\" (load an \
                 armsrace.Model on another device and pass it)"
            ))),
        };
    };
    let task = Task::from_name(&plan.task)?;
    let examples = load_examples(&task, plan.data.as_deref(), plan.examples, plan.data_seed)?;
    let opts = ExampleRun {
        out,
        overwrite,
        stop_after: None,
        attack_misclassified: false,
        inputs: plan.inputs()?,
    };
    with_model!(&pm.inner, m => {
        let target = Target {
            model: m,
            tok: &pm.tok,
            label: pm.dir.display().to_string(),
        };
        attack_examples(plan, &target, &examples, &opts, progress).map(|r| r.0)
    })
}

/// Runs an attack plan (JSON, as `default_plan` gives) into `out` and returns the summary
/// and the examples' records as JSON.
#[pyfunction]
#[pyo3(signature = (plan, out, overwrite = false, model = None, device = "cpu", progress = None))]
fn attack(
    py: Python<'_>,
    plan: &str,
    out: PathBuf,
    overwrite: bool,
    model: Option<PyRef<'_, PyModel>>,
    device: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let plan: Plan = serde_json::from_str(plan)
        .map_err(|e| PyValueError::new_err(format!("attack plan: {e}")))?;
    armsrace::interrupt::clear();
    let pm: Option<&PyModel> = model.as_deref();
    let (tx, rx) = mpsc::channel::<Msg>();
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| -> PyResult<String> {
        let (plan, out) = (&plan, &out);
        scope.spawn(move || {
            let ptx = tx.clone();
            let mut on = |p: &Progress| {
                let _ = ptx.send(Msg::Progress(p.clone()));
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_attack(plan, out, overwrite, pm, device, &mut on)
            }))
            .unwrap_or_else(|_| Err(armsrace::Error::Other("the engine panicked".into())));
            let _ = tx.send(Msg::Done(Box::new(res)));
        });
        let mut failure: Option<PyErr> = None;
        loop {
            let msg = py.detach(|| {
                rx.lock()
                    .expect("not poisoned")
                    .recv_timeout(Duration::from_millis(50))
            });
            match msg {
                Ok(Msg::Progress(p)) => {
                    if let (Some(cb), None) = (&progress, &failure) {
                        let r = progress_dict(py, &p).and_then(|d| cb.call1(py, (d,)));
                        if let Err(e) = r {
                            // The callback raised: stop the engine, then re-raise.
                            armsrace::interrupt::request();
                            failure = Some(e);
                        }
                    }
                }
                Ok(Msg::Done(res)) => {
                    armsrace::interrupt::clear();
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    let r = (*res).map_err(py_err)?;
                    // Serialized directly (not through serde_json::Value), so floats read
                    // as the results files write them.
                    let text = serde_json::to_string(&Finished {
                        complete: r.complete,
                        summary: &r.summary,
                        examples: &r.examples,
                    })
                    .expect("plain data");
                    return Ok(text);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    armsrace::interrupt::clear();
                    return Err(ArmsraceError::new_err(
                        "the attack thread ended without a result",
                    ));
                }
            }
            if failure.is_none() {
                if let Err(e) = py.check_signals() {
                    armsrace::interrupt::request();
                    failure = Some(e);
                }
            }
        }
    })
}

/// The thread count of the CPU backend's pool (set once, before the first engine call).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| ArmsraceError::new_err(format!("set_threads: {e}")))
}

#[pymodule]
fn _armsrace(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the CLI does: glibc keeps freed buffers for reuse instead of page-faulting fresh
    // ones in (~11% of a GCG iteration otherwise). Process-wide; ARMSRACE_KEEP_FREED_MEMORY=0
    // leaves the allocator alone.
    if std::env::var("ARMSRACE_KEEP_FREED_MEMORY").as_deref() != Ok("0") {
        armsrace::backend::cpu::alloc::keep_freed_memory();
    }
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(default_plan, m)?)?;
    m.add_function(wrap_pyfunction!(attack, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add("ArmsraceError", m.py().get_type::<ArmsraceError>())?;
    Ok(())
}
