//! The nftables ruleset generation of this netns (NFT_MSG_GETGEN): every
//! committed transaction, ours or anyone's, moves it by one. The resync
//! reads the whole table back only when it moved since node-sync last
//! knew the table, instead of every time.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const HEADER: usize = 16;
const NFGENMSG: usize = 4;

/// The current generation.
pub fn generation() -> std::io::Result<u32> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = Vec::with_capacity(HEADER + NFGENMSG);
    req.extend_from_slice(&((HEADER + NFGENMSG) as u32).to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0)?;
    let (reply, _) = sock.recv_from_full()?;
    parse(&reply)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("NFT_MSG_GETGEN: {what}"),
    )
}

/// The generation in the kernel's answer: a NEWGEN message with its
/// NFTA_GEN_ID attribute (big-endian), or the error it sent instead.
fn parse(msg: &[u8]) -> std::io::Result<u32> {
    let u16_at = |at: usize| {
        msg.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let len = msg
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("short answer"))?;
    let msg = msg.get(..len).ok_or_else(|| bad("truncated answer"))?;
    let kind = u16_at(4).ok_or_else(|| bad("short answer"))?;
    if kind == NLMSG_ERROR {
        let code = msg
            .get(HEADER..HEADER + 4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("short error"))?;
        return Err(std::io::Error::from_raw_os_error(-code));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad(&format!("unexpected message type {kind:#x}")));
    }
    let mut at = HEADER + NFGENMSG;
    while at + 4 <= msg.len() {
        let (alen, atype) = (
            usize::from(u16_at(at).unwrap_or(0)),
            u16_at(at + 2).unwrap_or(0),
        );
        if alen < 4 || at + alen > msg.len() {
            break;
        }
        if atype & 0x3fff == NFTA_GEN_ID && alen == 8 {
            let b = &msg[at + 4..at + 8];
            return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        at += (alen + 3) & !3;
    }
    Err(bad("no NFTA_GEN_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_generation_attribute() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&0x0a0fu16.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 0, 7]);
        // NFTA_GEN_ID 7, then NFTA_GEN_PROC_PID.
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&7u32.to_be_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&99u32.to_be_bytes());
        assert_eq!(parse(&m).expect("gen"), 7);
    }
}
