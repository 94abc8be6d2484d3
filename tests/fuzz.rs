//! Fuzzing in the test suite: a bounded, deterministic run of the fuzz targets of
//! `tests/fuzz/targets.rs` (the same functions cargo-fuzz runs from `fuzz/`) over the
//! safetensors header and offsets, shard indexes, config.json, tokenizer.json, JSONL data
//! and task sidecars, and whole checkpoint directories.
//!
//! Each case feeds a target bytes from a seeded generator (case 0 is the empty input: the
//! unmutated seed file). A case fails when the library panics, when an accepted input breaks
//! what the library promises, when an error names no file, tensor or field, when a case takes
//! longer than [`CASE_TIME`] (a watchdog aborts the run after [`HANG_TIME`]), or when a
//! single allocation exceeds [`ALLOC_LIMIT`] (inputs are at most 2 MiB, so a larger one is
//! sized by a field nobody checked; requests over [`ALLOC_REFUSE`] are refused outright and
//! the process aborts naming the case). A failing input is written under
//! `target/tmp/fuzz-findings/`, for `cargo fuzz run TARGET FILE` or a rerun here.
//!
//! - `ARMSRACE_FUZZ_CASES=N`: N cases per target instead of the defaults (the local run:
//!   `ARMSRACE_FUZZ_CASES=10000 cargo test --release --test fuzz -- --nocapture`);
//! - `ARMSRACE_FUZZ_SEED=S`: another deterministic stream of inputs (default 0);
//! - `ARMSRACE_FUZZ_CASE=I`: only case I (reproduce a finding; an allocation over the limit
//!   then aborts with a backtrace);
//! - `ARMSRACE_FUZZ_DUMP=DIR`: write the generated files under DIR (not a temporary
//!   directory) and keep them.
//!
//! Below the runner: one regression test per bug the fuzzing found.

#[path = "fuzz/targets.rs"]
mod targets;

use rand::{RngCore, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use targets::Outcome;

// ---------------------------------------------------------------------------------------------
// Allocation guard

/// The largest single allocation a case may make.
const ALLOC_LIMIT: usize = 64 << 20;
/// Requests above this are refused (the process then aborts with the case named) instead of
/// being passed to the system, which may hand out terabytes of address space.
const ALLOC_REFUSE: usize = 1 << 30;

/// The system allocator, recording the largest request per thread and in all, and the peak
/// of live bytes.
struct Guard;

/// The largest request of a thread that runs no case (a worker pool's).
static LARGEST_ELSEWHERE: AtomicUsize = AtomicUsize::new(0);
/// Requests above this are refused: [`ALLOC_REFUSE`], or [`ALLOC_LIMIT`] when rerunning one
/// case, so that the abort's backtrace shows where a too-large allocation comes from.
static REFUSE_ABOVE: AtomicUsize = AtomicUsize::new(ALLOC_REFUSE);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LARGEST_HERE: Cell<usize> = const { Cell::new(0) };
    /// (target index, case) this thread runs, for the refusal message.
    static CASE: Cell<(usize, u64)> = const { Cell::new((usize::MAX, 0)) };
}

/// Records a request of `size` bytes; false when it must be refused.
fn note(size: usize) -> bool {
    let (t, case) = CASE.try_with(Cell::get).unwrap_or((usize::MAX, 0));
    if t == usize::MAX {
        LARGEST_ELSEWHERE.fetch_max(size, Ordering::Relaxed);
    }
    let _ = LARGEST_HERE.try_with(|l| l.set(l.get().max(size)));
    if size <= REFUSE_ABOVE.load(Ordering::Relaxed) {
        return true;
    }
    // Formatted on the stack: no allocation while refusing one.
    let name = targets::TARGETS.get(t).map_or("?", |t| t.name);
    let mut buf = [0u8; 256];
    let mut w: &mut [u8] = &mut buf;
    let _ = write!(
        w,
        "\nfuzz: refused an allocation of {size} bytes (target {name}, case {case}; rerun with \
         ARMSRACE_FUZZ_CASE={case})\n"
    );
    let n = 256 - w.len();
    let _ = std::io::stderr().write_all(&buf[..n]);
    false
}

fn live_add(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged
// (or returns null, which the GlobalAlloc contract allows for a failed allocation); the
// bookkeeping touches only atomics and const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            live_add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            live_add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            live_add(new_size);
        }
        p
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

