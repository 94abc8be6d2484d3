//! Feature `cuda`: compiles every kernels/*.cu with nvcc into one fatbin per file (cubins for
//! the real targets plus PTX for the newest, so later GPUs JIT it), embeds them through
//! `$OUT_DIR/kernels.rs`, and checks that bindgen's view of kernels/args.h still equals the
//! committed src/backend/gpu/args.rs.
//!
//! Warnings are errors (`-Werror all-warnings`), and so is any register spill: ptxas runs
//! with `-v -warn-spills`, and its report is scanned for a non-zero spill count as well, so a
//! kernel that starts spilling fails the build (and CI) instead of silently slowing down.
//!
//! Environment: NVCC (path to nvcc; else `nvcc` on PATH; else the wheel installed by
//! scripts/install-nvcc.sh under .venv-cuda), ARMSRACE_CUDA_ARCHS (comma list, default
//! `sm_80,sm_90,compute_90`: `sm_XY` = cubin, `compute_XY` = PTX), LIBCLANG_PATH (else the
//! libclang wheel in .venv-cuda).

use std::path::{Path, PathBuf};
use std::process::Command;

const VENV_SITE: &str = ".venv-cuda/lib/python3.11/site-packages";
const INSTALL_HINT: &str = "install it with `bash scripts/install-nvcc.sh` (pip wheels, no GPU \
                            needed), or set NVCC=/path/to/nvcc";

fn fail(msg: String) -> ! {
    // A panic in a build script is reported by cargo as a build error with this message.
    panic!("\n\narmsrace (feature `cuda`): {msg}\n\n");
}

fn find_nvcc(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join("nvcc");
            if cand.is_file() {
                return cand;
            }
        }
    }
    let wheel = root.join(VENV_SITE).join("nvidia/cu13/bin/nvcc");
    if wheel.is_file() {
        return wheel;
    }
    fail(format!(
        "nvcc not found (NVCC unset, none on PATH, none at {}); {INSTALL_HINT}",
        wheel.display()
    ))
}

/// `sm_80,sm_90,compute_90` -> nvcc `-gencode` flags.
fn gencode_flags(archs: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for a in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let (kind, num) = a.split_once('_').unwrap_or_else(|| {
            fail(format!(
                "ARMSRACE_CUDA_ARCHS entry `{a}`: want sm_XY or compute_XY"
            ))
        });
        match kind {
            "sm" => flags.push(format!("-gencode=arch=compute_{num},code=sm_{num}")),
            "compute" => flags.push(format!("-gencode=arch=compute_{num},code=compute_{num}")),
            _ => fail(format!(
                "ARMSRACE_CUDA_ARCHS entry `{a}`: want sm_XY or compute_XY"
            )),
        }
    }
    if flags.is_empty() {
        fail("ARMSRACE_CUDA_ARCHS is empty".into());
    }
    flags
}

/// Non-zero "N bytes spill stores/loads" lines of a ptxas -v report.
fn spill_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(3).any(|w| {
                w[1] == "bytes" && w[2] == "spill" && w[0].parse::<u64>().is_ok_and(|n| n > 0)
            })
        })
        .map(str::to_string)
        .collect()
}

fn compile(
    nvcc: &Path,
    src: &Path,
    out: &Path,
    gencode: &[String],
    kernels: &Path,
) -> Result<(), String> {
    let output = Command::new(nvcc)
        .arg("-fatbin")
        .args(gencode)
        .args(["-O3", "-std=c++17", "-Werror", "all-warnings"])
        .args(["-Xptxas", "-v,-warn-spills"])
        .arg("-I")
        .arg(kernels)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .map_err(|e| format!("running {}: {e}; {INSTALL_HINT}", nvcc.display()))?;
    let report = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("nvcc failed on {}:\n{report}", src.display()));
    }
    let spills = spill_lines(&report);
    if !spills.is_empty() {
        return Err(format!(
            "{}: registers spill (not allowed):\n{}",
            src.display(),
            spills.join("\n")
        ));
    }
    Ok(())
}

