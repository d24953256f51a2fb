//! Every option, with its default and why. Each flag also reads a `WHIPCAST_*` variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// whipcast: OBS publishes over WHIP, browsers watch over WHEP, with sub-second latency.
#[derive(Parser, Debug, Clone)]
#[command(name = "whipcast", version, about)]
pub struct Config {
    /// Address for HTTP: the pages, the API, WHIP and WHEP.
    ///
    /// All interfaces by default, so other machines on the network can reach the pages.
    #[arg(long, env = "WHIPCAST_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// Address of the one UDP socket that carries all WebRTC media (ICE, DTLS, SRTP).
    ///
    /// With a specific IP (e.g. 127.0.0.1:8189) exactly that address is advertised; with an
    /// unspecified one (0.0.0.0) every address of the machine's interfaces is.
    #[arg(long, env = "WHIPCAST_UDP_LISTEN", default_value = "0.0.0.0:8189")]
    pub udp_listen: SocketAddr,

    /// TCP address for ICE-TCP, so viewers on networks that block UDP still play (passive
    /// TCP candidates, RFC 6544, framed as RFC 4571). Default: the --udp-listen address, on
    /// TCP. `off` turns it off. OBS never uses it (its WHIP client is UDP only); nor does the
    /// broadcaster page's connection test, which is about UDP.
    #[arg(long, env = "WHIPCAST_ICE_TCP_LISTEN", value_parser = parse_ice_tcp)]
    pub ice_tcp_listen: Option<IceTcp>,

    /// Address to advertise in ICE candidates instead of the local ones, for 1:1 NAT and
    /// Docker (repeat it for IPv4 and IPv6). The ports stay those of --udp-listen and
    /// --ice-tcp-listen.
    #[arg(long = "public-ip", env = "WHIPCAST_PUBLIC_IP", value_delimiter = ',')]
    pub public_ips: Vec<IpAddr>,

    /// Directory for the state file (broadcasts survive a restart).
    #[arg(long, env = "WHIPCAST_DATA_DIR", default_value = "whipcast-data")]
    pub data_dir: PathBuf,

    /// How many broadcasts may be live at once. Each live one costs ingest plus fan-out CPU;
    /// four matches the original service's capacity.
    #[arg(long, env = "WHIPCAST_MAX_LIVE_BROADCASTS", default_value_t = 4)]
    pub max_live_broadcasts: usize,

    /// Viewers per broadcast. Eight keeps a home upload link and a small machine comfortable.
    #[arg(long, env = "WHIPCAST_MAX_VIEWERS", default_value_t = 8)]
    pub max_viewers: usize,

    /// What happens when one more viewer joins a full broadcast.
    #[arg(long, env = "WHIPCAST_WHEN_FULL", value_enum, default_value_t = WhenFull::EvictOldest)]
    pub when_full: WhenFull,

    /// How long viewers stay connected, shown "reconnecting", when the publisher vanishes
    /// without DELETE (OBS crash, Wi-Fi drop). OBS retries after 2 s and backs off, so 30 s
    /// covers a few attempts. Units: s, m, h, d.
    #[arg(long, env = "WHIPCAST_RESUME_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub resume_grace: Duration,

    /// Broadcasts not published to for this long are forgotten. Units: s, m, h, d.
    #[arg(long, env = "WHIPCAST_ID_TTL", default_value = "30d", value_parser = parse_duration)]
    pub id_ttl: Duration,

    /// Broadcasts never published to are forgotten after this long: without --create-token
    /// anyone may create them, and they must not hold the --max-broadcasts places for
    /// --id-ttl. Units: s, m, h, d.
    #[arg(long, env = "WHIPCAST_UNPUBLISHED_TTL", default_value = "6h", value_parser = parse_duration)]
    pub unpublished_ttl: Duration,

    /// Broadcasts one client (an IPv4 address, an IPv6 /64) may create per hour; more get
    /// `429` + `Retry-After`. A person needs one or two.
    #[arg(long, env = "WHIPCAST_MAX_CREATIONS_PER_IP", default_value_t = 10)]
    pub max_creations_per_ip: usize,

    /// Viewer sessions one client may have connecting at once (answered, handshake not yet
    /// done; a session gives its place back when it connects or closes); more get `429`
    /// with `Retry-After: 1`. A household opens a few at a time.
    #[arg(long, env = "WHIPCAST_MAX_PENDING_VIEWERS_PER_IP", default_value_t = 8)]
    pub max_pending_viewers_per_ip: usize,

