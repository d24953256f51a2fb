//! A file as a response: whole, or the one byte range a `Range` header asks for (RFC 9110
//! §14), so a browser can seek in a recording it plays from its download link. The bytes are
//! read in chunks on the blocking pool, one chunk at a time as the client takes them: a long
//! or slow download holds neither the file in memory nor a thread while it waits.

use std::convert::Infallible;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame};
use hyper::{Response, StatusCode, header};

use super::{ApiError, HttpResponse};

/// Bytes read per chunk: large enough that a 450 MB segment is a few thousand reads.
const CHUNK: u64 = 256 << 10;

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    All,
    /// Bytes `start..=end`.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses `Range` (one `bytes` range; a header we do not understand, or several ranges, gets
/// the whole file, as RFC 9110 §14.2 allows).
pub(crate) fn wanted(range: Option<&str>, len: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        (Ok(start), Err(_)) if b.is_empty() => (start, len.saturating_sub(1)),
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 {
                return Wanted::Unsatisfiable;
            }
            (len.saturating_sub(suffix), len.saturating_sub(1))
        }
        _ => return Wanted::All,
    };
    if start >= len {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part(start, end)
    }
}

/// `path` as `content_type`, answering `range`; headers only for HEAD.
pub(crate) async fn serve(
    path: PathBuf,
    range: Option<String>,
    head: bool,
    content_type: &'static str,
) -> Result<HttpResponse, ApiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opened = tokio::task::spawn_blocking(move || {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .await
    .map_err(|_| ApiError::ShuttingDown)?;
    let (file, len) = opened.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::NoSuchRecording,
        _ => ApiError::RecordingsUnreadable,
    })?;
    let (status, start, end) = match wanted(range.as_deref(), len) {
        Wanted::All => (StatusCode::OK, 0, len),
        Wanted::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        Wanted::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { len }),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-store")
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{name}\""),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    let body = match head {
        true => super::full(Bytes::new()),
        false => stream(Arc::new(file), start, end),
    };
    Ok(builder.body(body).expect("valid headers"))
}

/// Bytes `start..end` of `file`, each chunk read when the previous one has been taken.
fn stream(
    file: Arc<File>,
    start: u64,
    end: u64,
) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let mut at = start;
        while at < end {
            let n = CHUNK.min(end - at);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                f.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await;
            // A read that fails (or a file cut shorter meanwhile) ends the body early; the
            // client sees fewer bytes than Content-Length promised and knows.
            let Ok(Ok(buf)) = read else { break };
            if tx.send(Bytes::from(buf)).await.is_err() {
                break; // the client went away
            }
            at += n;
        }
    });
    FileBody { rx }.boxed()
}

struct FileBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(wanted(None, 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=90-1000"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-1000"), 100), Wanted::Part(0, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        // Not understood, or several: the whole file.
        assert_eq!(wanted(Some("bytes=5-2"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::All);
    }
}
