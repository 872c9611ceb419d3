//! Running Messenger's binaries as real child processes.
//!
//! Tests use real processes for every concurrency claim (several workers racing on one Redis), and signal them
//! (SIGKILL, SIGSTOP, SIGTERM) for the fault tests. Binaries are found next to the running executable
//! (`target/<profile>/`); build them first with `cargo build --workspace --bins` (the test script does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built with the same profile as the current executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (scripts/test does this)",
        path.display()
    );
    path
}

/// Environment shared by every Messenger process of one test: where Redis and Twilio are, the quota model.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn new(redis_url: &str, twilio_base: &str) -> Self {
        let mut e = Self::default();
        e.vars.insert("REDIS_URL".into(), redis_url.into());
        e.vars.insert("TWILIO_API_BASE".into(), twilio_base.into());
        // The simulator serves the Messaging API (Messaging Services) on the same address.
        e.vars.insert("TWILIO_MESSAGING_API_BASE".into(), twilio_base.into());
        // ... and the Lookup API (recipients' line types).
        e.vars.insert("TWILIO_LOOKUPS_API_BASE".into(), twilio_base.into());
        e.vars.insert("TWILIO_ACCOUNT_SID".into(), crate::sim::DEFAULT_ACCOUNT_SID.into());
        e.vars.insert("TWILIO_AUTH_TOKEN".into(), crate::sim::DEFAULT_AUTH_TOKEN.into());
        e.vars.insert("MESSENGER_LOG_FORMAT".into(), "text".into());
        // Events secrets are stored only sealed: every process of a test shares one key.
        e.vars.insert("MESSENGER_SECRETS_KEY".into(), crate::SECRETS_KEY.into());
        // Quiet hours are on by default and would hold texts at night in the recipients' zones: tests send in real
        // time at any hour, so they say explicitly that none apply; the tests of quiet hours set their own.
        e.vars.insert("MESSENGER_QUIET_HOURS".into(), "off".into());
        e.vars.insert("RUST_LOG".into(), std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()));
        e
    }

    pub fn set(mut self, k: &str, v: impl ToString) -> Self {
        self.vars.insert(k.into(), v.to_string());
        self
    }

    /// This environment without `k`.
    pub fn without(mut self, k: &str) -> Self {
        self.vars.remove(k);
        self
    }

    /// `cmd` with this environment applied.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(&self.vars)
    }

    /// Runs `producer <args>` to completion.
    pub fn producer(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("producer"));
        self.apply(&mut cmd);
        cmd.args(args).stdin(Stdio::null()).output().expect("run producer")
    }

    /// Runs `producer <args>`, panicking with its output unless it succeeds; returns stdout.
    pub fn producer_ok(&self, args: &[&str]) -> String {
        stdout_of(args, self.producer(args)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Env::producer`] on a blocking thread, so the caller's async runtime keeps serving (the simulator may
    /// live on it).
    pub async fn producer_async(&self, args: &[&str]) -> Output {
        let env = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || env.producer(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("producer thread")
    }

    /// `producer bulk --customer C --body B --recipients <file> --json <extra>` with the list written to a
    /// temporary file; returns the receipt (`batch_id`, `accepted`, `duplicates`).
    pub async fn bulk(
        &self,
        customer: &str,
        body: &str,
        recipients: &[String],
        extra: &[&str],
    ) -> Result<serde_json::Value, String> {
        let file = crate::fixtures::write_recipients(recipients);
        let out = self.bulk_file(customer, body, &file, extra).await;
        let _ = std::fs::remove_file(file);
        out
    }

    /// `producer bulk --customer C --body B --recipients <file> --json <extra>`; returns the receipt.
    pub async fn bulk_file(
        &self,
        customer: &str,
        body: &str,
        file: &std::path::Path,
        extra: &[&str],
    ) -> Result<serde_json::Value, String> {
        let path = file.display().to_string();
        let mut args = vec!["bulk", "--customer", customer, "--body", body, "--recipients", path.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = stdout_of(&args, self.producer_async(&args).await);
        serde_json::from_str(&out?).map_err(|e| format!("producer bulk --json printed no receipt: {e}"))
    }

    /// Starts `worker <args>` in the background.
    pub fn worker(&self, args: &[&str]) -> Proc {
        self.spawn_worker(Command::new(bin("worker")), args)
    }

    /// Starts a worker whose clock is shifted by `offset` (libfaketime syntax, e.g. `-1d`): Messenger must not care,
    /// since every quota decision uses Redis's clock.
    ///
    /// libfaketime is preloaded into the worker itself rather than run through the `faketime` wrapper: the wrapper
    /// forks and waits, so killing it (as [`Proc`] does on drop) left the worker running as an orphan.
    pub fn worker_with_clock_offset(&self, offset: &str, args: &[&str]) -> Proc {
        let lib = libfaketime().expect("libfaketime is not installed: apt-get install faketime");
        let mut cmd = Command::new(bin("worker"));
        cmd.env("LD_PRELOAD", lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        self.spawn_worker(cmd, args)
    }

    fn spawn_worker(&self, cmd: Command, args: &[&str]) -> Proc {
        self.spawn(cmd, "worker", args)
    }

    /// Starts `producer <args>` in the background (a server, or a one-shot command to race with something).
    pub fn spawn_producer(&self, args: &[&str]) -> Proc {
        self.spawn(Command::new(bin("producer")), "producer", args)
    }

    /// Starts `cmd <args>` (a Messenger binary, possibly behind a wrapper such as `ip netns exec`) in the background
    /// with this environment; `what` names its log.
    pub fn spawn(&self, mut cmd: Command, what: &str, args: &[&str]) -> Proc {
        self.apply(&mut cmd);
        let log = std::env::temp_dir().join(format!("messenger-{what}-{}.log", ulid::Ulid::new()));
        let file = std::fs::File::create(&log).expect("process log");
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
        Proc { child: Some(child), log: Some(log) }
    }
}

/// Debian's libfaketime (package `faketime`): `/usr/lib/<multiarch>/faketime/libfaketime.so.1`.
fn libfaketime() -> Option<PathBuf> {
    let name = "faketime/libfaketime.so.1";
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib").map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/lib"), PathBuf::from("/usr/local/lib")]);
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A producer run's stdout if it succeeded; otherwise what failed, with its output.
pub fn stdout_of(args: &[&str], out: Output) -> Result<String, String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(format!(
        "producer {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A child process, killed on drop. Its stderr goes to a log file that is printed if a test asks.
pub struct Proc {
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (None if still running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // Resume a stopped process so the kill lands.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill9();
        if let Some(p) = self.log.take() {
            if std::thread::panicking() || std::env::var("TEST_KEEP_LOGS").is_ok() {
                eprintln!("worker log kept at {}", p.display());
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
