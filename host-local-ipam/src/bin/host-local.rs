//! The `host-local` CNI IPAM plugin.

fn main() -> std::process::ExitCode {
    cni_protocol::skel::run(&host_local_ipam::HostLocal)
}
