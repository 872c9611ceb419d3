//! `demo`: Messenger end to end on this machine, with nothing to set up.
//!
//! Starts a private Redis on a free port, the Twilio simulator, and two worker processes; creates a customer with
//! no numbers; sends one 1,000-recipient bulk text through the real `producer` CLI; waits for it; prints the number
//! pool (four numbers bought, 250 texts each) and the batch status. Everything is stopped and removed at the end, or
//! when the demo is interrupted (Ctrl-C, SIGTERM). Asked for more recipients than its pool can text in a day, it says
//! so before sending, and afterwards says what waits and until when.

use std::time::{Duration, Instant};

use clap::Parser;
use harness::fixtures::recipients;
use harness::procs::{Env, stdout_of};
use harness::redis_server::TestRedis;
use harness::sim::{self, SimConfig};

#[derive(Parser)]
#[command(about = "Runs Messenger end to end against a private Redis and the Twilio simulator")]
struct Args {
    /// Recipients in the bulk text.
    #[arg(long, default_value_t = 1_000)]
    recipients: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Simulated Twilio latency for a number purchase, ms.
    #[arg(long, default_value_t = 200)]
    purchase_latency_ms: u64,
}

/// The demo customer's numbers, and each number's texts a day (the default quota).
const DEMO_NUMBERS: usize = 10;
const PER_NUMBER_PER_DAY: usize = 250;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Interrupted, the demo still stops its workers and removes its Redis directory (the values below are dropped).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = demo(args) => r,
        _ = tokio::signal::ctrl_c() => { eprintln!("\n▶ interrupted: stopping the workers and removing the demo's Redis"); Ok(()) }
        _ = term.recv() => { eprintln!("▶ stopped: stopping the workers and removing the demo's Redis"); Ok(()) }
    }
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let redis = TestRedis::start();
    let (sim, addr) = sim::spawn(SimConfig {
        purchase_latency_ms: args.purchase_latency_ms,
        send_latency_ms: 5,
        ..SimConfig::default()
    })
    .await;
    let base = format!("http://{addr}");
    let env = Env::new(&redis.url(), &base);
    println!("▶ private Redis on {} · Twilio simulator on {base}", redis.url());
    println!("▶ quiet hours off for the demo (MESSENGER_QUIET_HOURS=off), so it sends at any hour of the night");

    let run = async |args: &[&str]| stdout_of(args, env.producer_async(args).await).map_err(anyhow::Error::msg);

    print!("▶ {}", run(&["customer", "add", "demo-properties", "--max-numbers", "10"]).await?);
    let mut workers: Vec<_> = (0..args.workers).map(|_| env.worker(&["--concurrency", "32"])).collect();
    println!("▶ started {} worker processes (32 concurrent sends each)", workers.len());

    let capacity = DEMO_NUMBERS * PER_NUMBER_PER_DAY;
    let timeout = if args.recipients > capacity {
        println!(
            "▶ note: {} recipients, but the demo's pool of {DEMO_NUMBERS} numbers texts at most {capacity} a day \
             ({PER_NUMBER_PER_DAY} each): the first {capacity} go now, the other {} wait until a number's 24-hour window \
             frees a slot. The demo waits 60 s, then shows what waits and until when.",
            args.recipients,
            args.recipients - capacity
        );
        "60"
    } else {
        "300"
    };

    let body = "Building 4: the water will be off Tuesday 9-11am for repairs. Reply STOP to opt out.";
    let receipt =
        env.bulk("demo-properties", body, &recipients(args.recipients, 0), &[]).await.map_err(anyhow::Error::msg)?;
    let batch = receipt["batch_id"].as_str().unwrap_or_default().to_owned();
    println!("▶ bulk text accepted: batch {batch}, {} recipients", receipt["accepted"]);

    let sending = Instant::now();
    let waited = env.producer_async(&["status", &batch, "--wait", "--timeout", timeout]).await;
    if waited.status.success() {
        println!("▶ all jobs terminal after {:.1}s\n", sending.elapsed().as_secs_f64());
    } else {
        // `status --wait` said why it gave up (what waits, and until when).
        print!("{}", String::from_utf8_lossy(&waited.stderr));
        println!(
            "▶ stopped waiting after {:.1}s: the rest would go out as the numbers' windows free up\n",
            sending.elapsed().as_secs_f64()
        );
    }

    println!("$ producer pool demo-properties");
    print!("{}", run(&["pool", "demo-properties"]).await?);
    println!("\n$ producer status {batch}");
    print!("{}", run(&["status", &batch]).await?);

    let state = sim.state(true);
    let per = harness::fixtures::per_recipient(&state);
    println!(
        "\n▶ the simulator saw {} messages to {} distinct recipients from {} numbers ({} purchases); done in {:.1}s",
        state.messages.len(),
        per.len(),
        harness::fixtures::owned_numbers(&state),
        state.purchase_requests,
        started.elapsed().as_secs_f64()
    );
    for w in &mut workers {
        w.signal(libc::SIGTERM);
    }
    for w in &mut workers {
        let _ = w.wait_timeout(Duration::from_secs(10));
    }
    Ok(())
}
