//! Criterion benchmarks of filesem's operations and of the raw-syscall floor they are
//! compared with: `cargo bench --bench semaphore` (times only; `cargo bench --bench ratios`
//! prints the ratios to the floor).
//!
//! Groups (each on tmpfs and on the normal disk, see `support/place.rs`):
//! - `floor/MEDIUM/DURABILITY`: one cycle (two locked read-modify-writes) of the floor in
//!   `support/floor.rs`;
//! - `cycle/CONFIG/MEDIUM/DURABILITY`: `try_acquire` + `release`, in each configuration of
//!   `Config` (`support/mod.rs`: `bare`, the protocol alone, and `default`);
//! - `refusal/MEDIUM`: `try_acquire` on a full semaphore (writes nothing);
//! - `scale/MEDIUM/N`: a cycle with N detached holders present (N = 0, 10, 100, 1000);
//!
//! refusal, scale and queries use the default configuration without fsync.
//! - `queries/MEDIUM/holders|count/N`: the lock-free queries with N holders present.
//!
//! Defaults keep the whole run short (1 s warm-up, 2 s measurement, 30 samples); criterion's
//! own options lengthen it, e.g. `cargo bench --bench semaphore -- --measurement-time 10`.

mod support;

use std::time::Duration;

use criterion::Criterion;

use support::floor::Floor;
use support::{Config, DURABILITIES, durability_name};

const SCALES: [usize; 4] = [0, 10, 100, 1000];

fn benches(c: &mut Criterion, scales: &[usize]) {
    for place in support::places() {
        eprintln!("place: {}", place.describe());
        let dir = place.path();
        let medium = place.medium.name();

        for durable in DURABILITIES {
            let d = durability_name(durable);
            let mut floor = Floor::create(&dir.join(format!("floor-{d}.json")), durable)
                .expect("create floor state");
            c.bench_function(&format!("floor/{medium}/{d}"), |b| {
                b.iter(|| floor.cycle().expect("floor cycle"))
            });
        }

        for config in Config::ALL {
            for durable in DURABILITIES {
                let d = durability_name(durable);
                let name = format!("cycle-{}-{d}", config.name());
                let sem = support::subject(dir, &name, config, durable, 0, 1);
                c.bench_function(&format!("cycle/{}/{medium}/{d}", config.name()), |b| {
                    b.iter(|| sem.cycle())
                });
            }
        }

        let full = support::subject(dir, "full", Config::Default, false, 1, 0);
        c.bench_function(&format!("refusal/{medium}"), |b| b.iter(|| full.refusal()));

        for &others in scales {
            let sem = support::subject(
                dir,
                &format!("scale-{others}"),
                Config::Default,
                false,
                others,
                1,
            );
            c.bench_function(&format!("scale/{medium}/{others}"), |b| {
                b.iter(|| sem.cycle())
            });
            if others == 10 || others == 1000 {
                c.bench_function(&format!("queries/{medium}/holders/{others}"), |b| {
                    b.iter(|| sem.sem.holders().expect("holders"))
                });
                c.bench_function(&format!("queries/{medium}/count/{others}"), |b| {
                    b.iter(|| sem.sem.count().expect("count"))
                });
            }
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, without their undocumented
    // public function.
    let mut criterion = config().configure_from_args();
    // Without `--bench` (`cargo test --benches`) criterion runs each benchmark once as a
    // test; the large semaphores would only make that slow.
    let benching = std::env::args().any(|a| a == "--bench");
    benches(
        &mut criterion,
        if benching { &SCALES } else { &SCALES[..2] },
    );
    criterion.final_summary();
}