// ---------------------------------------------------------------------------------------------
// Runner

/// A case slower than this fails (they take milliseconds; inputs are bounded).
const CASE_TIME: Duration = Duration::from_secs(10);
/// A case still running after this aborts the whole run, naming the case.
const HANG_TIME: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The input of case `i`: empty for case 0 (the seed file itself), else random bytes of a
/// random length (most short: each byte is a decision).
fn input_for(target: &str, seed: u64, i: u64) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        fnv(target) ^ seed.rotate_left(32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let max = [8, 64, 512, 4096][(rng.next_u32() % 4) as usize];
    let len = rng.next_u32() as usize % (max + 1);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

use armsrace::error::panic_message as panic_text;

/// Writes a failing input where cargo fuzz (or a rerun) can take it.
fn save_finding(target: &str, seed: u64, i: u64, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-seed{seed}-case{i}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Runs `default_cases` cases of target `name` (or `$ARMSRACE_FUZZ_CASES`), requiring at
/// least `min_accepted` and `min_refused` percent of each outcome (so the generators reach
/// the accepting paths as well as the refusing ones).
fn fuzz(name: &str, default_cases: u64, min_accepted: f64, min_refused: f64) {
    let (ti, target) = targets::TARGETS
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == name)
        .expect("a target of that name");
    let cases = env_u64("ARMSRACE_FUZZ_CASES").unwrap_or(default_cases);
    let seed = env_u64("ARMSRACE_FUZZ_SEED").unwrap_or(0);
    let range = match env_u64("ARMSRACE_FUZZ_CASE") {
        Some(i) => i..i + 1,
        None => 0..cases,
    };
    let single = range.end - range.start == 1;
    if single {
        REFUSE_ABOVE.store(ALLOC_LIMIT, Ordering::Relaxed);
    }
    // The watchdog: a case that never returns aborts the run, naming itself.
    let (beat, watch) = mpsc::channel::<Option<u64>>();
    let label = name.to_string();
    let watchdog = std::thread::spawn(move || loop {
        match watch.recv_timeout(HANG_TIME) {
            Ok(Some(_)) => {}
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("fuzz {label}: a case ran past {HANG_TIME:?} (a hang); aborting");
                std::process::abort();
            }
        }
    });
    let start = Instant::now();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let (mut slowest, mut largest) = ((0u64, Duration::ZERO), 0usize);
    for i in range.clone() {
        let input = input_for(name, seed, i);
        let _ = beat.send(Some(i));
        CASE.with(|c| c.set((ti, i)));
        LARGEST_HERE.with(|l| l.set(0));
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let dt = t0.elapsed();
        let big = LARGEST_HERE.with(Cell::get);
        let fail = match &r {
            Err(p) => Some(format!("panicked: {}", panic_text(p.as_ref()))),
            Ok(_) if dt > CASE_TIME => Some(format!("took {dt:?} (limit {CASE_TIME:?})")),
            Ok(_) if big > ALLOC_LIMIT => Some(format!(
                "allocated {big} bytes at once (limit {ALLOC_LIMIT}): an allocation sized by \
                 an unchecked field"
            )),
            Ok(_) => None,
        };
        if let Some(why) = fail {
            let path = save_finding(name, seed, i, &input);
            panic!(
                "fuzz {name}, seed {seed}, case {i}: {why}\n  input ({} bytes) saved to {}\n  \
                 rerun: ARMSRACE_FUZZ_SEED={seed} ARMSRACE_FUZZ_CASE={i} cargo test --release \
                 --test fuzz {name}",
                input.len(),
                path.display()
            );
        }
        match r {
            Ok(Outcome::Accepted) => accepted += 1,
            _ => refused += 1,
        }
        if dt > slowest.1 {
            slowest = (i, dt);
        }
        largest = largest.max(big);
    }
    let _ = beat.send(None);
    let _ = watchdog.join();
    let n = range.end - range.start;
    eprintln!(
        "fuzz {name}: {n} cases in {:.1} s ({accepted} accepted, {refused} refused); slowest \
         case {} ({:.1} ms); largest allocation {} KiB; peak live heap (all tests) {} MiB",
        start.elapsed().as_secs_f64(),
        slowest.0,
        slowest.1.as_secs_f64() * 1e3,
        largest >> 10,
        PEAK.load(Ordering::Relaxed) >> 20,
    );
    // Allocations on worker threads count too (not attributable to one case or test).
    let other = LARGEST_ELSEWHERE.load(Ordering::Relaxed);
    assert!(
        other <= ALLOC_LIMIT,
        "fuzz {name}: a worker thread allocated {other} bytes at once (limit {ALLOC_LIMIT})"
    );
    if !single {
        let pct = |k: u64| 100.0 * k as f64 / n as f64;
        assert!(
            pct(accepted) >= min_accepted,
            "fuzz {name}: only {accepted} of {n} inputs accepted (want {min_accepted}%): the \
             generator no longer reaches the accepting paths"
        );
        assert!(
            pct(refused) >= min_refused,
            "fuzz {name}: only {refused} of {n} inputs refused (want {min_refused}%): the \
             generator no longer makes bad inputs"
        );
    }
}

