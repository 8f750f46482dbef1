//! Times checking a spec with N keys in `[env]` against the same N keys in
//! `[environments.big.env]`; the two should be close (the override merge is
//! linear). Not a test: wall time on a shared machine is only indicative.
//!
//!     cargo run --release -p gantry-spec --example env_scale [KEYS]

use std::time::{Duration, Instant};

fn spec(keys: usize, in_environment: bool) -> String {
    let mut s = String::from("[app]\nname = \"big\"\n\n[run]\ncommand = \"./big\"\n\n");
    s.push_str(if in_environment {
        "[env]\nBASE = \"b\"\n\n[environments.big.env]\n"
    } else {
        "[env]\n"
    });
    for i in 0..keys {
        s.push_str(&format!("K{i:05} = \"v\"\n"));
    }
    s
}

fn best_of(runs: usize, text: &str) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            if let Err(d) = gantry_spec::parse_str("big.toml", text) {
                eprintln!("{d}");
                std::process::exit(1);
            }
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let keys = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 16);
    let base = best_of(5, &spec(keys, false));
    let over = best_of(5, &spec(keys, true));
    println!(
        "{keys} keys: [env] {base:?}, [environments.big.env] {over:?}, ratio {:.2}",
        over.as_secs_f64() / base.as_secs_f64().max(f64::EPSILON)
    );
}
