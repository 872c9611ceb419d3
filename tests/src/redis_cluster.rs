//! A private Redis Cluster for tests: primaries and replicas on loopback — or each in a host of a network test bed
//! ([`crate::netbed`]) — made with `redis-cli --cluster create`, with the controls the failover tests need (kill a
//! node, pause it, bring it back, wait for a replica to take over).
//!
//! Measured on a 2-core machine: a cluster node's port must be ≤ 55535 and port + 10000 (its cluster bus) must be
//! free too; replicas start with `--repl-diskless-sync-delay 0`, and every replica must report
//! `master_link_status:up` before a primary is killed, or no replica can take over. With `--cluster-node-timeout
//! 1500` a killed primary's replica took over in about 3.6 s.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node of the cluster: a `redis-server` child with its own directory (which keeps its `nodes.conf`). Nodes are
/// told apart by port (unique in a cluster, in a bed too).
struct Node {
    ip: String,
    /// The network namespace it runs in (a bed's host), if any.
    ns: Option<String>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Append-only file with `appendfsync always`, so a node restarted after a kill has its data back.
    persistence: bool,
}

/// A cluster of private `redis-server` processes; every process is killed and every directory removed on drop.
pub struct TestCluster {
    nodes: Vec<Node>,
    root: PathBuf,
    node_timeout_ms: u64,
}

/// `port` and its cluster bus port `port + 10000` are both free.
fn free_pair(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
}

fn redis_cli() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

