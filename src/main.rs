//! The `whipcast` binary: parse flags, start, run until ctrl-c or SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use whipcast::{Config, Server};

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    // Logs go to stderr, so stdout carries only the one line that says where to connect.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::parse();
    if config.check_config {
        return match whipcast::server::check(&config) {
            Ok(summary) => {
                print!("{summary}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("whipcast: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("whipcast: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!(
            "whipcast: open http://{} in a browser (media on UDP {})",
            server.http_addr, server.udp_addr
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
