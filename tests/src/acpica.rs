//! ACPICA as a judge of table bytes: `iasl` disassembles and recompiles each table,
//! `acpiexec` loads the DSDT with the other tables and evaluates its objects.
//!
//! A missing tool is an error, never a skip: `scripts/setup.sh` installs `acpica-tools`.

use std::path::Path;
use std::process::Command;

/// What went wrong when ACPICA judged a table.
#[derive(Debug, thiserror::Error)]
pub enum AcpicaError {
    /// The tool could not be started.
    #[error("cannot run `{tool}` ({source}); install Debian's acpica-tools (scripts/setup.sh)")]
    Missing {
        /// The program.
        tool: String,
        /// Why it failed to start.
        source: std::io::Error,
    },
    /// Temporary files could not be written or read.
    #[error("scratch files: {0}")]
    Io(#[from] std::io::Error),
    /// The tool ran and reported a problem.
    #[error("{table}: {what}\n{output}")]
    Rejected {
        /// The table signature.
        table: String,
        /// What ACPICA objected to.
        what: String,
        /// The tool's output.
        output: String,
    },
}

/// Markers that iasl writes into a disassembly when a field or subtable is wrong.
const DISASSEMBLY_COMPLAINTS: &[&str] = &[
    "Incorrect checksum",
    "****",
    "Invalid",
    "Unknown",
    "Reserved value",
    "terminates",
];

/// Disassembles one table with `iasl -d`, recompiles the result with `iasl`, and for
/// data tables checks that the recompiled bytes equal ours (the checksum and the
/// compiler id/revision, which iasl rewrites, aside). Returns the disassembly.
pub fn judge_table(signature: &str, bytes: &[u8]) -> Result<String, AcpicaError> {
    let dir = tempfile::tempdir()?;
    let dat = dir.path().join(format!("{signature}.dat"));
    std::fs::write(&dat, bytes)?;
    let reject = |what: String, output: String| AcpicaError::Rejected {
        table: signature.to_string(),
        what,
        output,
    };

    let out = run(dir.path(), "iasl", &["-d", &file_name(&dat)])?;
    if !out.0 {
        return Err(reject("iasl -d failed".into(), out.1));
    }
    let dsl_path = dir.path().join(format!("{signature}.dsl"));
    let dsl = std::fs::read_to_string(&dsl_path)?;
    if let Some(word) = DISASSEMBLY_COMPLAINTS.iter().find(|w| dsl.contains(*w)) {
        return Err(reject(format!("disassembly says `{word}`"), dsl));
    }

    let out = run(dir.path(), "iasl", &[&file_name(&dsl_path)])?;
    if !out.0 || !out.1.contains("0 Errors, 0 Warnings") {
        return Err(reject(
            "recompiling the disassembly is not clean".into(),
            out.1,
        ));
    }
    if !matches!(signature, "DSDT" | "SSDT") {
        let aml = std::fs::read(dir.path().join(format!("{signature}.aml")))?;
        if let Some(offset) = first_difference(&aml, bytes) {
            return Err(reject(
                format!("iasl re-encodes the decoded table differently at byte {offset:#x}"),
                dsl,
            ));
        }
    }
    Ok(dsl)
}

/// Loads `dsdt` together with `other_tables` (signature, bytes) in `acpiexec` and runs
/// the batch `commands` (e.g. `evaluate \_SB_.PC00._CRS`, `sleep 5`). Fails on any
/// ACPICA error or failed evaluation; returns the output.
pub fn acpiexec(
    dsdt: &[u8],
    other_tables: &[(&str, &[u8])],
    commands: &[&str],
) -> Result<String, AcpicaError> {
    acpiexec_with(dsdt, other_tables, &[], commands)
}

/// [`acpiexec`] with extra options, e.g. `-vr`, which logs every access to an
/// OperationRegion (`AcpiExec: SystemMemory Write: Val 00000001 Addr FED0200C ...`).
/// acpiexec backs SystemMemory regions with a buffer, so values written stay readable.
pub fn acpiexec_with(
    dsdt: &[u8],
    other_tables: &[(&str, &[u8])],
    options: &[&str],
    commands: &[&str],
) -> Result<String, AcpicaError> {
    let dir = tempfile::tempdir()?;
    let mut files = vec![];
    std::fs::write(dir.path().join("DSDT.dat"), dsdt)?;
    files.push("DSDT.dat".to_string());
    for (sig, bytes) in other_tables {
        let name = format!("{sig}.dat");
        std::fs::write(dir.path().join(&name), bytes)?;
        files.push(name);
    }
    let batch = commands.join("; ");
    let mut args: Vec<&str> = options.to_vec();
    args.extend(["-b", &batch]);
    args.extend(files.iter().map(String::as_str));
    let (ok, output) = run(dir.path(), "acpiexec", &args)?;
    let complaint = ["ACPI Error", "ACPI Exception", "failed with status", "AE_"]
        .iter()
        .find(|w| output.contains(*w));
    match (ok, complaint) {
        (true, None) => Ok(output),
        (_, Some(word)) => Err(AcpicaError::Rejected {
            table: "DSDT".into(),
            what: format!("acpiexec says `{word}`"),
            output,
        }),
        (false, None) => Err(AcpicaError::Rejected {
            table: "DSDT".into(),
            what: "acpiexec exited with failure".into(),
            output,
        }),
    }
}

/// Compiles ASL source with `iasl` (e.g. a test's SSDT that plays the VMM's part by
/// writing registers) and returns the AML table.
pub fn compile_asl(source: &str) -> Result<Vec<u8>, AcpicaError> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("test.asl"), source)?;
    let (ok, output) = run(dir.path(), "iasl", &["test.asl"])?;
    if !ok || !output.contains("0 Errors") {
        return Err(AcpicaError::Rejected {
            table: "test.asl".into(),
            what: "iasl cannot compile it".into(),
            output,
        });
    }
    Ok(std::fs::read(dir.path().join("test.aml"))?)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Header bytes iasl rewrites on compile: checksum (9) and compiler id/revision (28..36).
fn first_difference(ours_recompiled: &[u8], ours: &[u8]) -> Option<usize> {
    if ours_recompiled.len() != ours.len() {
        return Some(ours_recompiled.len().min(ours.len()));
    }
    ours_recompiled
        .iter()
        .zip(ours)
        .enumerate()
        .find(|(i, (a, b))| a != b && *i != 9 && !(28..36).contains(i))
        .map(|(i, _)| i)
}

/// Runs a tool in `dir`; returns whether it exited 0 and its stdout+stderr.
fn run(dir: &Path, tool: &str, args: &[&str]) -> Result<(bool, String), AcpicaError> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|source| AcpicaError::Missing {
            tool: tool.to_string(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}
