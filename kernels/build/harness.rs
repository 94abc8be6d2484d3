//! Always: builds the CPU execution harness (kernels/harness/README.md), which runs the real
//! kernels/*.cu on the CPU so the GPU backend's tests run without a GPU.
//!
//! Every kernels/*.cu and kernels/harness/tests/*.cu goes through two host-compiler passes:
//! 1. `c++ -E` with kernels/harness/cuda_shim.h force-included. CUDA's keywords (`__global__`,
//!    `__shared__`, ...) are left as plain words, while every macro and `#if` is resolved, so
//!    kernels stamped out by macros are seen like hand-written ones.
//! 2. A token-level pass over that output: each `__shared__` declaration becomes per-block
//!    storage handed out by the runtime (poisoned at block start; `extern __shared__` is the
//!    launch's dynamic shared memory), and every `extern "C" __global__` definition gets an
//!    entry point plus a descriptor `armsrace_emu_kernel_NAME` appended. The result is compiled
//!    with kernels/harness/cuda_keywords.h force-included, which gives the remaining keywords
//!    their host meaning.
//!
//! Each .cu stays its own translation unit, like a CUDA module: its strong global symbols
//! other than the descriptors are made local afterwards (nm + objcopy), so two files may
//! define the same helper, as they may under nvcc. emu_table.cpp lists the descriptors; the
//! Rust side looks kernels up there by name. Everything lands in one static library,
//! `armsrace_emu`, always built at -O2 (the harness is slow enough as it is).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fail(msg: String) -> ! {
    panic!("\n\narmsrace CPU harness build: {msg}\n\n");
}

/// One .cu file to compile.
struct Unit {
    src: PathBuf,
    /// Prefix of the generated file (`k` = kernels/, `t` = harness tests).
    tag: &'static str,
    /// The harness's own test kernels build with warnings as errors.
    strict: bool,
}

/// What compiling a unit produced.
struct Built {
    objects: Vec<PathBuf>,
    kernels: Vec<String>,
}

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Flags shared by every harness translation unit.
fn base_build(harness: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .opt_level(2)
        .flag("-std=c++17")
        .warnings(true)
        .extra_warnings(true)
        // CUDA code type-puns freely (float4 loads of float arrays) and relies on wrapping ints.
        .flag("-fno-strict-aliasing")
        .flag("-fwrapv")
        .flag("-fno-math-errno")
        // The runtime's thread-locals are read on every threadIdx access.
        .flag("-ftls-model=initial-exec")
        // Probe every stack page so a huge local array hits the fiber's guard page.
        .flag("-fstack-clash-protection")
        .include(harness)
        .cargo_metadata(false);
    b
}

pub fn build() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets this")).join("emu");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(format!("{}: {e}", out.display())));
    let harness = root.join("kernels/harness");

    let mut units = Vec::new();
    for src in cu_files(&root.join("kernels")) {
        units.push(Unit {
            src,
            tag: "k",
            strict: false,
        });
    }
    for src in cu_files(&harness.join("tests")) {
        units.push(Unit {
            src,
            tag: "t",
            strict: true,
        });
    }

    let mut objects = base_build(&harness)
        .warnings_into_errors(true)
        .file(harness.join("runtime.cpp"))
        .try_compile_intermediates()
        .unwrap_or_else(|e| fail(format!("runtime.cpp: {e}")));

    let results = compile_units(&root, &harness, &out, &units);
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    let mut kernels = Vec::new();
    for (unit, built) in units.iter().zip(results) {
        let built = built.unwrap_or_else(|e| fail(e));
        for k in built.kernels {
            if let Some(prev) = owner.insert(k.clone(), unit.src.clone()) {
                fail(format!(
                    "kernel `{k}` is defined in both {} and {}; kernels are looked up by name, \
                     so names must be unique",
                    prev.display(),
                    unit.src.display()
                ));
            }
            kernels.push(k);
        }
        objects.extend(built.objects);
    }

    let table = out.join("emu_table.cpp");
    write_if_changed(&table, &kernel_table(&kernels));
    objects.extend(
        base_build(&harness)
            .warnings_into_errors(true)
            .file(&table)
            .try_compile_intermediates()
            .unwrap_or_else(|e| fail(format!("emu_table.cpp: {e}"))),
    );

    cc::Build::new()
        .cpp(true)
        .objects(&objects)
        .try_compile("armsrace_emu")
        .unwrap_or_else(|e| fail(format!("archiving the harness: {e}")));
}

