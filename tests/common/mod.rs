#![allow(dead_code)] // each test binary uses a different part of the helpers

pub mod annexb;
pub mod as_sent;
pub mod av;
pub mod chromium;
pub mod edges;
pub mod firefox;
pub mod gst;
pub mod h2_frames;
pub mod http_client;
pub mod http_server;
pub mod link;
pub mod long_run;
pub mod netns;
pub mod obs_simulcast;
pub mod opus;
pub mod page_test;
pub mod pair;
pub mod process;
pub mod raw_http;
pub mod server;
pub mod shaped;
pub mod sim;
pub mod sim_session;
pub mod sse;
pub mod tls_client;
pub mod udp_client;
