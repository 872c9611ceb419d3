//! A network test bed: hosts in network namespaces of their own, joined by one bridge, with faults between them —
//! cuts (one way or both), loss, latency — for the partition tests.
//!
//! # Layout
//! Every host is a namespace `mnb<id>-<host>` with one interface `eth0` at `10.77.<id>.<n>/24`, whose peer is a port
//! `p-<host>` of the bridge `br0` in the bed's own switch namespace `mnb<id>-sw`. The test process (in the machine's
//! namespace) joins the bed through one veth, `mnb<id>` at `10.77.<id>.254`: it reaches every host (to run the
//! Twilio simulator and watch Redis), and faults never touch its port, as Twilio stays reachable from every side of
//! a real partition. Faults are nftables rules of the bridge family in the switch (by port, so they stop ARP too);
//! latency, which needs `tc netem` where the kernel has none, holds packets in an NFQUEUE of the host's namespace
//! served by `tests/netbed/nfq_delay.py`.
//!
//! # No packet leaves the machine
//! - Hosts have no default route, only the connected /24: any other destination fails at once (`ENETUNREACH`).
//!   [`Bed::new`] checks it for every host before returning. IPv6 is off in every host.
//! - The switch namespace has no address and no route; nothing forwards between namespaces but the bridge.
//! - In the machine's namespace, a guard table (`inet mnb<id>`) drops anything forwarded to or from the bed's veth
//!   (in case forwarding is on, as Docker turns it on) and any connection a host opens to the machine except to the
//!   test's own servers ([`Bed::allow_root_port`]), and an `unreachable` route for the bed's /24 (metric 9999) keeps
//!   the machine from sending bed addresses to its default gateway if the veth is gone. No NAT rule is made.
//! - Everything is removed on drop, also when the test fails (processes left in the namespaces are killed first, so
//!   the namespaces can go), and a bed left by a process that died is removed by the next one (`/run/mnb/<id>`
//!   holds the owner's pid).
//!
//! Every wait is bounded; the delay helper exits after the time it is given even if nobody stops it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A host of the bed.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its port on the switch.
    port: String,
}

/// A fault between hosts (by name), as the switch applies it.
#[derive(Clone, Debug)]
enum Rule {
    /// Packets from the first set to the second are dropped.
    Drop(Vec<String>, Vec<String>),
    /// Packets from the first set to the second are dropped with this probability (percent).
    Loss(Vec<String>, Vec<String>, u8),
}

/// A bed of namespaces; removed on drop.
pub struct Bed {
    id: u8,
    hosts: BTreeMap<String, Host>,
    rules: Mutex<Vec<Rule>>,
    /// Latency helpers and the host namespace each serves.
    delays: Mutex<Vec<(String, Child)>>,
    /// Ports of the machine hosts may connect to.
    root_ports: Mutex<Vec<u16>>,
    lock: PathBuf,
}

const STATE_DIR: &str = "/run/mnb";

