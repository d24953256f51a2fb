//! Network namespaces of the test's own, joined by veth pairs: hosts behind a 1:1 NAT, or a
//! viewer whose UDP is blocked. Needs root, `ip` (iproute2) and `nft` (nftables); a test fails,
//! never skips, without them. Everything is removed when the values are dropped.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh namespace with its loopback up.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("wc{}", unique());
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft runs: apt-get install nftables");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft refused:\n{ruleset}");
    }

    /// Turns on IPv4 forwarding (a router namespace).
    pub fn forward(&self) {
        let ok = self
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .status()
            .expect("sysctl runs");
        assert!(ok.success(), "cannot turn on forwarding in {}", self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth ends in it, and so their peers.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins `a` and `b` (None: the root namespace) with a veth pair and gives each end its
/// address (`10.x.y.z/24`); returns the names of `a`'s end and `b`'s (to shape one of them).
/// Nothing to clean up: the namespaces' drop does it.
pub fn link(a: Option<&Netns>, a_addr: &str, b: Option<&Netns>, b_addr: &str) -> (String, String) {
    let n = unique();
    let (ea, eb) = (format!("wca{n}"), format!("wcb{n}"));
    ip(&["link", "add", &ea, "type", "veth", "peer", "name", &eb]);
    for (ns, end, addr) in [(a, &ea, a_addr), (b, &eb, b_addr)] {
        match ns {
            Some(ns) => {
                ip(&["link", "set", end, "netns", &ns.name]);
                ns.ip(&["addr", "add", addr, "dev", end]);
                ns.ip(&["link", "set", end, "up"]);
            }
            None => {
                ip(&["addr", "add", addr, "dev", end]);
                ip(&["link", "set", end, "up"]);
            }
        }
    }
    (ea, eb)
}

/// A number no other namespace or interface of this run has (names stay under 15 bytes).
fn unique() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}x{n}", std::process::id() % 100_000)
}

/// Runs `ip` and insists it worked.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` runs: the tests need iproute2 and root");
    assert!(
        out.status.success(),
        "ip {}: {} (the network-namespace tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
