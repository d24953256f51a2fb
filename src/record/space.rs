//! Free space under `--record-dir`, for `--record-min-free`: `statvfs` through rustix (our
//! crate forbids `unsafe`).

use std::io;
use std::path::Path;

/// Bytes an unprivileged writer may still use on the file system holding `dir` (or its
/// nearest existing ancestor, before the recorder has created it).
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let mut at = dir;
    loop {
        match rustix::fs::statvfs(at) {
            Ok(s) => return Ok(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(rustix::io::Errno::NOENT) => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => {
                    return rustix::fs::statvfs(".")
                        .map(|s| s.f_bavail * s.f_frsize)
                        .map_err(io::Error::from);
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_not_yet_created_is_measured_at_its_ancestor() {
        let tmp = std::env::temp_dir();
        let free = free_bytes(&tmp).unwrap();
        assert!(free > 0);
        let later = free_bytes(&tmp.join("not/yet/there")).unwrap();
        // The same file system; other writers may move it a little between the calls.
        assert!(later.abs_diff(free) < 1 << 30, "{free} vs {later}");
    }
}
