//! The `bridge` CNI plugin.

fn main() -> std::process::ExitCode {
    cni_protocol::skel::run(&cni_bridge::bridge::Bridge)
}
