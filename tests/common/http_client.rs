//! A tiny blocking HTTP/1.1 client for the tests (they talk to 127.0.0.1 only): one request
//! per connection, `https://` through `tls_client`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A blocking HTTP/1.1 exchange: (status, headers, body). `https://` URLs trust what
/// `tls_client::trust` was given.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").expect("http URL")),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let s = TcpStream::connect(host).expect("server reachable");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = (method, host, path, headers, body);
    if https {
        exchange(&mut super::tls_client::stream(host, s), request)
    } else {
        exchange(&mut { s }, request)
    }
}

type Request<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

fn exchange(
    s: &mut impl ReadWrite,
    (method, host, path, headers, body): Request,
) -> (u16, Vec<(String, String)>, String) {
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        if path.is_empty() { "/" } else { path },
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly Content-Length bytes: chromedriver keeps connections open.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("an HTTP answer");
        assert!(n > 0, "connection closed before the headers ended");
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = s.read(&mut chunk).expect("the body");
                assert!(n > 0, "connection closed in the body");
                raw.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            let _ = s.read_to_end(&mut raw);
        }
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    (status, headers, body)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