#[test]
fn fuzz_safetensors() {
    fuzz("safetensors", 2000, 5.0, 20.0);
}

#[test]
fn fuzz_shard_index() {
    fuzz("shard_index", 600, 5.0, 20.0);
}

#[test]
fn fuzz_config() {
    fuzz("config", 2000, 5.0, 20.0);
}

#[test]
fn fuzz_tokenizer() {
    fuzz("tokenizer", 600, 5.0, 20.0);
}

#[test]
fn fuzz_jsonl() {
    fuzz("jsonl", 2000, 5.0, 20.0);
}

#[test]
fn fuzz_task_sidecar() {
    fuzz("task_sidecar", 2000, 5.0, 20.0);
}

#[test]
fn fuzz_model_dir() {
    fuzz("model_dir", 600, 5.0, 20.0);
}

// ---------------------------------------------------------------------------------------------
// Regression tests: one per bug the fuzzing (or writing its targets) found. Each builds the
// input that triggered it from a fixture and asserts the fixed behaviour.

use armsrace::model::safetensors_store::SafetensorsStore;
use armsrace::tokenize::Tokenizer;
use armsrace::{Cpu, Model, ModelConfig};
use serde_json::{json, Value};

fn fixture(rel: &str) -> PathBuf {
    targets::repo_root().join(rel)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `f`'s result and the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_HERE.with(|l| l.set(0));
    let r = f();
    (r, LARGEST_HERE.with(Cell::get))
}

fn err_of<T>(what: &str, r: armsrace::Result<T>) -> String {
    match catch_unwind(AssertUnwindSafe(|| r)) {
        Ok(Ok(_)) => panic!("{what}: accepted"),
        Ok(Err(e)) => e.to_string(),
        Err(p) => panic!("{what}: panicked: {}", panic_text(p.as_ref())),
    }
}

fn assert_mentions(what: &str, msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{what}: {n:?} not in the error:\n  {msg}");
    }
}

/// config.json of `fixture` with `edit` applied, through `ModelConfig::from_json`.
fn config_with(
    fixture_dir: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> armsrace::Result<ModelConfig> {
    let mut v = read_json(&fixture(fixture_dir).join("config.json"));
    edit(v.as_object_mut().unwrap());
    catch_unwind(AssertUnwindSafe(|| ModelConfig::from_json(&v)))
        .unwrap_or_else(|p| panic!("from_json panicked: {}", panic_text(p.as_ref())))
}

/// Fuzz tokenizer: a decoder nested past serde_json's recursion limit made the `tokenizers`
/// crate panic (`expect("Helper")` in its decoder deserializer) instead of erroring.
#[test]
fn a_tokenizer_nested_too_deep_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v = read_json(&fixture(
        "tests/fixtures/tokenizer-bytelevel/tokenizer.json",
    ));
    // 200: past serde_json's limit (the panic); 40: under it, past any real file.
    for (depth, needle) in [(200, "recursion limit"), (40, "nested 4")] {
        let mut d = v["decoder"].take();
        for _ in 0..depth {
            d = Value::Array(vec![d]);
        }
        v["decoder"] = d;
        let path = tmp.path().join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let msg = err_of("deep tokenizer", Tokenizer::from_file(&path));
        assert_mentions("deep tokenizer", &msg, &["tokenizer.json", needle]);
        v = read_json(&fixture(
            "tests/fixtures/tokenizer-bytelevel/tokenizer.json",
        ));
    }
}

