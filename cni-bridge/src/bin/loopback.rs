//! The `loopback` CNI plugin.

fn main() -> std::process::ExitCode {
    cni_protocol::skel::run(&cni_bridge::loopback::Loopback)
}
