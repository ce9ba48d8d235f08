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

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use redis::{Connection, Script, Value};
use redis_server::RedisServer;

/// The key the benchmark writes (on its own private server).
const KEY: &str = "floor";

/// A state document of the usual size: one holder with a token, a lease and an owner.
fn document(token: u64) -> Vec<u8> {
    format!(
        "{{\"version\":1,\"capacity\":4,\"next_token\":{next},\"holders\":[{{\"id\":\"bench-holder\",\
         \"acquired_at\":\"2026-01-01T00:00:00.123456Z\",\"token\":{token},\"slot\":0,\
         \"expires_at\":\"2026-01-01T00:00:30.123456Z\",\"owner\":{{\"host\":\"bench-host\",\
         \"pid\":4242}}}}],\"waiters\":[]}}",
        next = token + 1
    )
    .into_bytes()
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// One step's round trips: read the document and the clock, then compare-and-swap `next`.
fn step(con: &mut Connection, cas: &Script, channel: &str, next: &[u8]) {
    let (current, _time): (Option<Vec<u8>>, (i64, i64)) = redis::pipe()
        .cmd("GET")
        .arg(KEY)
        .cmd("TIME")
        .query(con)
        .expect("GET + TIME");
    let expected = current.as_deref().map(sha1_hex).unwrap_or_default();
    let won: i64 = cas
        .key(KEY)
        .arg(expected)
        .arg(next)
        .arg(channel)
        .arg(sha1_hex(next))
        .invoke(con)
        .expect("EVALSHA");
    assert_eq!(won, 1, "the only writer lost a compare-and-swap");
}

/// Steps per second over `length`.
fn round(con: &mut Connection, cas: &Script, docs: &[Vec<u8>; 2], length: Duration) -> f64 {
    let started = Instant::now();
    let mut steps = 0u64;
    while started.elapsed() < length {
        step(con, cas, "filesem:0:{floor}", &docs[(steps % 2) as usize]);
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
    let info = redis::IntoConnectionInfo::into_connection_info(server.server_url())
        .expect("connection info");
    let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).expect("client");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let cas = Script::new(include_str!("../src/store/redis/lua/cas.lua"));
    let docs = [document(7), document(8)];
    // Load the script and warm up.
    round(&mut con, &cas, &docs, length / 5);
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| round(&mut con, &cas, &docs, length))
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let version: Value = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    let version = match &version {
        Value::BulkString(b) => String::from_utf8_lossy(b)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            .unwrap_or_default(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => String::new(),
    };
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
