//! Build steps. Always: compile kernels/*.cu with the host C++ compiler into the CPU execution
//! harness (so kernel logic is tested without a GPU). With feature `cuda`: compile the same
//! sources with nvcc into cubins/PTX and embed them. Each step lives in its own file.

#[path = "kernels/build/harness.rs"]
mod harness;
#[cfg(feature = "cuda")]
#[path = "kernels/build/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    harness::build();
    #[cfg(feature = "cuda")]
    nvcc::build();
}