    /// Open HTTP connections allowed from one client (an IPv4 address, an IPv6 /64); more
    /// get `429`. Browsers open six per host, so 64 leaves room for a household behind one
    /// NAT. Connections from a --trusted-proxy count only toward --max-connections.
    #[arg(long, env = "WHIPCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,

    /// Open HTTP connections in total; more get `503`. Each costs a file descriptor and some
    /// memory; 1024 is far above what --max-live-broadcasts × --max-viewers need, and the
    /// systemd unit allows the descriptors for it.
    #[arg(long, env = "WHIPCAST_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Reverse proxies whose `X-Forwarded-For` names the client (repeat or comma-separate).
    /// Only connections from these addresses are believed; everyone else's header is
    /// ignored. Without it, behind a proxy every client looks like the proxy and shares one
    /// client's limits (deploy/DEPLOY.md).
    #[arg(
        long = "trusted-proxy",
        env = "WHIPCAST_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpAddr>,

    /// Largest request body (SDP offers, trickle fragments). An offer is a few KB; 64 KiB
    /// leaves room for many candidates and codecs.
    #[arg(long, env = "WHIPCAST_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Broadcasts the server keeps. Creating one more answers 503: with no --create-token,
    /// anyone can create broadcasts, and the state file must not grow without end.
    #[arg(long, env = "WHIPCAST_MAX_BROADCASTS", default_value_t = 10_000)]
    pub max_broadcasts: usize,

    /// A client must send its request headers within this time, or the connection is closed
    /// (slowloris); a request body must arrive within the same time, or it gets `408`.
    /// Units: s, m.
    #[arg(long, env = "WHIPCAST_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A new session that has not finished ICE and DTLS by then is freed. Units: s, m.
    #[arg(long, env = "WHIPCAST_HANDSHAKE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// PEM certificate chain: serve HTTPS (and WHIP/WHEP over it) on --http-listen. Browsers
    /// need HTTPS for camera publishing and on any non-localhost origin. Needs --tls-key.
    #[arg(long, env = "WHIPCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "WHIPCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Check the flags, the files they name and that the ports can be bound, print what the
    /// server would do, and exit (0 if all is well).
    #[arg(long)]
    pub check_config: bool,

    /// If set, `POST /api/broadcasts` requires `Authorization: Bearer <token>`, so a public
    /// server does not hand out broadcasts to anyone.
    #[arg(long, env = "WHIPCAST_CREATE_TOKEN", hide_env_values = true)]
    pub create_token: Option<String>,

    /// Media threads, each with its own share of the sessions (engine, timers, sending
    /// handle on the one UDP port): broadcasts and each broadcast's viewers spread over
    /// them. Default: one per core (an edge: 1). 1 keeps the single media loop, which also
    /// reads the socket itself.
    #[arg(long, env = "WHIPCAST_WORKERS", value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Run as an edge of this origin (`https://origin.example:8443` or
    /// `http://origin.example:8080`): a WHEP request for a view ID this server does not know
    /// pulls that broadcast from the origin over WHEP (one session per broadcast, however
    /// many viewers watch here). Needs --edge-secret.
    #[arg(long, env = "WHIPCAST_ORIGIN", requires = "edge_secret", value_parser = parse_origin)]
    pub origin: Option<String>,

    /// PEM file with the CA certificate(s) an `https://` origin's certificate chains to,
    /// besides the system's: a private CA, or the origin's self-signed certificate.
    #[arg(long, env = "WHIPCAST_ORIGIN_CA", requires = "origin")]
    pub origin_ca: Option<PathBuf>,

    /// The secret shared by an origin and its edges: an edge sends it with its pulls and its
    /// registration; an origin accepts edges that know it. Set it on both.
    #[arg(long, env = "WHIPCAST_EDGE_SECRET", hide_env_values = true)]
    pub edge_secret: Option<String>,

    /// This edge's own base URL as viewers reach it (`http://edge1.example:8080`), sent to
    /// the origin when registering so the origin can redirect viewers here.
    #[arg(long, env = "WHIPCAST_EDGE_URL", requires = "origin", value_parser = parse_origin)]
    pub edge_url: Option<String>,

