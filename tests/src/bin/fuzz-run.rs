//! `fuzz-run`: the structured-random engine for the fuzz targets in `tessera_tests::fuzz`.
//!
//! ```text
//! fuzz-run list
//! fuzz-run TARGET [--cases N] [--seed S] [--timeout SECS]   # generate and run
//! fuzz-run TARGET --replay FILE...                          # run saved inputs (raw or hex)
//! fuzz-run TARGET --minimize FILE                           # shrink a finding, print hex
//! ```
//! A finding is printed with its input in hex and saved under `target/fuzz/findings/`;
//! the exit status is then 1 (a panic) or 3 (a hang).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tessera_tests::fuzz::{self, Finding};

fn save(finding: &Finding) {
    let dir = PathBuf::from("target/fuzz/findings");
    let path = dir.join(format!(
        "{}-{:x}-{}.bin",
        finding.target, finding.seed, finding.case
    ));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &finding.input)) {
        Ok(()) => eprintln!("saved to {}", path.display()),
        Err(e) => eprintln!("could not save the input to {}: {e}", path.display()),
    }
}

fn on_hang(finding: &Finding) {
    fuzz::report(finding);
    save(finding);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        bail!("usage: fuzz-run list | TARGET [--cases N] [--seed S] [--timeout SECS] | TARGET --replay FILE...");
    };
    if name == "list" {
        for t in fuzz::TARGETS {
            println!("{:<18} {}", t.name, t.surface);
        }
        return Ok(());
    }
    let target = fuzz::find(name).with_context(|| format!("no target {name}; try `list`"))?;
    let (mut cases, mut seed, mut timeout, mut replay) = (10_000u64, 1u64, 10u64, None);
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cases" => cases = value()?.parse().context("--cases")?,
            "--seed" => seed = value()?.parse().context("--seed")?,
            "--timeout" => timeout = value()?.parse().context("--timeout")?,
            "--minimize" => {
                let file = value()?;
                let input = std::fs::read(file).with_context(|| file.clone())?;
                let small = fuzz::minimize(target, &input);
                println!(
                    "{} -> {} bytes: {}",
                    input.len(),
                    small.len(),
                    fuzz::hex(&small)
                );
                return Ok(());
            }
            "--replay" => {
                replay = Some(rest.by_ref().cloned().collect::<Vec<_>>());
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if let Some(files) = replay {
        let mut inputs = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| f.clone())?;
            // A .hex file holds what `report` printed.
            let input = match f.ends_with(".hex") {
                true => fuzz::unhex(&String::from_utf8_lossy(&bytes))
                    .with_context(|| format!("{f}: not hex"))?,
                false => bytes,
            };
            inputs.push(input);
        }
        if let Err(finding) = fuzz::replay(target, &inputs) {
            fuzz::report(&finding);
            std::process::exit(1);
        }
        println!(
            "{}: {} inputs replayed, no finding",
            target.name,
            inputs.len()
        );
        return Ok(());
    }
    match fuzz::run(target, cases, seed, Duration::from_secs(timeout), on_hang) {
        Ok(summary) => {
            println!(
                "{}: {} cases, seed {seed}, {:.1} s, {:.0} cases/s, no finding",
                target.name,
                summary.cases,
                summary.elapsed.as_secs_f64(),
                summary.cases as f64 / summary.elapsed.as_secs_f64().max(1e-9)
            );
            Ok(())
        }
        Err(finding) => {
            fuzz::report(&finding);
            save(&finding);
            std::process::exit(1);
        }
    }
}
