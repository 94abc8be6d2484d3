//! Real processes killed with SIGKILL at many instants (included with `#[path]` by the
//! tests that need it).

use std::process::Command;
use std::time::Duration;

/// Starts `cmd()` again and again, killing the k-th start with SIGKILL after k/`parts` of
/// `whole` (an uninterrupted run's time: early and late, inside computation and file writes
/// alike), each start resuming the last, until one finishes by itself. Returns how many
/// were killed; a start that fails is a test failure.
pub fn kill_until_done(cmd: &dyn Fn() -> Command, whole: Duration, parts: u32) -> usize {
    let mut killed = 0;
    for k in 1..=3 * parts {
        let mut child = cmd().spawn().expect("spawn");
        std::thread::sleep(whole * k / parts);
        match child.try_wait().expect("wait") {
            Some(status) => {
                assert!(status.success(), "start {k} failed: {status}");
                return killed;
            }
            None => {
                killed += 1;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    killed
}
