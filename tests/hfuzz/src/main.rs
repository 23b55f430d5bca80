//! One honggfuzz binary for every target in `tessera_tests::fuzz`: `FUZZ_TARGET` names
//! the target (`scripts/fuzz.sh` sets it), the same `fn(&[u8])` the structured runner
//! drives.

fn main() {
    let name = std::env::var("FUZZ_TARGET").unwrap_or_default();
    let Some(target) = tessera_tests::fuzz::find(&name) else {
        eprintln!("FUZZ_TARGET={name:?} names no target; one of:");
        for t in tessera_tests::fuzz::TARGETS {
            eprintln!("  {}", t.name);
        }
        std::process::exit(2);
    };
    loop {
        honggfuzz::fuzz!(|data: &[u8]| {
            (target.run)(data);
        });
    }
}
