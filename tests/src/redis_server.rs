//! Private `redis-server` processes for tests, on free loopback ports, never anyone else's Redis — plain, or
//! TLS-only with a password and an ACL user, using a CA and certificate generated for the test (with `openssl`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a test Redis.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Append-only file with `appendfsync always`: a restart loses nothing acknowledged.
    pub persistence: bool,
    /// TLS only (no plain port), with a certificate for 127.0.0.1 signed by a CA made for this server; clients
    /// authenticate as the ACL user `msgr` with [`PASSWORD`].
    pub tls: bool,
    /// Start as a replica of the (plain) server on this port.
    pub replica_of: Option<u16>,
}

/// What [`TestRedis::digest`] saw: each key's value digest (and whether it had a TTL).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Digest(std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() > 300 {
            return write!(f, "{} keys", self.0.len());
        }
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, &v[..v.len().min(12)]))).finish()
    }
}

/// Keys that live workers write on a timer whatever a test does — heartbeats, their running totals, and the locks
/// that elect one reconciler per pass and one auditor — left out of [`TestRedis::digest`]. (A reconciler's election
/// key appearing, or expiring, inside a dry run's "changed nothing" check failed it in CI.)
pub const LIVENESS_KEYS: [&str; 4] =
    [shared::keys::WORKERS, shared::keys::STATS_WORKERS, shared::keys::RECONCILE_LOCK, shared::keys::AUDIT_LOCK];

/// Whether a key is a liveness record: one of [`LIVENESS_KEYS`]; a customer's events delivery lease
/// (`{c:ID}:events:lease`), which a running `producer serve` takes and renews on its own timer (a server started
/// just before a "changed nothing" check took the lease inside it and failed the check in CI); or a minute of the
/// dashboard's statistics (`{msgr:stats}:m:<minute>`), into which each worker flushes its counts every two seconds,
/// so that sends finished before a check were counted inside it (CI again).
fn is_liveness(key: &str) -> bool {
    LIVENESS_KEYS.contains(&key)
        || (key.starts_with("{c:") && key.ends_with("}:events:lease"))
        || key.starts_with(shared::keys::STATS_MINUTE_PREFIX)
}

/// The password of the `msgr` ACL user (and `requirepass`) of a TLS test server.
pub const PASSWORD: &str = "s3cret-test-password";

/// A CA and a server certificate it signed (PEM files in a directory), plus a second CA that signed nothing.
#[derive(Clone, Debug)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    /// Generates the files in `dir` with `openssl` (a CA, a key and certificate for 127.0.0.1 and localhost).
    pub fn generate(dir: &std::path::Path) -> Self {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e} (install it: apt-get install openssl)"));
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=Messenger test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// A `redis-server` child process; killed and its directory removed on drop.
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
    certs: Option<TestCerts>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().unwrap().port()
}

fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

