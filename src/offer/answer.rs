//! The text of a viewer's answer, rewritten where str0m's choices would split its media:
//! one msid stream and one CNAME for all of its tracks.

use crate::engine::viewer_cname;

/// One media stream for all of a viewer's tracks: the same msid stream id (libwebrtc puts
/// the tracks of one stream in one sync group, and only then aligns audio with video) and
/// the same CNAME (RFC 7022), the one our sender reports carry
/// ([`viewer_cname`]). str0m picks a random stream id and CNAME per m-line when the offer
/// names none, as Chromium's recvonly offers do.
pub(super) fn one_stream(answer: &str) -> String {
    let first_ssrc = answer.lines().find_map(|l| {
        let rest = l.strip_prefix("a=ssrc:")?;
        rest.split(' ').next()?.parse::<u32>().ok()
    });
    let Some(first_ssrc) = first_ssrc else {
        return answer.to_string();
    };
    let cname = viewer_cname(first_ssrc);
    let stream = format!("whipcast-{first_ssrc:08x}");
    let mut out = String::with_capacity(answer.len() + 64);
    for line in answer.lines() {
        if line.starts_with("a=msid-semantic") {
            out.push_str(&format!("a=msid-semantic: WMS {stream}"));
        } else if let Some(rest) = line.strip_prefix("a=msid:") {
            let track = rest.split_once(' ').map_or("", |(_, t)| t);
            out.push_str(&format!("a=msid:{stream} {track}"));
        } else if let Some((ssrc, attr)) =
            line.strip_prefix("a=ssrc:").and_then(|r| r.split_once(' '))
        {
            if attr.starts_with("cname:") {
                out.push_str(&format!("a=ssrc:{ssrc} cname:{cname}"));
            } else if let Some(msid) = attr.strip_prefix("msid:") {
                let track = msid.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("a=ssrc:{ssrc} msid:{stream} {track}"));
            } else {
                out.push_str(line);
            }
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offer::tests::viewer_answer;

    /// The values of `a=<attr>` lines, or of `a=ssrc:<n> <attr>` lines.
    fn values(answer: &str, prefix: &str) -> Vec<String> {
        answer
            .lines()
            .filter_map(|l| {
                l.strip_prefix(prefix).or_else(|| {
                    let (_, attr) = l.strip_prefix("a=ssrc:")?.split_once(' ')?;
                    attr.strip_prefix(&prefix[2..])
                })
            })
            .map(|v| v.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn a_viewers_audio_and_video_share_one_stream_id_and_cname() {
        let answer = viewer_answer();
        let mut streams = values(&answer, "a=msid:");
        assert!(streams.len() >= 2, "both tracks carry an msid:\n{answer}");
        streams.dedup();
        assert_eq!(streams.len(), 1, "one msid stream id:\n{answer}");
        let mut cnames = values(&answer, "a=cname:");
        assert!(cnames.len() >= 2, "every SSRC has a cname:\n{answer}");
        cnames.dedup();
        assert_eq!(cnames.len(), 1, "one cname:\n{answer}");
        let first_ssrc: u32 = values(&answer, "a=ssrc:")[0].parse().unwrap();
        assert_eq!(
            cnames[0],
            viewer_cname(first_ssrc),
            "the cname our SDES sends"
        );
        let semantic = answer
            .lines()
            .find(|l| l.starts_with("a=msid-semantic"))
            .expect("msid-semantic line");
        assert!(semantic.ends_with(&streams[0]), "{semantic}");
    }
}
