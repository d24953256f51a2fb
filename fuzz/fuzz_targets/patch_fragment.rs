//! The WHIP/WHEP PATCH body parser (`application/trickle-ice-sdpfrag`, `src/http/patch.rs`):
//! any bytes, never a panic; credentials it accepts are ICE characters of RFC 8839's lengths,
//! and a mid it keeps is 1–32 visible ASCII characters, so the restart answer built from
//! them stays well-formed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use whipcast::http::parse_fragment;

fn ice(s: &str, min: usize) -> bool {
    (min..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fuzz_target!(|data: &[u8]| {
    let Ok((creds, mid)) = parse_fragment(data) else {
        return;
    };
    if let Some(c) = creds {
        assert!(ice(&c.ufrag, 4) && ice(&c.pass, 22), "{c:?}");
        // The same credentials repeated as a trickle must parse to the same.
        let again = format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", c.ufrag, c.pass);
        let (c2, _) = parse_fragment(again.as_bytes()).expect("its own credentials parse");
        assert_eq!(c2.map(|c| (c.ufrag, c.pass)), Some((c.ufrag, c.pass)));
    }
    if let Some(m) = mid {
        assert!(
            (1..=32).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_graphic()),
            "{m:?}"
        );
    }
});
