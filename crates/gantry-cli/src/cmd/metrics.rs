//! `gantry metrics status`

use std::process::ExitCode;

use gantry_api::MetricsStatus;

use crate::ctx::{Ctx, block_on};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Show the embedded metrics store: series, samples, bytes per sample,
    /// head memory, disk, and each scrape target's last scrape.
    ///
    /// Example: gantry metrics status
    Status,
}

pub(crate) fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match command {
        Command::Status => {
            let s: MetricsStatus = block_on(client.get("/api/v1/metrics/status"))?;
            if ctx.json {
                output::json(&s)?;
            } else {
                print_status(&s);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &MetricsStatus) {
    println!("series:        {}", s.series);
    println!("samples:       {}", s.samples);
    println!(
        "bytes/sample:  {}",
        s.bytes_per_sample
            .map_or_else(|| "-".to_string(), |b| format!("{b:.2}"))
    );
    println!("head memory:   {}", bytes(s.head_bytes));
    println!(
        "disk:          {} in {} block(s)",
        bytes(s.disk_bytes),
        s.blocks
    );
    if let Some(t) = s.oldest {
        println!("oldest:        {}", output::time(t));
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .targets
        .iter()
        .map(|t| {
            vec![
                t.job.clone(),
                t.instance.clone(),
                if t.up { "up" } else { "down" }.to_string(),
                t.last_scrape.map_or_else(|| "never".into(), output::time),
                t.last_duration_seconds
                    .map_or_else(|| "-".into(), |d| format!("{:.0}ms", d * 1000.0)),
                t.samples_scraped.to_string(),
                t.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "job",
            "instance",
            "state",
            "last scrape",
            "took",
            "samples",
            "error",
        ],
        &rows,
    );
}

/// `1.5 MiB` for a byte count.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(bytes(u64::MAX), "17179869184.0 GiB");
    }
}
