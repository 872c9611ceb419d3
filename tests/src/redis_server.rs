//! Private `redis-server` processes for tests, on free loopback ports, never anyone else's Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a test Redis.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Append-only file with `appendfsync always`: a restart loses nothing acknowledged.
    pub persistence: bool,
}

/// A `redis-server` child process; killed and its directory removed on drop.
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
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
        for _ in 0..5 {
            let port = free_port();
            let mut r = Self { child: None, port, dir: dir.clone(), options: options.clone() };
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
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
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
        ];
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
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// An async managed connection (same settings as the binaries use).
    pub async fn conn(&self) -> redis::aio::ConnectionManager {
        let settings = shared::config::RedisSettings {
            url: secrecy::SecretString::from(self.url()),
            response_timeout: Duration::from_secs(10),
        };
        shared::store::connect(&settings).await.expect("connect to test redis")
    }

    /// A blocking connection for quick checks.
    pub fn sync_conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
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

    /// A digest of the whole dataset (`DEBUG DIGEST`): equal digests mean nothing changed.
    pub fn digest(&self) -> String {
        redis::cmd("DEBUG").arg("DIGEST").query(&mut self.sync_conn()).expect("DEBUG DIGEST")
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