/// Fuzz tokenizer: `"padding": {"strategy": {"Fixed": 1000000000000}}` in tokenizer.json
/// asked for 4 TB at the first encode (and any padding or truncation in the file silently
/// changed the engine's encodings). Both are now ignored: ids are the unmodified file's.
#[test]
fn a_tokenizer_files_padding_and_truncation_are_ignored() {
    let src = fixture("tests/fixtures/tokenizer-bytelevel/tokenizer.json");
    let want = Tokenizer::from_file(&src)
        .unwrap()
        .encode(targets::SAMPLE_TEXT)
        .unwrap();
    assert!(want.len() > 3);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    for (field, value) in [
        (
            "padding",
            json!({"strategy": {"Fixed": 1_000_000_000_000u64}, "direction": "Right",
                   "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0,
                   "pad_token": "<|padding|>"}),
        ),
        (
            "truncation",
            json!({"direction": "Right", "max_length": 2, "strategy": "LongestFirst",
                   "stride": 0}),
        ),
    ] {
        let mut v = read_json(&src);
        v[field] = value;
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        let (ids, big) = largest_allocation(|| tok.encode(targets::SAMPLE_TEXT).unwrap());
        assert_eq!(ids, want, "{field} in the file changed the encoding");
        assert!(big <= ALLOC_LIMIT, "{field}: allocated {big} bytes at once");
    }
}

/// Fuzz tokenizer, case 4201 of the 10,000-case run: a `Replace` normalizer with an empty
/// regex loads, then panics inside the tokenizers crate (an index past the end) at the first
/// encode. Such a file is now refused at load, naming it, and any later panic of the crate in
/// encode or decode is an error, not the process's end.
#[test]
fn a_tokenizer_that_breaks_on_text_is_refused_at_load() {
    let mut v = read_json(&fixture(
        "tests/fixtures/tokenizer-bytelevel/tokenizer.json",
    ));
    v["normalizer"] = json!({"type": "Replace", "pattern": {"Regex": ""}, "content": "ab"});
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = err_of("empty Replace regex", Tokenizer::from_file(&path));
    assert_mentions(
        "empty Replace regex",
        &msg,
        &["tokenizer.json", "tokenizers crate failed encoding"],
    );
}

/// Writing the config target: an explicit `head_dim` was unchecked, so u64::MAX overflowed
/// the q|k|v width (a panic with overflow checks, a wrapped size without).
#[test]
fn a_huge_head_dim_is_refused_naming_it() {
    for value in [
        json!(u64::MAX),
        json!(1u64 << 62),
        json!(1u64 << 40),
        json!(1u64 << 15),
    ] {
        for fx in [
            "tests/fixtures/qwen2-gqa-tied-lm",
            "tests/fixtures/neox-sequential-lm",
        ] {
            let what = format!("{fx}: head_dim {value}");
            let r = config_with(fx, |c| {
                c.insert("head_dim".into(), value.clone());
            });
            assert_mentions(&what, &err_of(&what, r), &["head_dim", "outside"]);
        }
    }
    // A real one (Qwen2 writes it) still loads.
    let cfg = config_with("tests/fixtures/qwen2-gqa-tied-lm", |c| {
        c.insert("head_dim".into(), json!(16));
    })
    .unwrap();
    assert_eq!(cfg.head_dim, 16);
}

/// Writing the config target: `pad_token_id` 2^32 + 1 was cast to u32 and became token 1.
#[test]
fn a_pad_id_past_u32_is_refused_not_truncated() {
    let r = config_with("tests/fixtures/neox-sequential-lm", |c| {
        c.insert("pad_token_id".into(), json!((1u64 << 32) + 1));
    });
    let msg = err_of("pad 2^32+1", r);
    assert_mentions("pad 2^32+1", &msg, &["pad_token_id", "4294967297"]);
}

