//! A minimal HTTP/1.1 client for a whipcast on loopback: one request per connection
//! (`Connection: close`), bodies with `Content-Length` or chunked, every request bounded by a
//! timeout. Base URLs that are not loopback are refused, so the generator can never be
//! pointed at someone else's server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any single request, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Answers larger than this are cut off (an SDP answer is a few KB).
const MAX_RESPONSE: usize = 1 << 20;

/// A parsed `http://host:port[/prefix]` on a loopback host.
#[derive(Clone, Debug)]
pub struct Base {
    /// `host:port` as it goes to `connect` and into the `Host` header.
    authority: String,
    /// A path prefix (no trailing slash), usually empty.
    prefix: String,
    /// Whether the host is IPv6 (`[::1]`), so UDP sockets bind the same family.
    pub ipv6: bool,
    /// The loopback address our UDP sockets bind to: `127.0.0.1` or `::1` unless
    /// `--local-ip` says otherwise ([`Base::with_local`]).
    pub local: IpAddr,
}

impl Base {
    /// Accepts `http://127.0.0.1:8080`, `http://localhost:8080/`, `http://[::1]:8080`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            (h, p.strip_prefix(':').unwrap_or("80"))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (authority, "80"),
            }
        };
        let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
        let ipv6 = match host.to_ascii_lowercase().as_str() {
            "127.0.0.1" | "localhost" => false,
            "::1" => true,
            other => {
                return Err(format!(
                    "--base must be a loopback address (127.0.0.1, localhost, [::1]), not {other:?}"
                ));
            }
        };
        let authority = if ipv6 {
            format!("[::1]:{port}")
        } else {
            // "localhost" may resolve to ::1 first; the server usually listens on 127.0.0.1.
            format!("127.0.0.1:{port}")
        };
        Ok(Self {
            authority,
            prefix: path.trim_end_matches('/').to_owned(),
            ipv6,
            local: if ipv6 {
                Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            },
        })
    }

    /// Binds our UDP sockets to `ip` instead, which must be a loopback address of the same
    /// family (e.g. 127.0.0.2, which the Janus run gives a non-loopback interface).
    pub fn with_local(mut self, ip: IpAddr) -> Result<Self, String> {
        if !ip.is_loopback() || ip.is_ipv6() != self.ipv6 {
            return Err(format!(
                "--local-ip must be a loopback address of the server's family, not {ip}"
            ));
        }
        self.local = ip;
        Ok(self)
    }

    /// The full path of an endpoint, e.g. `/stream?id=…` under the prefix. Paths the server
    /// hands back (`Location`) are absolute already and are used as they are.
    pub fn path(&self, p: &str) -> String {
        format!("{}{p}", self.prefix)
    }
}

pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// A header by its lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request and reads the whole answer.
pub async fn request(
    base: &Base,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<Response, String> {
    let io = async {
        let mut s = TcpStream::connect(&base.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", base.authority))?;
        let _ = s.set_nodelay(true);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: whipcast-loadgen\r\nContent-Length: {}\r\n",
            base.authority,
            body.len()
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, io)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {TIMEOUT:?}"))??;
    parse_response(&raw).ok_or_else(|| format!("{method} {path}: malformed HTTP answer"))
}

/// `POST` with a body, expecting `201 Created`; returns the answer and its `Location`.
pub async fn post_created(
    base: &Base,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(Response, String), String> {
    let res = request(base, "POST", path, Some(content_type), body).await?;
    if res.status != 201 {
        let detail: String = res.body.chars().take(300).collect();
        return Err(format!("POST {path}: {} {detail}", res.status));
    }
    let location = res.header("location").unwrap_or_default().to_owned();
    Ok((res, location))
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = &raw[split + 4..];
    let chunked;
    let chunked_body = {
        let te = headers.iter().find(|(k, _)| k == "transfer-encoding");
        chunked = te.is_some_and(|(_, v)| v.eq_ignore_ascii_case("chunked"));
        if chunked { dechunk(body)? } else { Vec::new() }
    };
    if chunked {
        body = &chunked_body;
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body = body.get(..n)?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Decodes a `Transfer-Encoding: chunked` body (extensions and trailers ignored).
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(Base::parse("http://127.0.0.1:8080").is_ok());
        assert!(Base::parse("http://localhost:8080/").is_ok());
        assert!(Base::parse("http://[::1]:8080").unwrap().ipv6);
        assert!(Base::parse("http://10.0.0.1:8080").is_err());
        assert!(Base::parse("http://example.com").is_err());
        assert!(Base::parse("https://127.0.0.1").is_err());
        assert!(Base::parse("http://127.0.0.1.evil.com:80").is_err());
        let v4 = Base::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(v4.local, IpAddr::from([127, 0, 0, 1]));
        let other = v4.clone().with_local([127, 0, 0, 2].into()).unwrap();
        assert_eq!(other.local, IpAddr::from([127, 0, 0, 2]));
        assert!(v4.clone().with_local([192, 0, 2, 2].into()).is_err());
        assert!(v4.with_local(Ipv6Addr::LOCALHOST.into()).is_err());
    }

    #[test]
    fn bodies() {
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nLocation: /x\r\n\r\nabcdef",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("location")),
            (201, "abc", Some("/x"))
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "abcde");
    }
}
