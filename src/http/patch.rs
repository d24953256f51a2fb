//! `PATCH` on a WHIP or WHEP session URL (RFC 9725 §4.3), with an
//! `application/trickle-ice-sdpfrag` body (RFC 8840):
//!
//! - **trickle** (the fragment repeats the session's ICE credentials, or has none): `204`.
//!   We are ICE-lite and learn the peer's addresses from its own checks, so a trickled
//!   candidate needs no action beyond acknowledging it;
//! - **ICE restart** (new `a=ice-ufrag`/`a=ice-pwd`, with `If-Match: "*"` or the session's
//!   `ETag`): `200`, our new credentials and candidates as a fragment, and a new `ETag`;
//!   without `If-Match` `428`, with a stale ETag `412` (the engine decides, `restart.rs`).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use str0m::IceCreds;

use super::{ApiError, AppState, HttpResponse, call, full, read_body, require_content_type};
use crate::engine::{Command, Outcome, Patch, Patched, SessionId};

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub(super) async fn patch(
    state: &AppState,
    req: Request<Incoming>,
    session: SessionId,
    publisher: bool,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, SDPFRAG)?;
    let if_match = match req.headers().get(header::IF_MATCH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadFragment("If-Match is not ASCII text"))?
                .to_owned(),
        ),
    };
    // The session (and the ETag named) is checked before the body is read: a stranger, or
    // a session that has ended, gets no read (a check is a trickle, which changes nothing).
    let check = Patch {
        session: session.clone(),
        publisher,
        if_match: if_match.clone(),
        remote: None,
        local: crate::offer::ice_credentials(),
    };
    match call(state, Command::Patch(check)).await? {
        Outcome::Patched(Ok(_)) => {}
        Outcome::Patched(Err(e)) => return Err(e.into()),
        _ => unreachable!("Patch is answered with Patched"),
    }
    let body = read_body(state, req).await?;
    let frag = Fragment::parse(&body)?;
    let patch = Patch {
        session,
        publisher,
        if_match,
        remote: frag.creds,
        local: crate::offer::ice_credentials(),
    };
    match call(state, Command::Patch(patch)).await? {
        Outcome::Patched(Ok(Patched::Trickled)) => Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(full(Bytes::new()))
            .expect("valid")),
        Outcome::Patched(Ok(Patched::Restarted { local, etag })) => {
            let body = answer(state, &local, frag.mid.unwrap_or("0"), !publisher);
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, SDPFRAG)
                .header(header::ETAG, etag)
                .body(full(body))
                .expect("an ICE ufrag and quotes form a valid ETag"))
        }
        Outcome::Patched(Err(e)) => Err(e.into()),
        _ => unreachable!("Patch is answered with Patched"),
    }
}

/// Our side of an ICE restart (RFC 8840 §9): ICE-lite, the new credentials, and our
/// candidates under the first m-line the client named.
fn answer(state: &AppState, local: &IceCreds, mid: &str, viewer: bool) -> String {
    let mut s = format!(
        "a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n",
        local.ufrag, local.pass
    );
    for c in state.setup.local_candidates(viewer) {
        s.push_str("a=");
        s.push_str(&c.to_sdp_string());
        s.push_str("\r\n");
    }
    s.push_str("a=end-of-candidates\r\n");
    s
}

/// The fragment parser alone, for the `patch_fragment` fuzz target (`fuzz/`): the
/// credentials and mid it read, or the 400 it answers.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn parse_fragment(body: &[u8]) -> Result<(Option<IceCreds>, Option<&str>), ApiError> {
    Fragment::parse(body).map(|f| (f.creds, f.mid))
}

/// What we read of a fragment: the peer's credentials and the first m-line's mid.
#[derive(Debug, PartialEq, Eq)]
struct Fragment<'a> {
    creds: Option<IceCreds>,
    mid: Option<&'a str>,
}

impl<'a> Fragment<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::BadFragment("the fragment is not UTF-8 text"))?;
        let (mut ufrag, mut pwd, mut mid) = (None, None, None);
        for line in text.lines().map(str::trim_end) {
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                ufrag.get_or_insert(v);
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                pwd.get_or_insert(v);
            } else if let Some(v) = line.strip_prefix("a=mid:") {
                mid.get_or_insert(v);
            }
        }
        // RFC 8839 §5.4: ice-char is ALPHA / DIGIT / "+" / "/"; ufrag 4–256, pwd 22–256.
        let ice = |s: &str, min: usize| {
            (min..=256).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        };
        let creds = match (ufrag, pwd) {
            (None, None) => None,
            (Some(u), Some(p)) if ice(u, 4) && ice(p, 22) => Some(IceCreds {
                ufrag: u.to_owned(),
                pass: p.to_owned(),
            }),
            (Some(_), Some(_)) => {
                return Err(ApiError::BadFragment(
                    "a=ice-ufrag must be 4–256 and a=ice-pwd 22–256 ICE characters",
                ));
            }
            _ => {
                return Err(ApiError::BadFragment(
                    "a=ice-ufrag and a=ice-pwd come together",
                ));
            }
        };
        let mid =
            mid.filter(|m| (1..=32).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_graphic()));
        Ok(Self { creds, mid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_yields_credentials_and_mid() {
        let f = Fragment::parse(
            b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghij+/\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
        )
        .unwrap();
        assert_eq!(f.creds.as_ref().unwrap().ufrag, "abcd");
        assert_eq!(f.mid, Some("0"));
        let trickle = Fragment::parse(b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\n").unwrap();
        assert_eq!((trickle.creds, trickle.mid), (None, None));
    }

    #[test]
    fn broken_credentials_are_refused() {
        for body in [
            &b"a=ice-ufrag:abcd\r\n"[..],
            b"a=ice-ufrag:ab\r\na=ice-pwd:0123456789abcdefghijkl\r\n",
            b"a=ice-ufrag:ab cd\r\na=ice-pwd:0123456789abcdefghijkl\r\n",
            b"a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n",
            b"\xff\xfe",
        ] {
            assert!(Fragment::parse(body).is_err(), "{body:?}");
        }
    }
}
