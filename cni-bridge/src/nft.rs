//! Running `nft` (netkit's runner): a whole change as one `nft -f -`
//! transaction, and reading rules with their handles.

pub use netkit::nft::NftError;

/// Applies `script` atomically: all of it or none.
pub fn apply(script: &str) -> Result<(), NftError> {
    netkit::nft::apply_in(None, script)
}

/// `nft -a list <what>`; `None` when the object does not exist.
pub fn list(what: &str) -> Result<Option<String>, NftError> {
    let mut args = vec!["-a", "list"];
    args.extend(what.split_whitespace());
    Ok(netkit::nft::list_in(None, &args)?.map(|o| String::from_utf8_lossy(&o).into_owned()))
}

/// The handles of rules in an `nft -a list` text whose line contains `needle`.
pub fn handles_with(listing: &str, needle: &str) -> Vec<u64> {
    listing
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .and_then(|(_, h)| h.trim().parse().ok())
        })
        .collect()
}

/// Chain names declared in an `nft list` text.
pub fn chains(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}
