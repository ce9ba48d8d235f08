//! The floor of the Redis store, shared by `benches/redis_floor.rs` and `benches/redis.rs`:
//! the minimal round trips one step of the design needs, issued with the `redis` crate on one
//! connection, as the engine issues them. A step is a pipelined `GET KEY` + `TIME` (the
//! document and the server's clock), then `EVALSHA` of the compare-and-swap script
//! (`src/store/redis/lua/cas.lua`, which also publishes the change notice); a lost
//! compare-and-swap (another writer changed the key) reads again.

#![allow(dead_code)] // Each bench uses a different part.

use std::time::Duration;

use redis::{Connection, Script, Value};

/// A state document of the usual size: one holder with a token, a lease and an owner.
/// `token` makes it unique, so that every write changes the key.
pub fn document(token: u64) -> Vec<u8> {
    format!(
        "{{\"version\":1,\"capacity\":4,\"next_token\":{next},\"holders\":[{{\"id\":\"bench-holder\",\
         \"acquired_at\":\"2026-01-01T00:00:00.123456Z\",\"token\":{token},\"slot\":0,\
         \"expires_at\":\"2026-01-01T00:00:30.123456Z\",\"owner\":{{\"host\":\"bench-host\",\
         \"pid\":4242}}}}],\"waiters\":[]}}",
        next = token + 1
    )
    .into_bytes()
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// The compare-and-swap script the store uses.
pub fn cas_script() -> Script {
    Script::new(include_str!("../../src/store/redis/lua/cas.lua"))
}

/// A connection as the engine opens one (TCP_NODELAY on), to `url`
/// (`redis://127.0.0.1:PORT`).
pub fn connect(url: &str) -> Connection {
    let info = redis::IntoConnectionInfo::into_connection_info(url).expect("connection info");
    let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).expect("client");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    con
}

/// One step on `key`: read the document and the clock, then compare-and-swap `next`; a lost
/// race reads again. Returns the number of lost races.
pub fn step(con: &mut Connection, cas: &Script, key: &str, next: &[u8]) -> u64 {
    let channel = format!("filesem:0:{{{key}}}");
    let mut lost = 0;
    loop {
        let (current, _time): (Option<Vec<u8>>, (i64, i64)) = redis::pipe()
            .cmd("GET")
            .arg(key)
            .cmd("TIME")
            .query(con)
            .expect("GET + TIME");
        let expected = current.as_deref().map(sha1_hex).unwrap_or_default();
        let won: i64 = cas
            .key(key)
            .arg(expected)
            .arg(next)
            .arg(&channel)
            .arg(sha1_hex(next))
            .invoke(con)
            .expect("EVALSHA");
        if won == 1 {
            return lost;
        }
        lost += 1;
    }
}

/// The server's version, for the report.
pub fn server_version(con: &mut Connection) -> String {
    let info: Value = redis::cmd("INFO").arg("server").query(con).expect("INFO");
    match &info {
        Value::BulkString(b) => String::from_utf8_lossy(b)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            .unwrap_or_default(),
        Value::VerbatimString { text, .. } => text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            .unwrap_or_default(),
        _ => String::new(),
    }
}
