//! `macspoofchk`: frames from the host end of a container's veth must carry
//! the container interface's MAC. The reference's nftables layout:
//!
//! ```text
//! table bridge nat {
//!   chain PREROUTING { type filter hook prerouting priority dstnat; policy accept;
//!     iifname "<veth>" jump cni-br-iface-<id> comment "macspoofchk-<id>" }
//!   chain cni-br-iface-<id> { jump cni-br-iface-<id>-mac comment "macspoofchk-<id>" }
//!   chain cni-br-iface-<id>-mac { ether saddr <mac> return comment "..."; drop comment "..." }
//! }
//! ```
//!
//! where `<id>` is `<containerID>-<ifname>`, so teardown needs no netns.

use crate::nft::{self, NftError};

fn id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}-{ifname}")
}

pub fn setup(container_id: &str, ifname: &str, host_veth: &str, mac: &str) -> Result<(), NftError> {
    let id = id(container_id, ifname);
    let chain = format!("cni-br-iface-{id}");
    let comment = format!("comment \"macspoofchk-{id}\"");
    let script = format!(
        "add table bridge nat\n\
         add chain bridge nat PREROUTING {{ type filter hook prerouting priority dstnat ; policy accept ; }}\n\
         add chain bridge nat {chain}\n\
         flush chain bridge nat {chain}\n\
         add chain bridge nat {chain}-mac\n\
         flush chain bridge nat {chain}-mac\n\
         add rule bridge nat {chain} jump {chain}-mac {comment}\n\
         add rule bridge nat {chain}-mac ether saddr {mac} return {comment}\n\
         add rule bridge nat {chain}-mac drop {comment}\n\
         add rule bridge nat PREROUTING iifname \"{host_veth}\" jump {chain} {comment}\n"
    );
    nft::apply(&script)
}

/// Removes the attachment's rules and chains; nothing there is fine.
pub fn teardown(container_id: &str, ifname: &str) -> Result<(), NftError> {
    let id = id(container_id, ifname);
    let chain = format!("cni-br-iface-{id}");
    let Some(table) = nft::list("table bridge nat")? else {
        return Ok(());
    };
    let mut script = String::new();
    let pre = table
        .split("chain ")
        .find(|c| c.starts_with("PREROUTING "))
        .unwrap_or("");
    for h in nft::handles_with(pre, &format!("jump {chain} ")) {
        script.push_str(&format!("delete rule bridge nat PREROUTING handle {h}\n"));
    }
    let chains = nft::chains(&table);
    for c in [chain.clone(), format!("{chain}-mac")] {
        if chains.contains(&c) {
            script.push_str(&format!("flush chain bridge nat {c}\n"));
        }
    }
    for c in [chain.clone(), format!("{chain}-mac")] {
        if chains.contains(&c) {
            script.push_str(&format!("delete chain bridge nat {c}\n"));
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    nft::apply(&script)
}