pub fn build() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets this"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=ARMSRACE_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-changed=src/backend/gpu/args.rs");

    let nvcc = find_nvcc(&root);
    let archs =
        std::env::var("ARMSRACE_CUDA_ARCHS").unwrap_or_else(|_| "sm_80,sm_90,compute_90".into());
    let gencode = gencode_flags(&archs);

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| fail(format!("{}: {e}", kernels.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    // Compile in parallel: nvcc is single-threaded and the files are independent.
    let jobs: Vec<(String, PathBuf)> = sources
        .iter()
        .map(|s| {
            let stem = s.file_stem().unwrap().to_string_lossy().into_owned();
            let out = out_dir.join(format!("{stem}.fatbin"));
            (stem, out)
        })
        .collect();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .zip(&jobs)
            .map(|(src, (_, out))| {
                let (nvcc, gencode, kernels) = (&nvcc, &gencode, &kernels);
                scope.spawn(move || compile(nvcc, src, out, gencode, kernels))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("compile thread").err())
            .collect()
    });
    if !errors.is_empty() {
        fail(errors.join("\n\n"));
    }

    let mut table = String::from(
        "/// Fatbins of kernels/*.cu (file stem, bytes), built by kernels/build/nvcc.rs.\n\
         pub const MODULES: &[(&str, &[u8])] = &[\n",
    );
    for (stem, out) in &jobs {
        table += &format!(
            "    ({stem:?}, include_bytes!({:?})),\n",
            out.display().to_string()
        );
    }
    table += "];\n";
    // Which module holds each kernel, so the device looks a kernel up in its own module
    // instead of asking every module in turn (the misses are driver errors that
    // compute-sanitizer reports). The scan reads the source as written: a kernel a macro
    // defines is not listed, and the device then searches every module for it.
    let mut kernel_names: Vec<(String, usize)> = Vec::new();
    for (module, src) in sources.iter().enumerate() {
        let text = std::fs::read_to_string(src)
            .unwrap_or_else(|e| fail(format!("{}: {e}", src.display())));
        kernel_names.extend(kernel_entry_points(&text).into_iter().map(|k| (k, module)));
    }
    kernel_names.sort();
    if let Some(w) = kernel_names.windows(2).find(|w| w[0].0 == w[1].0) {
        fail(format!(
            "kernel `{}` is defined in two kernels/*.cu files",
            w[0].0
        ));
    }
    table +=
        "/// Every `extern \"C\" __global__` kernel (name, index into MODULES), sorted by name.\n\
              pub const KERNELS: &[(&str, usize)] = &[\n";
    for (name, module) in &kernel_names {
        table += &format!("    ({name:?}, {module}),\n");
    }
    table += "];\n";
    table += &format!(
        "/// Target list the fatbins were built for.\npub const ARCHS: &str = {archs:?};\n"
    );
    std::fs::write(out_dir.join("kernels.rs"), table).expect("write kernels.rs");

    bindgen_args(&root, &out_dir);
}

/// The names of the `extern "C" __global__ ... void NAME(` entry points in one .cu file
/// (the kernels' one declaration style; `void __launch_bounds__(...) NAME(` too).
fn kernel_entry_points(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("extern \"C\" __global__")?;
            let mut after_void = rest.split_once("void ")?.1.trim_start();
            if let Some(bounds) = after_void.strip_prefix("__launch_bounds__") {
                after_void = bounds.split_once(')')?.1;
            }
            let name = after_void.split('(').next()?.trim();
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ok.then(|| name.to_string())
        })
        .collect()
}

/// Runs bindgen on kernels/args.h and requires the committed src/backend/gpu/args.rs to match
/// (ignoring whitespace, so formatting is free), so the Rust and CUDA structs cannot drift.
fn bindgen_args(root: &Path, out_dir: &Path) {
    if std::env::var_os("LIBCLANG_PATH").is_none() {
        let dir = root.join(VENV_SITE).join("clang/native");
        if dir.is_dir() {
            // Edition 2021 build script: set_var is safe; nothing else reads env concurrently.
            std::env::set_var("LIBCLANG_PATH", &dir);
        }
    }
    let header = root.join("kernels/args.h");
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type(".*Args")
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .layout_tests(true)
        .generate_comments(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .raw_line(
            "// Generated by bindgen from kernels/args.h (kernels/build/nvcc.rs): do not edit.",
        )
        .raw_line(
            "// Regenerate: cargo build --features cuda, then copy $OUT_DIR/args_bindgen.rs here.",
        )
        .generate()
        .unwrap_or_else(|e| {
            fail(format!(
                "bindgen on kernels/args.h failed: {e}. bindgen needs libclang: \
                 `bash scripts/install-nvcc.sh` installs it, or set LIBCLANG_PATH"
            ))
        });
    let generated = out_dir.join("args_bindgen.rs");
    bindings
        .write_to_file(&generated)
        .expect("write args_bindgen.rs");
    let committed_path = root.join("src/backend/gpu/args.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    let fresh = std::fs::read_to_string(&generated).expect("read args_bindgen.rs");
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    if squash(&committed) != squash(&fresh) {
        fail(format!(
            "src/backend/gpu/args.rs is out of date with kernels/args.h; run\n    cp {} {}",
            generated.display(),
            committed_path.display()
        ));
    }
}
