//! Raw HTTP/2 frames over TLS, for tests that must do what no HTTP/2 client library does:
//! open more streams than the server allows, or open and reset hundreds in one write.
//! Header blocks are HPACK by hand (static-table indices and plain literals).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read: type, flags, stream ID, payload.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client connection preface and an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    b
}

/// The header block of `GET <path>` over https (`:authority` left out; it is optional).
pub fn get(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    literal(&mut b, 0x04, path); // :path, literal without indexing (static index 4)
    b
}

/// The header block of `POST <path>` with `content-type: <content_type>`.
pub fn post(path: &str, content_type: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x87]; // :method POST, :scheme https
    literal(&mut b, 0x04, path);
    b.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31), without indexing
    push_string(&mut b, content_type);
    b
}

fn literal(b: &mut Vec<u8>, name_index: u8, value: &str) {
    b.push(name_index);
    push_string(b, value);
}

/// A plain (not Huffman) HPACK string, up to 126 bytes.
fn push_string(b: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127, "short strings only");
    b.push(s.len() as u8);
    b.extend_from_slice(s.as_bytes());
}

/// Reads frames until `stop` says so or the connection ends; returns every frame read.
pub async fn read_until<S: AsyncReadExt + Unpin>(
    s: &mut S,
    mut stop: impl FnMut(&Frame) -> bool,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return frames;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return frames;
        }
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        let done = stop(&f);
        frames.push(f);
        if done {
            return frames;
        }
    }
}

/// Writes `bytes` and flushes.
pub async fn send<S: AsyncWriteExt + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}
