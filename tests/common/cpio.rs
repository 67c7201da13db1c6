//! cpio members written by hand from cpio(5) ("New ASCII Format"), independently of the
//! updater's own SWU writer: the tests build envelopes, good and bad, from them.

/// One cpio member, written by hand from cpio(5) ("New ASCII Format").
pub fn member(magic: &str, name: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let check = if magic == "070702" {
        data.iter().fold(0u32, |s, b| s.wrapping_add(u32::from(*b)))
    } else {
        0
    };
    let namesize = name.len() + 1;
    let mut out = format!(
        "{magic}{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{check:08x}",
        1, 0, 0, 1, 0, data.len(), 0, 0, 0, 0
    )
    .into_bytes();
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// Envelope metadata of version 1.2.3, with `board` and `hw` as given.
pub fn meta(board: Option<&str>, hw: &[&str]) -> tope_updater::swu::EnvelopeMeta {
    tope_updater::swu::EnvelopeMeta {
        version: "1.2.3".into(),
        board: board.map(str::to_owned),
        hardware_compatibility: hw.iter().map(|s| s.to_string()).collect(),
    }
}