/// Runs a command to completion; its stderr on failure.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Loads an nft script in a namespace (`None`: the machine's).
fn nft(ns: Option<&str>, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e} (apt-get install nftables)"))?;
    child.stdin.take().unwrap().write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(format!("nft: {}\n{script}", String::from_utf8_lossy(&out.stderr))) }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Bed {
    /// Whether beds can be made here (root, `ip`, `nft`, namespaces); otherwise why not, for the tests to say and
    /// skip.
    pub fn unavailable() -> Option<String> {
        if unsafe { libc::geteuid() } != 0 {
            return Some("network test bed needs root (network namespaces)".into());
        }
        for tool in ["ip", "nft", "iptables", "python3"] {
            if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
                return Some(format!("network test bed needs `{tool}` (scripts/ensure-deps installs it)"));
            }
        }
        let probe = format!("mnb-probe-{}", std::process::id());
        let made = ip(&["netns", "add", &probe]);
        let _ = ip(&["netns", "del", &probe]);
        made.err().map(|e| format!("network namespaces cannot be made here: {e}"))
    }

    /// Makes a bed with these hosts (addresses `.1`, `.2`, … in order), removing beds that dead processes left.
    pub fn new(names: &[&str]) -> Result<Self, String> {
        assert!(names.len() < 200, "at most 199 hosts");
        std::fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
        sweep();
        // Claim a free id: its lock file names this process.
        let mut claimed = None;
        for id in 1..=250u8 {
            let lock = PathBuf::from(format!("{STATE_DIR}/{id}"));
            let free = !lock.exists()
                && !ip(&["-4", "route", "show", &format!("10.77.{id}.0/24")]).is_ok_and(|r| !r.trim().is_empty())
                && !ip(&["-4", "addr"]).is_ok_and(|a| a.contains(&format!(" 10.77.{id}.")));
            if free
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes()))
                    .is_ok()
            {
                claimed = Some((id, lock));
                break;
            }
        }
        let (id, lock) = claimed.ok_or("no free 10.77.<id>.0/24 for a test bed")?;
        let mut bed = Bed {
            id,
            hosts: BTreeMap::new(),
            rules: Mutex::default(),
            delays: Mutex::default(),
            root_ports: Mutex::default(),
            lock,
        };
        bed.build(names)?;
        Ok(bed)
    }

    fn prefix(&self) -> String {
        format!("mnb{}", self.id)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix())
    }

    fn build(&mut self, names: &[&str]) -> Result<(), String> {
        let p = self.prefix();
        let sw = self.switch();
        let net = format!("10.77.{}", self.id);
        // The machine never routes the bed's addresses elsewhere, even without the veth.
        ip(&["route", "add", "unreachable", &format!("{net}.0/24"), "metric", "9999"])?;
        ip(&["netns", "add", &sw])?;
        let in_sw = |args: &[&str]| {
            let mut a = vec!["netns", "exec", sw.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        in_sw(&["link", "set", "lo", "up"])?;
        in_sw(&["link", "add", "br0", "type", "bridge"])?;
        in_sw(&["link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            assert!(name.len() <= 10 && name.chars().all(|c| c.is_ascii_alphanumeric()), "host name {name:?}");
            let ns = format!("{p}-{name}");
            let port = format!("p-{name}");
            let addr = Ipv4Addr::new(10, 77, self.id, i as u8 + 1);
            ip(&["netns", "add", &ns])?;
            let in_ns = |args: &[&str]| {
                let mut a = vec!["netns", "exec", ns.as_str()];
                a.extend_from_slice(args);
                ip(&a)
            };
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            run(Command::new("ip").args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))?;
            in_sw(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            in_sw(&["link", "set", &port, "master", "br0", "up"])?;
            in_ns(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            in_ns(&["ip", "link", "set", "eth0", "up"])?;
            self.hosts.insert(name.to_string(), Host { name: name.to_string(), ns, ip: addr, port });
        }
        // The machine's side: one veth into the switch, guarded against forwarding.
        ip(&["link", "add", &p, "type", "veth", "peer", "name", "p-root", "netns", &sw])?;
        in_sw(&["link", "set", "p-root", "master", "br0", "up"])?;
        let _ = run(Command::new("sysctl").args(["-qw", &format!("net.ipv6.conf.{p}.disable_ipv6=1")]));
        ip(&["addr", "add", &format!("{net}.254/24"), "dev", &p])?;
        ip(&["link", "set", &p, "up"])?;
        self.guard(&[])?;
        self.check_isolation()
    }

    /// The machine's guard table: nothing is forwarded to or from the bed, and hosts may open connections to the
    /// machine only on `ports` (the test's own servers) — not to whatever else listens on it.
    fn guard(&self, ports: &[u16]) -> Result<(), String> {
        let p = self.prefix();
        let allowed = if ports.is_empty() {
            String::new()
        } else {
            let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
            format!("iifname \"{p}\" tcp dport {{ {list} }} accept;")
        };
        nft(
            None,
            &format!(
                "table inet {p} {{}}\ndelete table inet {p}\ntable inet {p} {{\n\
                 chain forward {{ type filter hook forward priority -10; policy accept; \
                 iifname \"{p}\" drop; oifname \"{p}\" drop; }}\n\
                 chain input {{ type filter hook input priority -10; policy accept; \
                 iifname \"{p}\" ct state established,related accept; {allowed} iifname \"{p}\" drop; }}\n}}\n"
            ),
        )
    }

    /// Lets hosts connect to the machine's `port` at [`Bed::root_ip`] (the simulator, a test server).
    pub fn allow_root_port(&self, port: u16) {
        let mut ports = self.root_ports.lock().unwrap();
        ports.push(port);
        self.guard(&ports).expect("guard table");
    }

    /// Every host: no default route, and an address outside the bed is unreachable at once.
    fn check_isolation(&self) -> Result<(), String> {
        for h in self.hosts.values() {
            let routes = run(Command::new("ip").args(["netns", "exec", &h.ns, "ip", "-4", "route", "show"]))?;
            if routes.lines().any(|l| l.starts_with("default")) || routes.lines().count() != 1 {
                return Err(format!("host {} has routes beyond its /24: {routes}", h.name));
            }
            // 192.0.2.1 (TEST-NET-1) must not even be tried.
            let out = run(Command::new("ip").args(["netns", "exec", &h.ns, "ip", "-4", "route", "get", "192.0.2.1"]));
            if out.is_ok() {
                return Err(format!("host {} has a route to 192.0.2.1: {out:?}", h.name));
            }
        }
        Ok(())
    }

    /// The machine's address in the bed (where the test's own servers listen).
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.id, 254)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.get(name).unwrap_or_else(|| panic!("no host {name} in the bed"))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// `program` to run inside `host`'s namespace (`ip netns exec` execs it: the child's pid is the program's).
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.host(host).ns).arg(program);
        c
    }

    /// Drops every packet from `from` to `to` (one way: replies still pass the other way).
    pub fn cut_one_way(&self, from: &[&str], to: &[&str]) {
        self.rules.lock().unwrap().push(Rule::Drop(names(from), names(to)));
        self.apply();
    }

    /// Cuts `a` and `b` off from each other, both ways.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        let mut r = self.rules.lock().unwrap();
        r.push(Rule::Drop(names(a), names(b)));
        r.push(Rule::Drop(names(b), names(a)));
        drop(r);
        self.apply();
    }

    /// Drops `percent` of the packets between `a` and `b`, both ways.
    pub fn loss(&self, a: &[&str], b: &[&str], percent: u8) {
        let mut r = self.rules.lock().unwrap();
        r.push(Rule::Loss(names(a), names(b), percent));
        r.push(Rule::Loss(names(b), names(a), percent));
        drop(r);
        self.apply();
    }

    /// Delays every packet `host` sends to `peers` by `ms`, for at most `max` (the helper exits by itself then).
    pub fn delay(&self, host: &str, peers: &[&str], ms: u32, max: Duration) {
        let h = self.host(host).clone();
        let queue = 7;
        // `nft`'s own `queue` expression is not in every kernel; the xtables NFQUEUE target is (iptables-nft).
        for p in peers {
            let peer = self.host(p).ip.to_string();
            run(self.command(host, "iptables").args([
                "-t",
                "mangle",
                "-A",
                "OUTPUT",
                "-d",
                &peer,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue.to_string(),
                "--queue-bypass",
            ]))
            .expect("delay rule");
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netbed/nfq_delay.py");
        let mut child = self
            .command(host, "python3")
            .arg(script)
            .arg(queue.to_string())
            .arg(ms.to_string())
            .arg("0")
            .arg(max.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the delay helper");
        // It prints one line once bound to the queue (bounded wait).
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            let _ = std::io::BufRead::read_line(&mut r, &mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert!(ready.contains("queue"), "the delay helper did not start: {ready:?}");
        self.delays.lock().unwrap().push((h.ns, child));
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.try_heal().expect("heal the bed");
    }

    fn try_heal(&self) -> Result<(), String> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let healed = self.try_apply();
        for (ns, mut child) in self.delays.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = run(Command::new("ip").args(["netns", "exec", &ns, "iptables", "-t", "mangle", "-F", "OUTPUT"]));
        }
        healed
    }

    /// Writes the switch's fault table from the rules.
    fn apply(&self) {
        self.try_apply().expect("fault rules");
    }

    fn try_apply(&self) -> Result<(), String> {
        let port = |h: &String| format!("\"{}\"", self.host(h).port);
        let set = |hs: &[String]| format!("{{ {} }}", hs.iter().map(port).collect::<Vec<_>>().join(", "));
        let mut body = String::new();
        for r in self.rules.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match r {
                Rule::Drop(from, to) => {
                    body += &format!("iifname {} oifname {} counter drop\n", set(from), set(to));
                }
                Rule::Loss(from, to, pct) => {
                    body += &format!(
                        "iifname {} oifname {} numgen random mod 100 < {pct} counter drop\n",
                        set(from),
                        set(to)
                    );
                }
            }
        }
        let script = format!(
            "table bridge faults {{}}\ndelete table bridge faults\ntable bridge faults {{\nchain forward {{\ntype \
             filter hook forward priority 0; policy accept;\n{body}}}\n}}\n"
        );
        nft(Some(&self.switch()), &script)
    }

    /// Packets the fault rules dropped so far (from their counters).
    pub fn dropped(&self) -> u64 {
        let out =
            run(Command::new("ip").args(["netns", "exec", &self.switch(), "nft", "list", "table", "bridge", "faults"]))
                .unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "packets").filter_map(|w| w[1].parse::<u64>().ok()).sum()
    }

    /// Never panics (it runs in `drop`, also while a failed test unwinds).
    fn teardown(&self) {
        let _ = self.try_heal();
        remove(self.id);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.teardown();
        let _ = std::fs::remove_file(&self.lock);
    }
}