/// Compiles the units on up to NUM_JOBS threads (each is independent).
fn compile_units(
    root: &Path,
    harness: &Path,
    out: &Path,
    units: &[Unit],
) -> Vec<Result<Built, String>> {
    let jobs = std::env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, units.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Built, String>>>> =
        units.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(unit) = units.get(i) else { break };
                let r = compile_unit(root, harness, out, unit);
                *results[i].lock().expect("no poisoning") = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("no poisoning")
                .expect("every unit ran")
        })
        .collect()
}

fn compile_unit(root: &Path, harness: &Path, out: &Path, unit: &Unit) -> Result<Built, String> {
    let shown = unit
        .src
        .strip_prefix(root)
        .unwrap_or(&unit.src)
        .display()
        .to_string();
    let stem = unit
        .src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    // Pass 1: preprocess with the shim, CUDA keywords untouched.
    let tool = base_build(harness)
        .try_get_compiler()
        .map_err(|e| format!("{shown}: no host C++ compiler: {e}"))?;
    let mut cmd = tool.to_command();
    cmd.arg("-E")
        .arg("-include")
        .arg(harness.join("cuda_shim.h"))
        .arg("-I")
        .arg(harness.join("include"))
        .arg("-I")
        .arg(root.join("kernels"))
        .args(["-x", "c++"]) // .cu is not a C++ extension to the host compiler
        .arg(&unit.src);
    let pre = run(&mut cmd).map_err(|e| format!("preprocessing {shown}:\n{e}"))?;

    // Pass 2: rewrite, append entry points, compile.
    let file_label = shown.replace('\\', "/");
    let (mut code, kernels) = rewrite(&pre, &file_label);
    let keywords = harness.join("cuda_keywords.h");
    let mut b = base_build(harness);
    // -Wno-unknown-pragmas: `#pragma unroll`.
    b.warnings_into_errors(unit.strict)
        .flag("-include")
        .flag(keywords.to_string_lossy().as_ref())
        .flag("-Wno-unknown-pragmas");
    // Everything else the object depends on, so an unchanged file means an unchanged object:
    // compiler, flags, and the one header the preprocessed text does not contain.
    let compiler = b
        .try_get_compiler()
        .map_err(|e| format!("{shown}: no host C++ compiler: {e}"))?;
    code += &format!(
        "// built by {:?} {:?}\n// cuda_keywords.h:\n{}",
        compiler.path(),
        compiler.args(),
        std::fs::read_to_string(&keywords)
            .unwrap_or_default()
            .lines()
            .map(|l| format!("//  {l}\n"))
            .collect::<String>()
    );
    let generated = out.join(format!("{}_{stem}.cpp", unit.tag));
    let list = generated.with_extension("objects");
    if std::fs::read_to_string(&generated).ok().as_deref() == Some(code.as_str()) {
        if let Ok(prev) = std::fs::read_to_string(&list) {
            let objects: Vec<PathBuf> = prev.lines().map(PathBuf::from).collect();
            if !objects.is_empty() && objects.iter().all(|o| o.is_file()) {
                return Ok(Built { objects, kernels });
            }
        }
    }
    let _ = std::fs::remove_file(&list);
    write_if_changed(&generated, &code);
    let objects = b
        .file(&generated)
        .try_compile_intermediates()
        .map_err(|e| format!("{shown} (host compile of {}): {e}", generated.display()))?;
    for o in &objects {
        localize_symbols(o);
    }
    let names: Vec<String> = objects.iter().map(|o| o.display().to_string()).collect();
    write_if_changed(&list, &(names.join("\n") + "\n"));
    Ok(Built { objects, kernels })
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    String::from_utf8(o.stdout).map_err(|e| format!("non-UTF-8 output: {e}"))
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    }
}

