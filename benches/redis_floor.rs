//! The floor of the Redis store: `cargo bench --features redis --bench redis_floor`.
//!
//! One step of the Redis design is two round trips: a pipelined `GET KEY` + `TIME` (the
//! document and the server's clock), then `EVALSHA` of the compare-and-swap script
//! (`src/store/redis/lua/cas.lua`, which also publishes the change notice). This benchmark
//! issues exactly those, with the `redis` crate on one connection to a private `redis-server` on
//! loopback (started as the tests start it, `tests/common/redis_server.rs`), with a fixed
//! small document (two versions written in turn, so every compare-and-swap wins), and prints
//! steps per second. It is the floor that the store's acquire + release cycle is measured
//! against: the minimal round trips the design needs, issued with the same client on the same
//! connection.
//!
//! `FILESEM_BENCH_ROUNDS` rounds (default 7) of `FILESEM_BENCH_REDIS_MS` milliseconds each
//! (default 500); the median round is reported, with the slowest and fastest. Run without
//! `--bench` (as `cargo test --benches` does) it makes one short round, to check that it
//! works. Without `redis-server` installed it prints SKIPPED.

#[path = "support/redis_floor.rs"]
mod floor;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use redis::{Connection, Script};
use redis_server::RedisServer;

use floor::{cas_script, connect, document, server_version, step};

/// The key the benchmark writes (on its own private server).
const KEY: &str = "floor";

/// Steps per second over `length`.
fn round(con: &mut Connection, cas: &Script, docs: &[Vec<u8>; 2], length: Duration) -> f64 {
    let started = Instant::now();
    let mut steps = 0u64;
    while started.elapsed() < length {
        let lost = step(con, cas, KEY, &docs[(steps % 2) as usize]);
        assert_eq!(lost, 0, "the only writer lost a compare-and-swap");
        steps += 1;
    }
    steps as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    let (rounds, length) = if benching {
        (
            number("FILESEM_BENCH_ROUNDS", 7),
            Duration::from_millis(number("FILESEM_BENCH_REDIS_MS", 500)),
        )
    } else {
        println!("check mode (no --bench): one short round; the number means nothing");
        (1, Duration::from_millis(50))
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Connected as the engine connects: TCP_NODELAY on.
    let mut con = connect(&server.server_url());
    let cas = cas_script();
    let docs = [document(7), document(8)];
    // Load the script and warm up.
    round(&mut con, &cas, &docs, length / 5);
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| round(&mut con, &cas, &docs, length))
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let version = server_version(&mut con);
    println!(
        "redis floor (GET+TIME pipeline, EVALSHA compare-and-swap of a {}-byte document; \
         one connection, loopback, redis {version}):",
        docs[0].len()
    );
    println!(
        "  {median:.0} steps/s median ({:.1} µs per step), {rounds} rounds of {} ms, \
         min {:.0}, max {:.0}",
        1e6 / median,
        length.as_millis(),
        rates[0],
        rates[rates.len() - 1]
    );
}
