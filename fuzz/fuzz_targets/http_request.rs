//! Any bytes as an HTTP/1.1 request to the real server (hyper's parser, the router, every
//! handler): an answer or a closed connection, never a crash, and the server stays healthy.
//! The fuzzer connects from a trusted proxy's address, so `X-Forwarded-For` is parsed too.

#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dir = std::env::temp_dir().join("whipcast-fuzz-http");
                let config = whipcast::Config::parse_from([
                    "whipcast",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--udp-listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    dir.to_str().unwrap(),
                    "--trusted-proxy",
                    "127.0.0.1",
                ]);
                let server = whipcast::Server::start(config).await.unwrap();
                tx.send(server.http_addr).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = stream.write_all(data);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    // The server must still answer a well-formed request.
    let mut probe = TcpStream::connect(addr).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut ok = Vec::new();
    let _ = probe.read_to_end(&mut ok);
    assert!(
        ok.starts_with(b"HTTP/1.1 200"),
        "server unhealthy after input"
    );
});