impl TestCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until the cluster serves every slot and
    /// every replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, false)
    }

    /// As [`TestCluster::start`]; with `persistence`, every node keeps an fsynced append-only file, so the whole
    /// cluster can be killed and started again without losing anything acknowledged.
    pub fn start_with(primaries: usize, replicas: usize, persistence: bool) -> Self {
        let count = primaries * (1 + replicas);
        let mut ports = Vec::new();
        let mut candidate: u16 = 20_000 + (rand::random::<u16>() % 25_000);
        while ports.len() < count {
            candidate = if candidate >= 45_000 { 20_000 } else { candidate + 1 };
            if free_pair(candidate) {
                ports.push(candidate);
            }
        }
        let places = ports.into_iter().map(|p| ("127.0.0.1".to_owned(), None, p)).collect();
        Self::create(places, replicas, persistence, 1_500)
    }

    /// A cluster whose nodes run in the bed's `hosts` (one node each, ports 7001, 7002, … in order); the first
    /// `hosts.len() / (1 + replicas)` are the primaries. `node_timeout_ms`: `cluster-node-timeout`.
    pub fn start_in_bed(bed: &crate::netbed::Bed, hosts: &[&str], replicas: usize, node_timeout_ms: u64) -> Self {
        let places = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = bed.host(h);
                (host.ip.to_string(), Some(host.ns.clone()), 7_001 + i as u16)
            })
            .collect();
        Self::create(places, replicas, false, node_timeout_ms)
    }

    fn create(places: Vec<(String, Option<String>, u16)>, replicas: usize, persistence: bool, timeout_ms: u64) -> Self {
        let root = std::env::temp_dir().join(format!("messenger-cluster-{}-{}", std::process::id(), ulid::Ulid::new()));
        std::fs::create_dir_all(&root).expect("create cluster dir");
        let mut cluster = Self { nodes: Vec::new(), root, node_timeout_ms: timeout_ms };
        for (ip, ns, port) in places {
            let dir = cluster.root.join(port.to_string());
            std::fs::create_dir_all(&dir).expect("create node dir");
            let mut node = Node { ip, ns, port, dir, child: None, persistence };
            spawn(&mut node, timeout_ms);
            cluster.nodes.push(node);
        }
        for n in &cluster.nodes {
            wait_for(Duration::from_secs(10), &format!("node {} to answer", n.port), || ping(&n.addr()));
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.nodes.iter().map(Node::addr));
        args.extend(["--cluster-replicas".into(), replicas.to_string(), "--cluster-yes".into()]);
        let out = Command::new(redis_cli()).args(&args).stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!("cannot run redis-cli: {e}. Install it (apt-get install redis-tools) or set REDIS_CLI_BIN")
        });
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// `redis://<ip>:<port>,…` for `REDIS_CLUSTER_NODES` (every node, so any may be down at start).
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://{}", n.addr())).collect::<Vec<_>>().join(",")
    }

    /// `ip:port` of the node on `port`.
    pub fn addr(&self, port: u16) -> String {
        self.node(port).addr()
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `cluster-node-timeout` of every node.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout_ms)
    }

    /// The pid of the node on `port` (while it runs).
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.node(port).child.as_ref().map(Child::id)
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the node on `port`.
    pub fn pause(&self, port: u16, paused: bool) {
        if let Some(pid) = self.pid(port) {
            unsafe {
                libc::kill(pid as i32, if paused { libc::SIGSTOP } else { libc::SIGCONT });
            }
        }
    }

    /// The ports of the replicas of the primary on `port`, as they say themselves.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let primary = self.node(port);
        self.running()
            .filter(|n| {
                let info = info(&n.addr(), "replication");
                let field =
                    |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(str::to_owned);
                field("master_host:").as_deref() == Some(primary.ip.as_str())
                    && field("master_port:") == Some(port.to_string())
            })
            .map(|n| n.port)
            .collect()
    }

    /// The settings a Messenger process uses for this cluster.
    pub fn settings(&self) -> shared::config::RedisSettings {
        let mut s = shared::config::RedisSettings::node("redis://unused", Duration::from_secs(10));
        s.cluster_nodes = self.seeds().split(',').map(|u| u.to_owned().into()).collect();
        s
    }

    /// A cluster connection (as Messenger's processes make).
    pub async fn conn(&self) -> shared::store::Conn {
        shared::store::connect(&self.settings()).await.expect("connect to the test cluster")
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Ports of the nodes that are primaries now (as they say themselves).
    pub fn primaries(&self) -> Vec<u16> {
        let mut out: Vec<u16> =
            self.running().filter(|n| role(&n.addr()).as_deref() == Some("master")).map(|n| n.port).collect();
        out.sort_unstable();
        out
    }

    /// The port of the primary that serves `key` now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let any = self.running().next().expect("a running node").addr();
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut conn(&any)).expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn(&any)).expect("CLUSTER NODES");
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<i64>(), hi.parse::<i64>())
                    && (lo..=hi).contains(&slot)
                {
                    return port;
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// Keys held by each primary (`DBSIZE`), by port.
    pub fn keys_per_primary(&self) -> Vec<(u16, i64)> {
        self.primaries()
            .into_iter()
            .map(|p| (p, redis::cmd("DBSIZE").query(&mut conn(&self.addr(p))).unwrap_or(-1)))
            .collect()
    }

    /// `INFO <section>` field of one node, as a number.
    pub fn info_field(&self, port: u16, section: &str, field: &str) -> Option<f64> {
        let info: String = redis::cmd("INFO").arg(section).query(&mut conn(&self.addr(port))).ok()?;
        info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok())
    }

    /// Kills a node (SIGKILL): nothing it has not replicated survives.
    pub fn kill(&mut self, port: u16) {
        let n = self.nodes.iter_mut().find(|n| n.port == port).expect("no such node");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again with its `nodes.conf`: it rejoins (as a replica, once its slots were taken over).
    pub fn restart(&mut self, port: u16) {
        let timeout = self.node_timeout_ms;
        let n = self.nodes.iter_mut().find(|n| n.port == port).expect("no such node");
        spawn(n, timeout);
        let addr = n.addr();
        wait_for(Duration::from_secs(10), &format!("node {port} to answer"), || ping(&addr));
    }

    /// Waits until another node serves the slots `old` served, and the cluster is ok again; returns how long.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(timeout, &format!("a replica of {old} to take over"), || {
            self.running().all(|n| cluster_state(&n.addr()).as_deref() == Some("ok"))
                && self.running().any(|n| n.port != old && role(&n.addr()).as_deref() == Some("master"))
                && self.primaries().len() == self.nodes.len() / 2
        });
        started.elapsed()
    }

    /// Waits until every running node sees the cluster ok and every running replica is in sync with its primary.
    pub fn wait_healthy(&self, timeout: Duration) {
        wait_for(timeout, "the cluster to be ok with every replica in sync", || {
            self.running().all(|n| {
                cluster_state(&n.addr()).as_deref() == Some("ok")
                    && match role(&n.addr()).as_deref() {
                        Some("master") => true,
                        Some("slave") => info(&n.addr(), "replication").contains("master_link_status:up"),
                        _ => false,
                    }
            })
        });
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A paused node must resume for the kill to land.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() || std::env::var("TEST_KEEP_LOGS").is_ok() {
            eprintln!("cluster logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Node {
    fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

fn spawn(n: &mut Node, node_timeout_ms: u64) {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let args: Vec<String> = [
        "--port",
        &n.port.to_string(),
        "--bind",
        &n.ip,
        "--cluster-announce-ip",
        &n.ip,
        "--protected-mode",
        "no",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &node_timeout_ms.to_string(),
        "--repl-diskless-sync-delay",
        "0",
        "--save",
        "",
        "--appendonly",
        if n.persistence { "yes" } else { "no" },
        "--appendfsync",
        "always",
        "--dir",
        &n.dir.display().to_string(),
        "--logfile",
        "redis.log",
        "--enable-debug-command",
        "local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cmd = match &n.ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
    n.child = Some(child);
}

/// A connection to one node whose connect and every reply are bounded: a paused or cut-off node must not hang the
/// test.
fn client(addr: &str, connect: Duration) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(format!("redis://{addr}"))?.get_connection_with_timeout(connect)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(c)
}

fn conn(addr: &str) -> redis::Connection {
    client(addr, Duration::from_millis(500)).unwrap_or_else(|e| panic!("node {addr}: {e}"))
}

fn ping(addr: &str) -> bool {
    client(addr, Duration::from_millis(200)).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok()
}

fn info(addr: &str, section: &str) -> String {
    client(addr, Duration::from_millis(300))
        .and_then(|mut c| redis::cmd("INFO").arg(section).query::<String>(&mut c))
        .unwrap_or_default()
}

fn role(addr: &str) -> Option<String> {
    info(addr, "replication").lines().find_map(|l| l.strip_prefix("role:")).map(|r| r.trim().to_owned())
}

fn cluster_state(addr: &str) -> Option<String> {
    let info: String = client(addr, Duration::from_millis(300))
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
        .ok()?;
    info.lines().find_map(|l| l.strip_prefix("cluster_state:")).map(|s| s.trim().to_owned())
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