/// Writing the config target: numbers of the wrong type or out of range were silently
/// replaced by defaults (num_labels 0 made a classifier with no classes; a
/// max_position_embeddings of 0, -1 or "2048" meant no limit; a string eps or rotary base
/// meant the default).
#[test]
fn config_numbers_of_the_wrong_kind_are_refused_not_defaulted() {
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "neox-parallel-cls",
            "num_labels",
            json!(0),
            &["num_labels", "1..=65536"],
        ),
        (
            "neox-parallel-cls",
            "num_labels",
            json!("2"),
            &["num_labels", "integer"],
        ),
        (
            "neox-parallel-cls",
            "num_labels",
            json!(-1),
            &["num_labels"],
        ),
        (
            "neox-sequential-lm",
            "max_position_embeddings",
            json!(0),
            &["max_position_embeddings"],
        ),
        (
            "neox-sequential-lm",
            "max_position_embeddings",
            json!(-1),
            &["max_position_embeddings"],
        ),
        (
            "neox-sequential-lm",
            "max_position_embeddings",
            json!("2048"),
            &["max_position_embeddings"],
        ),
        (
            "neox-sequential-lm",
            "layer_norm_eps",
            json!("1e-5"),
            &["layer_norm_eps", "number"],
        ),
        (
            "qwen2-gqa-tied-lm",
            "rms_norm_eps",
            json!([1e-6]),
            &["rms_norm_eps", "number"],
        ),
        (
            "neox-sequential-lm",
            "rotary_pct",
            json!("0.5"),
            &["rotary_pct", "number"],
        ),
        (
            "neox-sequential-lm",
            "rotary_emb_base",
            json!(true),
            &["rotary_emb_base", "number"],
        ),
    ];
    for (fx, field, value, needles) in cases {
        let what = format!("{fx}: {field} = {value}");
        let r = config_with(&format!("tests/fixtures/{fx}"), |c| {
            if field == "num_labels" {
                c.remove("id2label");
            }
            c.insert(field.into(), value.clone());
        });
        assert_mentions(&what, &err_of(&what, r), needles);
    }
    // transformers 5 nests the rotary settings; a wrong kind there is refused too.
    let r = config_with("tests/fixtures/qwen2-gqa-tied-lm", |c| {
        c.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": "1e6"}),
        );
    });
    assert_mentions(
        "nested rope_theta",
        &err_of("nested rope_theta", r),
        &["rope_theta"],
    );
    // Absent or null still mean the defaults.
    let cfg = config_with("tests/fixtures/neox-sequential-lm", |c| {
        c.insert("max_position_embeddings".into(), Value::Null);
        c.remove("layer_norm_eps");
        c.insert("rotary_pct".into(), Value::Null);
    })
    .unwrap();
    assert_eq!(cfg.max_positions, usize::MAX);
    assert_eq!(cfg.norm_eps, 1e-5);
}

/// Writing the index target: the distinct shard names of an index were collected with a
/// linear search each, quadratic in their number, before the first missing one was reported.
#[test]
fn an_index_naming_many_shards_is_refused_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tests/fixtures/qwen2-untied-cls");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let map: serde_json::Map<String, Value> = (0..60_000)
        .map(|i| (format!("t{i}"), json!(format!("shard-{i:06}.safetensors"))))
        .collect();
    let index = tmp.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::to_vec(&json!({"weight_map": map})).unwrap(),
    )
    .unwrap();
    let t = Instant::now();
    let msg = err_of("60k shards", SafetensorsStore::open_dir(tmp.path()));
    assert_mentions("60k shards", &msg, &["shard-000000.safetensors"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

/// Fuzz model_dir, case 5425 of the 10,000-case run: config.json with `hidden_size` 65536
/// (within bounds) made `Model::load` reserve the whole embedding (400 x 65536 f32, 100 MiB)
/// before comparing it with the tensor in the file; vocab_size 2^24 with hidden_size 4096
/// asked for 256 GiB and aborted. `load_spec` now checks every piece's shape, then allocates.
#[test]
fn a_config_larger_than_its_weights_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tests/fixtures/neox-sequential-lm");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut v = read_json(&path);
    v["hidden_size"] = json!(65536);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let (r, big) = largest_allocation(|| Model::load(tmp.path(), Cpu).map(|_| ()));
    let msg = err_of("hidden 65536", r);
    assert_mentions("hidden 65536", &msg, &["gpt_neox.embed_in.weight", "shape"]);
    assert!(
        big <= ALLOC_LIMIT,
        "reserved {big} bytes before the shape check"
    );
}