    /// On an origin: answer a viewer's WHEP POST with `307` to the least-loaded registered
    /// edge (RFC 9725 allows redirects); with no edge alive, or all full, serve it here.
    #[arg(long, env = "WHIPCAST_REDIRECT_VIEWERS", requires = "edge_secret")]
    pub redirect_viewers: bool,

    /// Record every broadcast as fragmented MP4 files (H.264 + Opus, no transcoding) under
    /// --record-dir. Off by default: recording costs disk and a thread.
    #[arg(long, env = "WHIPCAST_RECORD")]
    pub record: bool,

    /// Where recordings go: one directory per broadcast, named by its label.
    #[arg(
        long,
        env = "WHIPCAST_RECORD_DIR",
        default_value = "whipcast-data/recordings"
    )]
    pub record_dir: PathBuf,

    /// A new file every this long (at the next keyframe), so one file never grows without
    /// bound and an old part can be deleted alone. Units: s, m, h, d.
    #[arg(long, env = "WHIPCAST_RECORD_SEGMENT", default_value = "10m", value_parser = parse_duration)]
    pub record_segment: Duration,

    /// Bytes of recordings one broadcast may hold on disk; when reached its recording stops
    /// (the broadcast goes on). Unlimited when unset. Units: K, M, G, T (powers of 1024).
    #[arg(long, env = "WHIPCAST_RECORD_MAX_BYTES", value_parser = parse_bytes)]
    pub record_max_bytes: Option<u64>,

    /// Free space the disk under --record-dir keeps: below it recordings stop (the broadcasts
    /// go on), so recording never fills the disk the state file and logs live on. 1G is about
    /// 20 minutes of one 6 Mb/s broadcast: time to notice and make room.
    #[arg(long, env = "WHIPCAST_RECORD_MIN_FREE", default_value = "1G", value_parser = parse_bytes)]
    pub record_min_free: u64,

    /// TESTING ONLY, hidden from --help: every viewer stream's first RTP sequence number
    /// instead of a random one, so a test crosses the 16-bit wrap within seconds.
    #[arg(long, env = "WHIPCAST_TEST_SEQ_START", hide = true)]
    pub test_seq_start: Option<u16>,
}

/// Policy for a viewer joining a broadcast that already has `--max-viewers` viewers.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// The newcomer gets in and the oldest viewer is told it was replaced.
    EvictOldest,
    /// The newcomer gets `503` + `Retry-After`, as the WHEP draft describes.
    Reject,
}

/// `--ice-tcp-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceTcp {
    Off,
    At(SocketAddr),
}

fn parse_ice_tcp(s: &str) -> Result<IceTcp, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(IceTcp::Off);
    }
    s.parse()
        .map(IceTcp::At)
        .map_err(|_| format!("\"{s}\" is not an address like 0.0.0.0:8189, or off"))
}

impl Config {
    /// Where ICE-TCP listens, if it is on.
    pub fn ice_tcp_addr(&self) -> Option<SocketAddr> {
        match self.ice_tcp_listen {
            None => Some(self.udp_listen),
            Some(IceTcp::At(addr)) => Some(addr),
            Some(IceTcp::Off) => None,
        }
    }

    /// The addresses to advertise as ICE host candidates, given the bound UDP (or TCP)
    /// address.
    pub fn advertised_addrs(&self, bound: SocketAddr) -> Vec<SocketAddr> {
        let port = bound.port();
        if !self.public_ips.is_empty() {
            return self
                .public_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
        }
        if !bound.ip().is_unspecified() {
            return vec![bound];
        }
        let want_v6 = bound.is_ipv6();
        let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| !ip.is_loopback() && (ip.is_ipv4() || want_v6))
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            // A machine with no network still serves viewers on the same machine.
            addrs.push(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
        }
        addrs
    }
}

impl Config {
    /// The media threads to run: `--workers`, or one per core the process may use (an
    /// edge keeps one: see `StartError::EdgeWithWorkers`).
    pub fn media_workers(&self) -> usize {
        match (self.workers, &self.origin) {
            (Some(n), _) => n,
            (None, Some(_)) => 1,
            (None, None) => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS),
        }
    }
}

/// `--workers`: 1 to [`MAX_WORKERS`].
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "\"{s}\" is not a worker count from 1 to {MAX_WORKERS}"
        )),
    }
}

