//! The dummy interface `kube-ipvs0` that holds every ClusterIP, so the
//! node accepts traffic to a VIP and IPVS sees it, over rtnetlink. Like
//! kube-proxy's, it stays down: its addresses are local all the same.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{Handle, LinkDummy};

pub const DUMMY: &str = "kube-ipvs0";

/// Addresses on the link, with the messages that delete them.
pub type Addrs = BTreeMap<IpAddr, AddressMessage>;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{DUMMY} is gone after it was created")]
    Vanished,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { what, source }
}

/// The index of `kube-ipvs0`, if it exists.
pub async fn find(h: &Handle) -> Result<Option<u32>, LinkError> {
    let mut links = h.link().get().match_name(DUMMY.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up {DUMMY}"))(e)),
    }
}

/// `kube-ipvs0`'s index and addresses (none without it).
pub async fn state(h: &Handle) -> Result<(Option<u32>, Addrs), LinkError> {
    let index = find(h).await?;
    let addrs = match index {
        Some(i) => addresses(h, i).await?,
        None => Addrs::new(),
    };
    Ok((index, addrs))
}

/// Deletes `kube-ipvs0` (and with it every VIP on it).
pub async fn delete(h: &Handle, index: u32) -> Result<(), LinkError> {
    h.link()
        .del(index)
        .execute()
        .await
        .map_err(nl(format!("deleting {DUMMY}")))
}

/// `kube-ipvs0`'s index, creating it when missing.
pub async fn ensure(h: &Handle) -> Result<u32, LinkError> {
    if let Some(i) = find(h).await? {
        return Ok(i);
    }
    h.link()
        .add(LinkDummy::new(DUMMY).build())
        .execute()
        .await
        .map_err(nl(format!("creating the dummy interface {DUMMY}")))?;
    find(h).await?.ok_or(LinkError::Vanished)
}

pub async fn addresses(h: &Handle, index: u32) -> Result<Addrs, LinkError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing the addresses of {DUMMY}")))?;
    let mut out = Addrs::new();
    for m in msgs {
        // Old kernels ignore the filter.
        if m.header.index != index {
            continue;
        }
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            out.insert(ip, m);
        }
    }
    Ok(out)
}

pub async fn add(h: &Handle, index: u32, ip: IpAddr) -> Result<(), LinkError> {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    match h.address().add(index, ip, prefix).execute().await {
        // Already there (EEXIST): someone raced us, the result is the same.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        r => r.map_err(nl(format!("adding {ip} to {DUMMY}"))),
    }
}

pub async fn del(h: &Handle, msg: AddressMessage) -> Result<(), LinkError> {
    match h.address().del(msg).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => Ok(()),
        r => r.map_err(nl(format!("removing an address from {DUMMY}"))),
    }
}