impl TestRedis {
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(options: RedisOptions) -> Self {
        let dir = std::env::temp_dir().join(format!("messenger-redis-{}-{}", std::process::id(), ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let certs = options.tls.then(|| TestCerts::generate(&dir));
        for _ in 0..5 {
            let port = free_port();
            let mut r = Self { child: None, port, dir: dir.clone(), options: options.clone(), certs: certs.clone() };
            if r.spawn().is_ok() {
                return r;
            }
            // Probably lost a race for the port: stop this one and keep the directory for the next attempt.
            r.kill();
            std::mem::forget(r);
        }
        panic!("could not start redis-server after 5 attempts (see {}/redis.log)", dir.display());
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut args: Vec<String> = match &self.certs {
            None => vec!["--port".into(), self.port.to_string()],
            Some(c) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                c.cert.display().to_string(),
                "--tls-key-file".into(),
                c.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                c.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
                "--requirepass".into(),
                PASSWORD.into(),
                "--user".into(),
                "msgr".into(),
                "on".into(),
                format!(">{PASSWORD}"),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
            ],
        };
        args.extend([
            "--bind".into(),
            "127.0.0.1".into(),
            "--protected-mode".into(),
            "no".into(),
            "--save".into(),
            "".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--logfile".into(),
            "redis.log".into(),
            // DEBUG DIGEST lets tests prove that a rejected request changed nothing.
            "--enable-debug-command".into(),
            "local".into(),
        ]);
        if let Some(primary) = self.options.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]);
            args.extend(["--repl-diskless-sync-delay".into(), "0".into()]);
        }
        if self.options.persistence {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        let mut cmd = Command::new(redis_server_bin());
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server: {e}. Install it (apt-get install redis-server) or set REDIS_SERVER_BIN")
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("redis-server exited: {status}"));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not answer PING".into())
    }

    fn ping(&self) -> bool {
        self.client()
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        shared::store::node_client(&self.settings(), &self.url())
    }

    /// The settings a Messenger process uses for this server (TLS with the test CA, when TLS is on).
    pub fn settings(&self) -> shared::config::RedisSettings {
        let mut s = shared::config::RedisSettings::node(&self.url(), Duration::from_secs(10));
        s.ca = self.certs.as_ref().map(|c| std::fs::read(&c.ca).expect("read the test CA"));
        s
    }

    /// The CA and certificates of a TLS server.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or for a TLS server `rediss://msgr:<password>@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match self.certs {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://msgr:{PASSWORD}@127.0.0.1:{}", self.port),
        }
    }

    /// An async managed connection (same settings as the binaries use).
    pub async fn conn(&self) -> shared::store::Conn {
        shared::store::connect(&self.settings()).await.expect("connect to test redis")
    }

    /// A blocking connection for quick checks.
    pub fn sync_conn(&self) -> redis::Connection {
        self.client().unwrap().get_connection().unwrap()
    }

    /// Kills the server (SIGKILL): like a crash, nothing is flushed beyond what `appendfsync` already wrote.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("could not restart redis: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A digest of the dataset: equal digests mean nothing changed. Every key counts (its name, `DEBUG
    /// DIGEST-VALUE`, and whether it has a TTL, as `DEBUG DIGEST` counts it) except the fleet's liveness records
    /// ([`is_liveness`]), which running workers rewrite on a timer whatever the test does: with them in, a
    /// heartbeat that happens to fall inside a "this request changed nothing" check would fail it. Unequal digests
    /// print the keys they hold, so a failed check shows what changed.
    pub fn digest(&self) -> Digest {
        let mut c = self.sync_conn();
        let mut keys: Vec<String> =
            redis::Commands::scan::<String>(&mut c).expect("SCAN").collect::<Result<_, _>>().expect("SCAN");
        keys.retain(|k| !is_liveness(k));
        let mut digest = Digest::default();
        for chunk in keys.chunks(1000) {
            let values: Vec<String> =
                redis::cmd("DEBUG").arg("DIGEST-VALUE").arg(chunk).query(&mut c).expect("DEBUG DIGEST-VALUE");
            let mut ttls = redis::pipe();
            for k in chunk {
                ttls.cmd("PTTL").arg(k);
            }
            let ttls: Vec<i64> = ttls.query(&mut c).expect("PTTL");
            for ((k, v), ttl) in chunk.iter().zip(values).zip(ttls) {
                let v = if ttl >= 0 { format!("{v} (ttl)") } else { v };
                digest.0.insert(k.clone(), v);
            }
        }
        digest
    }

    /// Waits until this replica is in sync with its primary.
    pub fn wait_in_sync(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut self.sync_conn()).unwrap_or_default();
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(Instant::now() < deadline, "replica on port {} did not sync", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `INFO` field as a number (e.g. `used_memory`).
    pub fn info_field(&self, section: &str, field: &str) -> Option<f64> {
        let info: String = redis::cmd("INFO").arg(section).query(&mut self.sync_conn()).ok()?;
        info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest sees every change to data (a value, a new key, a TTL) and none to the workers' liveness records.
    #[test]
    fn the_digest_sees_data_changes_but_not_heartbeats() {
        let redis = TestRedis::start();
        let mut c = redis.sync_conn();
        let empty = redis.digest();
        let _: () = redis::cmd("SET").arg("a").arg("1").query(&mut c).unwrap();
        let one = redis.digest();
        assert_ne!(one, empty);
        let _: () = redis::cmd("ZADD").arg(shared::keys::WORKERS).arg(7).arg("w1").query(&mut c).unwrap();
        let _: () = redis::cmd("HSET").arg(shared::keys::STATS_WORKERS).arg("w1").arg("7|0").query(&mut c).unwrap();
        let minute = shared::keys::stats_minute(29_945_055);
        let _: () = redis::cmd("HINCRBY").arg(&minute).arg("sent").arg(3).query(&mut c).unwrap();
        assert_eq!(redis.digest(), one, "a heartbeat or a worker's statistics flush changed the digest");
        let _: () = redis::cmd("SET").arg("a").arg("2").query(&mut c).unwrap();
        let two = redis.digest();
        assert_ne!(two, one, "a changed value");
        let _: () = redis::cmd("EXPIRE").arg("a").arg(100).query(&mut c).unwrap();
        assert_ne!(redis.digest(), two, "a new TTL");
        let _: () = redis::cmd("SET").arg("b").arg("2").query(&mut c).unwrap();
        let _: () = redis::cmd("DEL").arg("a").query(&mut c).unwrap();
        assert_ne!(redis.digest(), two, "the same value under another key");
    }
}
