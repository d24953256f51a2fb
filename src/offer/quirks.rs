//! What other WebRTC stacks offer that str0m alone would answer so that audio is lost:
//! `a=bundle-only` m-lines (GStreamer) and Opus with RED (Chromium).
//!
//! An offerer that is sure of BUNDLE (RFC 8843 §6) gives every m-line but the first port 0 and
//! `a=bundle-only` (GStreamer's `webrtcbin` with `max-bundle` does). str0m reads any port 0 as
//! a rejected m-line and would answer it rejected: such a publisher or viewer has no audio.

use str0m::format::PayloadParams;

/// The offer with every `a=bundle-only` m-line's port 0 replaced by the placeholder 9, so it is
/// negotiated as a bundled m-line. Everything else is left as it is.
pub(super) fn accept_bundle_only(offer: &str) -> String {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in offer.split_inclusive('\n') {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        sections.last_mut().unwrap().push(line);
    }
    let mut out = String::with_capacity(offer.len());
    for section in sections {
        let bundle_only = section.iter().any(|l| l.trim_end() == "a=bundle-only");
        for (i, line) in section.iter().enumerate() {
            match line.splitn(3, ' ').collect::<Vec<_>>()[..] {
                [kind, "0", rest] if i == 0 && bundle_only && kind.starts_with("m=") => {
                    out.push_str(&format!("{kind} 9 {rest}"));
                }
                _ => out.push_str(line),
            }
        }
    }
    out
}

/// `p` without its RFC 2198 RED payload type. Chromium offers `red/48000/2` for Opus; str0m
/// answers it first, so Chromium would publish its audio inside RED, which whipcast does not
/// unwrap and no viewer's answer carries: viewers would get no audio. Plain Opus is asked for.
pub(super) fn without_red(p: PayloadParams) -> PayloadParams {
    if p.red().is_none() {
        return p;
    }
    let mut plain = PayloadParams::new(p.pt(), p.resend(), p.spec());
    plain.set_fb_transport_cc(p.fb_transport_cc());
    plain.set_fb_nack(p.fb_nack());
    plain.set_fb_pli(p.fb_pli());
    plain.set_fb_fir(p.fb_fir());
    plain.set_fb_remb(p.fb_remb());
    plain
}

#[cfg(test)]
mod tests {
    use super::accept_bundle_only;

    const OFFER: &str = "v=0\r\ns=-\r\na=group:BUNDLE video0 audio1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:video0\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=bundle-only\r\na=mid:audio1\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:rejected\r\n";

    #[test]
    fn a_bundle_only_m_line_gets_a_port_and_a_rejected_one_keeps_port_0() {
        let rewritten = accept_bundle_only(OFFER);
        assert_eq!(
            rewritten,
            OFFER.replacen(
                "m=audio 0 UDP/TLS/RTP/SAVPF 111",
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                1
            )
        );
        assert!(rewritten.contains("m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:rejected"));
    }

    #[test]
    fn an_offer_without_bundle_only_is_unchanged() {
        let plain = OFFER.replace("a=bundle-only\r\n", "");
        assert_eq!(accept_bundle_only(&plain), plain);
    }
}