/// Makes every strong global symbol of a kernel object local except the descriptors, so each
/// .cu behaves like its own CUDA module. Without nm/objcopy this is skipped: then only files
/// that define the same non-inline function would fail to link.
fn localize_symbols(obj: &Path) {
    let tool = |var: &str, name: &str| std::env::var(var).unwrap_or_else(|_| name.to_string());
    let Ok(o) = Command::new(tool("NM", "nm"))
        .args(["-g", "--defined-only"])
        .arg(obj)
        .output()
    else {
        return;
    };
    if !o.status.success() {
        return;
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let syms: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_addr, kind, name) = (it.next()?, it.next()?, it.next()?);
            let strong = matches!(kind, "T" | "D" | "B" | "R" | "G" | "S" | "C");
            (strong && !name.starts_with("armsrace_emu_kernel_")).then_some(name)
        })
        .collect();
    if syms.is_empty() {
        return;
    }
    let list = obj.with_extension("localize");
    write_if_changed(&list, &(syms.join("\n") + "\n"));
    let _ = Command::new(tool("OBJCOPY", "objcopy"))
        .arg(format!("--localize-symbols={}", list.display()))
        .arg(obj)
        .status();
}

fn kernel_table(kernels: &[String]) -> String {
    let mut s = String::from(
        "// Generated by kernels/build/harness.rs: every kernel the CPU harness can launch.\n\
         #include \"emu_abi.h\"\nextern \"C\" {\n",
    );
    for k in kernels {
        s += &format!("extern const ArmsEmuKernel armsrace_emu_kernel_{k};\n");
    }
    s += "static const ArmsEmuKernel* const table[] = {\n";
    for k in kernels {
        s += &format!("    &armsrace_emu_kernel_{k},\n");
    }
    s += "    nullptr,\n};\n";
    s += &format!(
        "size_t armsrace_emu_kernel_count(void) {{ return {}; }}\n\
         const ArmsEmuKernel* armsrace_emu_kernel_get(size_t i) {{\n    \
         return i < {} ? table[i] : nullptr;\n}}\n}}\n",
        kernels.len(),
        kernels.len()
    );
    s
}

// ---------------------------------------------------------------------------------------------
// The token-level rewrite of preprocessed source.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ident,
    Number,
    Str,
    Punct,
    /// A line starting with `#` (line markers, pragmas): kept, never parsed.
    Directive,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