fn names(hs: &[&str]) -> Vec<String> {
    hs.iter().map(|h| h.to_string()).collect()
}

/// Removes everything of bed `id`: processes in its namespaces, the namespaces, the veth, the guard, the route.
fn remove(id: u8) {
    let p = format!("mnb{id}");
    let list = ip(&["netns", "list"]).unwrap_or_default();
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{p}-")))
        .map(str::to_owned)
        .collect();
    for ns in &ours {
        // A namespace goes only when its last process does: resume and kill whatever is left in it.
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    for ns in &ours {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ip(&["netns", "pids", ns]).unwrap_or_default().trim().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = ip(&["link", "del", &p]);
    let _ = run(Command::new("nft").args(["delete", "table", "inet", &p]));
    let _ = ip(&["route", "del", "unreachable", &format!("10.77.{id}.0/24"), "metric", "9999"]);
}

/// Removes the beds whose owner process is gone.
fn sweep() {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else { return };
    for e in dir.flatten() {
        let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u8>().ok()) else { continue };
        let owner = std::fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_none_or(|pid| !alive(pid)) {
            remove(id);
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What is left of bed `id` (namespaces, links, guard table, route): empty once it is removed.
pub fn leftovers(id_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let netns = ip(&["netns", "list"]).unwrap_or_default();
    out.extend(netns.lines().filter(|l| l.starts_with(&format!("{id_prefix}-"))).map(|l| format!("netns {l}")));
    let links = ip(&["-o", "link"]).unwrap_or_default();
    out.extend(
        links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.split('@').next() == Some(id_prefix))
            .map(|l| format!("link {l}")),
    );
    let tables = run(Command::new("nft").args(["list", "tables"])).unwrap_or_default();
    out.extend(tables.lines().filter(|l| l.ends_with(&format!(" {id_prefix}"))).map(|l| format!("nft {l}")));
    out
}

impl Bed {
    /// The names everything of this bed starts with (for [`leftovers`]).
    pub fn name(&self) -> String {
        self.prefix()
    }
}
