//! Download links for recordings: `/recordings/<label>/<file>?exp=<unix>&sig=<HMAC>`.
//!
//! A `<video>` element or a plain link sends no `Authorization` header, and the broadcast ID
//! must not go into a URL that ends up in histories and logs. So the broadcaster page's list
//! (authorized by the broadcast ID) hands out, per file, a link signed with a key this process
//! draws at start: it opens that one file of that one broadcast, until it expires or the server
//! restarts (the page then lists again and gets fresh links). A view ID never gets one.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How long a link works: a long recording watched in one sitting, seeks included; a link
/// that leaks stops working by the next day.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct DownloadLinks {
    key: hmac::Key,
}

impl Default for DownloadLinks {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS has randomness");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }
}

impl DownloadLinks {
    /// The path and query that download `file` of the broadcast labelled `label`.
    pub(crate) fn sign(&self, label: &str, file: &str, now_unix: u64) -> String {
        let exp = now_unix + LIFETIME.as_secs();
        let tag = hmac::sign(&self.key, message(label, file, exp).as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("/recordings/{label}/{file}?exp={exp}&sig={sig}")
    }

    /// Whether `sig` is this server's signature of (`label`, `file`, `exp`) and `exp` has not
    /// passed. The comparison is constant-time.
    pub(crate) fn verify(&self, label: &str, file: &str, exp: &str, sig: &str, now: u64) -> bool {
        let Ok(exp) = exp.parse::<u64>() else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        exp >= now && hmac::verify(&self.key, message(label, file, exp).as_bytes(), &tag).is_ok()
    }
}

/// What is signed. Labels and file names hold no newline (both are checked to be
/// `[A-Za-z0-9_-]` before they get here), so the fields cannot run into each other.
fn message(label: &str, file: &str, exp: u64) -> String {
    format!("{label}\n{file}\n{exp}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(link: &str) -> (String, String) {
        let q = link.split_once('?').unwrap().1;
        let get = |k: &str| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_owned()
        };
        (get("exp"), get("sig"))
    }

    #[test]
    fn a_link_opens_its_own_file_until_it_expires() {
        let links = DownloadLinks::default();
        let link = links.sign("broadcast-a", "f.mp4", 1000);
        let (exp, sig) = parts(&link);
        assert!(links.verify("broadcast-a", "f.mp4", &exp, &sig, 1000));
        assert!(!links.verify("broadcast-a", "g.mp4", &exp, &sig, 1000));
        assert!(!links.verify("broadcast-b", "f.mp4", &exp, &sig, 1000));
        let later = 1000 + LIFETIME.as_secs() + 1;
        assert!(!links.verify("broadcast-a", "f.mp4", &exp, &sig, later));
        let longer = (exp.parse::<u64>().unwrap() + 1).to_string();
        assert!(!links.verify("broadcast-a", "f.mp4", &longer, &sig, 1000));
        assert!(!DownloadLinks::default().verify("broadcast-a", "f.mp4", &exp, &sig, 1000));
    }
}