fn tokenize(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let n = b.len();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b'$';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    while i < n {
        let c = b[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'\\' && i + 1 < n && b[i + 1] == b'\n' {
            i += 2;
            continue;
        }
        let start = i;
        if c == b'#' && line_start {
            while i < n && b[i] != b'\n' {
                if b[i] == b'\\' && i + 1 < n && b[i + 1] == b'\n' {
                    i += 1;
                }
                i += 1;
            }
            toks.push(Tok {
                kind: Kind::Directive,
                start,
                end: i,
            });
            continue;
        }
        line_start = false;
        if c == b'/' && i + 1 < n && b[i + 1] == b'/' {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && i + 1 < n && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < n && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(n);
            continue;
        }
        if ident_start(c) {
            while i < n && ident_char(b[i]) {
                i += 1;
            }
            let word = &src[start..i];
            let prefix = matches!(
                word,
                "L" | "u" | "U" | "u8" | "R" | "LR" | "uR" | "UR" | "u8R"
            );
            if prefix && i < n && (b[i] == b'"' || b[i] == b'\'') {
                i = if word.ends_with('R') && b[i] == b'"' {
                    raw_string_end(b, i)
                } else {
                    quoted_end(b, i)
                };
                toks.push(Tok {
                    kind: Kind::Str,
                    start,
                    end: i,
                });
            } else {
                toks.push(Tok {
                    kind: Kind::Ident,
                    start,
                    end: i,
                });
            }
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && i + 1 < n && b[i + 1].is_ascii_digit()) {
            while i < n {
                let d = b[i];
                let sign =
                    (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P');
                if !(sign || d.is_ascii_alphanumeric() || matches!(d, b'.' | b'_' | b'\'')) {
                    break;
                }
                i += 1;
            }
            toks.push(Tok {
                kind: Kind::Number,
                start,
                end: i,
            });
            continue;
        }
        if c == b'"' || c == b'\'' {
            i = quoted_end(b, i);
            toks.push(Tok {
                kind: Kind::Str,
                start,
                end: i,
            });
            continue;
        }
        i += 1;
        toks.push(Tok {
            kind: Kind::Punct,
            start,
            end: i,
        });
    }
    toks
}

/// End (exclusive) of the quoted literal whose opening quote is at `i`.
fn quoted_end(b: &[u8], mut i: usize) -> usize {
    let q = b[i];
    i += 1;
    while i < b.len() && b[i] != q && b[i] != b'\n' {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    (i + 1).min(b.len())
}

/// End (exclusive) of a raw string R"delim( ... )delim" whose quote is at `i`.
fn raw_string_end(b: &[u8], i: usize) -> usize {
    let Some(open) = b[i..].iter().position(|&c| c == b'(').map(|p| i + p) else {
        return quoted_end(b, i);
    };
    let mut close = Vec::with_capacity(open - i + 1);
    close.push(b')');
    close.extend_from_slice(&b[i + 1..open]);
    close.push(b'"');
    let mut j = open + 1;
    while j + close.len() <= b.len() {
        if b[j..j + close.len()] == close[..] {
            return j + close.len();
        }
        j += 1;
    }
    b.len()
}

#[derive(Clone, Debug)]
enum Scope {
    Namespace(Option<String>),
    ExternC,
    Other,
}

struct Rewriter<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    edits: Vec<(usize, usize, String)>,
}

/// One declarator of a `__shared__` declaration.
struct SharedDecl {
    name: String,
    ty: String,
    /// Array bounds, e.g. `[16][68]` (for `extern`: the bounds after the leading `[]`).
    dims: String,
}

impl<'a> Rewriter<'a> {
    fn text(&self, i: usize) -> &'a str {
        let t = self.toks[i];
        &self.src[t.start..t.end]
    }
    fn is(&self, i: usize, s: &str) -> bool {
        i < self.toks.len() && self.toks[i].kind != Kind::Directive && self.text(i) == s
    }
    fn is_ident(&self, i: usize) -> bool {
        i < self.toks.len() && self.toks[i].kind == Kind::Ident
    }

    /// Index of the token matching the bracket at `i` (forward), if any.
    fn matching(&self, i: usize) -> Option<usize> {
        let (open, close) = match self.text(i) {
            "(" => ("(", ")"),
            "[" => ("[", "]"),
            "{" => ("{", "}"),
            _ => return None,
        };
        let mut depth = 0usize;
        for j in i..self.toks.len() {
            if self.toks[j].kind == Kind::Directive {
                continue;
            }
            if self.text(j) == open {
                depth += 1;
            } else if self.text(j) == close {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
        }
        None
    }

    /// Index of the `(` matching the `)` at `i` (backward).
    fn matching_back(&self, i: usize) -> Option<usize> {
        let mut depth = 0usize;
        for j in (0..=i).rev() {
            if self.toks[j].kind == Kind::Directive {
                continue;
            }
            match self.text(j) {
                ")" => depth += 1,
                "(" => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(j);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Source text of tokens `a..b`, with one space between tokens that were apart.
    fn join(&self, a: usize, b: usize) -> String {
        let mut s = String::new();
        for j in a..b {
            if j > a && self.toks[j - 1].end != self.toks[j].start {
                s.push(' ');
            }
            s += self.text(j);
        }
        s
    }

    fn newlines(&self, a: usize, b: usize) -> String {
        "\n".repeat(self.src[a..b].matches('\n').count())
    }

    /// Alignment requested by an attribute group starting at `i` (`__align__(N)`, `alignas(N)`,
    /// `__attribute__((aligned(N)))`); returns (alignment expression or "", index after it).
    fn attribute(&self, i: usize) -> Option<(String, usize)> {
        let word = self.text(i);
        if !matches!(word, "__align__" | "alignas" | "__attribute__") || !self.is(i + 1, "(") {
            return None;
        }
        let close = self.matching(i + 1)?;
        let align = if word == "__attribute__" {
            // ((aligned(N))) or ((aligned)); other attributes carry no alignment.
            let mut a = String::new();
            for j in i + 2..close {
                if self.is(j, "aligned") {
                    a = if self.is(j + 1, "(") {
                        let c = self.matching(j + 1)?;
                        self.join(j + 2, c)
                    } else {
                        "16".to_string()
                    };
                }
            }
            a
        } else {
            self.join(i + 2, close)
        };
        Some((align, close + 1))
    }

    /// Parses the `__shared__` declaration around token `i`: returns (first token, `;` token,
    /// extern?, alignment expression, declarators), or None for anything unusual (left to the
    /// `static thread_local` fallback in cuda_keywords.h).
    fn parse_shared(&self, i: usize) -> Option<(usize, usize, bool, String, Vec<SharedDecl>)> {
        let mut is_extern = false;
        let mut align = String::new();
        let mut quals = Vec::new();
        // Specifiers before `__shared__`.
        let mut first = i;
        while first > 0 {
            let j = first - 1;
            if self.toks[j].kind == Kind::Directive {
                break;
            }
            match self.text(j) {
                "extern" => is_extern = true,
                "static" => {}
                "volatile" | "const" => quals.push(self.text(j)),
                ")" => {
                    let open = self.matching_back(j)?;
                    if open == 0 {
                        return None;
                    }
                    let (a, _) = self.attribute(open - 1)?;
                    if !a.is_empty() {
                        align = a;
                    }
                    first = open - 1;
                    continue;
                }
                _ => break,
            }
            first = j;
        }
        let boundary = first == 0
            || self.toks[first - 1].kind == Kind::Directive
            || matches!(self.text(first - 1), ";" | "{" | "}" | ":");
        if !boundary {
            return None;
        }
        // Everything up to the `;`, attribute groups taken out.
        let mut body: Vec<usize> = Vec::new();
        let mut j = i + 1;
        let end;
        loop {
            if j >= self.toks.len() || self.toks[j].kind == Kind::Directive {
                return None;
            }
            match self.text(j) {
                ";" => {
                    end = j;
                    break;
                }
                "{" | "}" | "=" | "(" | ")" => return None,
                "[" => {
                    let c = self.matching(j)?;
                    body.extend(j..=c);
                    j = c + 1;
                    continue;
                }
                _ => {}
            }
            if let Some((a, next)) = self.attribute(j) {
                if !a.is_empty() {
                    align = a;
                }
                j = next;
                continue;
            }
            if matches!(self.text(j), "extern") {
                is_extern = true;
            } else if !matches!(self.text(j), "static") {
                body.push(j);
            }
            j += 1;
        }
        // Declarators, split at top-level commas (bounds are whole bracket groups already).
        let mut chunks: Vec<Vec<usize>> = vec![Vec::new()];
        let mut depth = 0i32;
        for &t in &body {
            match self.text(t) {
                "[" => depth += 1,
                "]" => depth -= 1,
                "," if depth == 0 => {
                    chunks.push(Vec::new());
                    continue;
                }
                _ => {}
            }
            chunks.last_mut().expect("non-empty").push(t);
        }
        let mut decls = Vec::new();
        let mut base_ty = String::new();
        for (k, chunk) in chunks.iter().enumerate() {
            let bracket = chunk
                .iter()
                .position(|&t| self.is(t, "["))
                .unwrap_or(chunk.len());
            if bracket == 0 || !self.is_ident(chunk[bracket - 1]) {
                return None;
            }
            let name = self.text(chunk[bracket - 1]).to_string();
            let before = &chunk[..bracket - 1];
            let join_list = |ts: &[usize]| {
                ts.iter()
                    .map(|&t| self.text(t))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let ty = if k == 0 {
                let stars = before
                    .iter()
                    .rev()
                    .take_while(|&&t| self.is(t, "*"))
                    .count();
                let core = &before[..before.len() - stars];
                if core.is_empty() || core.iter().any(|&t| self.is(t, "&")) {
                    return None;
                }
                base_ty = std::iter::once(quals.join(" "))
                    .chain(std::iter::once(
                        self.join(core[0], core[core.len() - 1] + 1),
                    ))
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{base_ty}{}", "*".repeat(stars))
            } else {
                if !before.iter().all(|&t| self.is(t, "*")) {
                    return None;
                }
                format!("{base_ty}{}", join_list(before))
            };
            let mut dims_toks = &chunk[bracket..];
            if is_extern {
                // `name[]` then optional further bounds.
                if dims_toks.len() < 2 || !self.is(dims_toks[0], "[") || !self.is(dims_toks[1], "]")
                {
                    return None;
                }
                dims_toks = &dims_toks[2..];
            }
            let dims = if dims_toks.is_empty() {
                String::new()
            } else {
                self.join(dims_toks[0], dims_toks[dims_toks.len() - 1] + 1)
            };
            decls.push(SharedDecl { name, ty, dims });
        }
        Some((first, end, is_extern, align, decls))
    }

    /// For `__global__` at token `i` of an `extern "C"` definition: the kernel's name and the
    /// index of its body's `{`.
    fn parse_kernel(&self, i: usize, in_extern_c: bool) -> Option<(String, usize)> {
        let skip_attrs = |mut j: usize| {
            while j < self.toks.len()
                && matches!(
                    self.text(j),
                    "__launch_bounds__"
                        | "__cluster_dims__"
                        | "__maxnreg__"
                        | "__attribute__"
                        | "__noinline__"
                        | "__forceinline__"
                )
            {
                if self.is(j + 1, "(") {
                    match self.matching(j + 1) {
                        Some(c) => j = c + 1,
                        None => return j,
                    }
                } else {
                    j += 1;
                }
            }
            j
        };
        // `extern "C"` right before (possibly with attributes in between), or an enclosing
        // `extern "C" { ... }`.
        let mut b = i;
        while b >= 2 {
            if self.is(b - 1, ")") {
                let open = self.matching_back(b - 1)?;
                if open >= 1 && matches!(self.text(open - 1), "__launch_bounds__" | "__attribute__")
                {
                    b = open - 1;
                    continue;
                }
            }
            break;
        }
        let extern_c = b >= 2 && self.is(b - 2, "extern") && matches!(self.text(b - 1), "\"C\"");
        if !extern_c && !in_extern_c {
            return None;
        }
        let mut j = skip_attrs(i + 1);
        if !self.is(j, "void") {
            return None;
        }
        j = skip_attrs(j + 1);
        if !self.is_ident(j) || !self.is(j + 1, "(") {
            return None;
        }
        let name = self.text(j).to_string();
        let close = self.matching(j + 1)?;
        let mut k = close + 1;
        while k < self.toks.len()
            && (self.toks[k].kind == Kind::Directive
                || matches!(self.text(k), "noexcept" | "throw"))
        {
            k += 1;
        }
        self.is(k, "{").then_some((name, k))
    }
}

const SLOT_FN: &str = "[]() -> ::armsrace_emu::SharedSlot& { static thread_local ::armsrace_emu::SharedSlot armsrace_emu_slot; return armsrace_emu_slot; }";

/// Rewrites preprocessed source: `__shared__` declarations and kernel entry points (see the
/// module comment). Returns the code to compile and the kernel names found.
fn rewrite(src: &str, file_label: &str) -> (String, Vec<String>) {
    let mut rw = Rewriter {
        src,
        toks: tokenize(src),
        edits: Vec::new(),
    };
    let mut scopes: Vec<Scope> = Vec::new();
    let mut kernels: Vec<(String, String)> = Vec::new(); // (name, qualified name)
                                                         // Namespace-scope __shared__ names -> the expression that replaces later uses.
    let mut globals: HashMap<String, String> = HashMap::new();
    let mut i = 0;
    while i < rw.toks.len() {
        let t = rw.toks[i];
        if t.kind == Kind::Directive {
            i += 1;
            continue;
        }
        let word = rw.text(i);
        match word {
            "{" => {
                let scope = scope_of_brace(&rw, i);
                scopes.push(scope);
            }
            "}" => {
                scopes.pop();
            }
            "__shared__" => {
                if let Some((first, end, is_extern, align, decls)) = rw.parse_shared(i) {
                    let in_function = scopes.iter().any(|s| matches!(s, Scope::Other));
                    let align = if align.is_empty() {
                        "0".to_string()
                    } else {
                        format!("({align})")
                    };
                    let mut out = String::new();
                    for d in &decls {
                        let alias = format!("armsrace_emu_t_{}", d.name);
                        match (in_function, is_extern) {
                            (true, false) => {
                                out += &format!(
                                    "using {alias} = {} {}; auto& {} = *::armsrace_emu::static_shared<{alias}, {align}>({SLOT_FN}); ",
                                    d.ty, d.dims, d.name
                                );
                            }
                            (true, true) => {
                                out += &format!(
                                    "using {alias} = {} {}; {alias}* const {} = static_cast<{alias}*>(::armsrace_emu::dynamic_shared()); ",
                                    d.ty, d.dims, d.name
                                );
                            }
                            (false, false) => {
                                out += &format!(
                                    "using {alias} = {} {}; [[maybe_unused]] static ::armsrace_emu::SharedSlot& armsrace_emu_slot_{}() {{ static thread_local ::armsrace_emu::SharedSlot armsrace_emu_slot; return armsrace_emu_slot; }} ",
                                    d.ty, d.dims, d.name
                                );
                                globals.insert(
                                    d.name.clone(),
                                    format!("(*::armsrace_emu::static_shared<{alias}, {align}>(&armsrace_emu_slot_{}))", d.name),
                                );
                            }
                            (false, true) => {
                                out += &format!("using {alias} = {} {}; ", d.ty, d.dims);
                                globals.insert(
                                    d.name.clone(),
                                    format!(
                                        "(static_cast<{alias}*>(::armsrace_emu::dynamic_shared()))"
                                    ),
                                );
                            }
                        }
                    }
                    let (a, b) = (rw.toks[first].start, rw.toks[end].end);
                    out += &rw.newlines(a, b);
                    rw.edits.push((a, b, out));
                    i = end + 1;
                    continue;
                }
            }
            "__global__" => {
                let in_extern_c = matches!(scopes.last(), Some(Scope::ExternC));
                if let Some((name, _body)) = rw.parse_kernel(i, in_extern_c) {
                    let mut q: Vec<String> = scopes
                        .iter()
                        .filter_map(|s| match s {
                            Scope::Namespace(Some(n)) => Some(n.clone()),
                            _ => None,
                        })
                        .collect();
                    q.push(name.clone());
                    if !kernels.iter().any(|(n, _)| *n == name) {
                        kernels.push((name, q.join("::")));
                    }
                }
            }
            _ if t.kind == Kind::Ident && globals.contains_key(word) => {
                let qualified = i > 0
                    && (rw.is(i - 1, ".")
                        || (rw.is(i - 1, ":") && i > 1 && rw.is(i - 2, ":"))
                        || (rw.is(i - 1, ">") && i > 1 && rw.is(i - 2, "-")));
                if !qualified {
                    rw.edits.push((t.start, t.end, globals[word].clone()));
                }
            }
            _ => {}
        }
        i += 1;
    }

    let mut out = String::with_capacity(src.len() + 4096);
    let mut pos = 0;
    for (a, b, text) in &rw.edits {
        out += &src[pos..*a];
        out += text;
        pos = *b;
    }
    out += &src[pos..];

    out += "\n# 1 \"<armsrace harness: kernel entry points>\"\n";
    out += "extern \"C\" {\n";
    for (k, (name, q)) in kernels.iter().enumerate() {
        out += &format!(
            "static void armsrace_emu_entry_{k}(const void* a) {{ ::armsrace_emu::call(&{q}, a); }}\n\
             extern const ArmsEmuKernel armsrace_emu_kernel_{name};\n\
             const ArmsEmuKernel armsrace_emu_kernel_{name} = {{\"{name}\", &armsrace_emu_entry_{k}, \
             ::armsrace_emu::arg_size(&{q}), ::armsrace_emu::arg_align(&{q}), \"{file_label}\"}};\n"
        );
    }
    out += "}\n";
    (out, kernels.into_iter().map(|(n, _)| n).collect())
}

/// What the `{` at token `i` opens.
fn scope_of_brace(rw: &Rewriter, i: usize) -> Scope {
    // Walk back over a (possibly nested) namespace name: `namespace a::b {`.
    let mut j = i;
    let mut name = Vec::new();
    while j > 0 && (rw.is_ident(j - 1) || rw.is(j - 1, ":")) {
        if rw.is(j - 1, "namespace") {
            let n: String = name.into_iter().rev().collect::<Vec<&str>>().concat();
            return Scope::Namespace((!n.is_empty()).then_some(n));
        }
        name.push(rw.text(j - 1));
        j -= 1;
    }
    if i >= 2 && rw.is(i - 2, "extern") {
        match rw.text(i - 1) {
            "\"C\"" => return Scope::ExternC,
            "\"C++\"" => return Scope::Namespace(None),
            _ => {}
        }
    }
    Scope::Other
}