/// More media threads than any machine we target has cores; each costs a thread and a
/// queue, so a typo like 1000 is refused rather than obeyed.
pub const MAX_WORKERS: usize = 256;

/// `https://host:port` or `http://host:port` (a path prefix is allowed; no trailing slash
/// is kept). Plain HTTP sends the edge secret in the clear: keep it on a private network or
/// a tunnel (deploy/DEPLOY.md).
fn parse_origin(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("\"{s}\" must start with https:// or http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
        return Err(format!("\"{s}\" has no usable host:port"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `90`, `90s`, `5m`, `2h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 30s, 5m, 2h or 30d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit \"{unit}\": use s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("\"{s}\" is too long"))
}

/// A byte count: a number with an optional unit K, M, G or T (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size like 500M or 2G"))?;
    let shift = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("unknown unit \"{unit}\": use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("300000"), Ok(300_000));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("500MiB"), Ok(500 << 20));
        assert!(parse_bytes("2X").is_err());
        assert!(parse_bytes("99999999T").is_err());
    }

    #[test]
    fn specific_udp_address_is_advertised_exactly() {
        let c = Config::parse_from(["whipcast", "--udp-listen", "127.0.0.1:9000"]);
        let bound: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(c.advertised_addrs(bound), vec![bound]);
    }

    #[test]
    fn public_ip_replaces_local_addresses_and_keeps_the_port() {
        let c = Config::parse_from(["whipcast", "--public-ip", "203.0.113.7"]);
        let bound: SocketAddr = "0.0.0.0:8189".parse().unwrap();
        assert_eq!(
            c.advertised_addrs(bound),
            vec!["203.0.113.7:8189".parse().unwrap()]
        );
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::parse_from(["whipcast"]);
        assert_eq!(c.http_listen.port(), 8080);
        assert_eq!(c.udp_listen.port(), 8189);
        assert_eq!(c.max_live_broadcasts, 4);
        assert_eq!(c.max_viewers, 8);
        assert_eq!(c.when_full, WhenFull::EvictOldest);
        assert_eq!(c.resume_grace, Duration::from_secs(30));
        assert_eq!(c.id_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.unpublished_ttl, Duration::from_secs(6 * 3_600));
        assert!(
            c.trusted_proxies.is_empty(),
            "no forwarded address by default"
        );
    }

    #[test]
    fn ice_tcp_follows_the_udp_address_unless_set_or_off() {
        let c = Config::parse_from(["whipcast", "--udp-listen", "127.0.0.1:9000"]);
        assert_eq!(c.ice_tcp_addr(), Some("127.0.0.1:9000".parse().unwrap()));
        let c = Config::parse_from(["whipcast", "--ice-tcp-listen", "0.0.0.0:443"]);
        assert_eq!(c.ice_tcp_addr(), Some("0.0.0.0:443".parse().unwrap()));
        let c = Config::parse_from(["whipcast", "--ice-tcp-listen", "off"]);
        assert_eq!(c.ice_tcp_addr(), None);
        assert!(Config::try_parse_from(["whipcast", "--ice-tcp-listen", "nope"]).is_err());
    }

    #[test]
    fn durations_take_units_and_reject_garbage() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn workers_default_to_one_per_core_and_reject_zero() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::parse_from(["whipcast"]).media_workers(), cores);
        let edge = [
            "whipcast",
            "--origin",
            "http://o:8080",
            "--edge-secret",
            "s",
        ];
        assert_eq!(
            Config::parse_from(edge).media_workers(),
            1,
            "an edge keeps one"
        );
        let c = Config::parse_from(["whipcast", "--workers", "2"]);
        assert_eq!(c.media_workers(), 2);
        assert!(Config::try_parse_from(["whipcast", "--workers", "0"]).is_err());
        assert!(Config::try_parse_from(["whipcast", "--workers", "9999"]).is_err());
    }

    #[test]
    fn an_origin_is_an_https_or_http_base_url() {
        let ok = |s: &str| parse_origin(s).ok();
        assert_eq!(
            ok("https://o.example:8443/").as_deref(),
            Some("https://o.example:8443")
        );
        assert_eq!(
            ok("http://10.0.0.1:8080").as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(ok("ftp://o.example"), None);
        assert_eq!(ok("https://"), None);
        assert_eq!(ok("https://user@o.example"), None);
    }
}
