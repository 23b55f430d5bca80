//! Writes every table a topology (JSON file) gives into a directory, one `SIG.dat` each.
//!
//! `cargo run -p tessera-acpi --example dump_tables -- topology.json OUT_DIR`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: dump_tables TOPOLOGY.json OUT_DIR".into());
    };
    let topology: tessera_acpi::Topology = serde_json::from_slice(&std::fs::read(input)?)?;
    let tables = tessera_acpi::build(&topology, tessera_acpi::Placement::default())?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    for t in tables.iter() {
        std::fs::write(out.join(format!("{}.dat", t.signature)), &t.bytes)?;
        println!("{} {:#x} {} bytes", t.signature, t.address, t.bytes.len());
    }
    Ok(())
}
