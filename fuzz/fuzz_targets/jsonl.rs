//! cargo-fuzz target `jsonl`: see tests/fuzz/targets.rs (shared with `cargo test --test fuzz`).
#![no_main]

#[path = "../../tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = targets::jsonl_data(data);
});
