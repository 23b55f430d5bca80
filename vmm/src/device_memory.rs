//! Device memory, the host side: the sizes of the BARs `device_memory` names, read from
//! each PCI function's sysfs `resource` file before anything is opened, so the layout
//! (and every refusal) is known without touching the device.

use std::path::Path;

use tessera_api::config::{ConfigError, VmConfig};
use tessera_arch::layout::DEVICE_MEMORY_ALIGN;

/// `IORESOURCE_MEM` in a sysfs `resource` line's flags.
const IORESOURCE_MEM: u64 = 0x200;

/// The size of each `device_memory` entry's BAR, in order, as the host's sysfs gives it:
/// present, a memory BAR, a whole number of 128 MiB sections. Errors name
/// `device_memory[i].bar` (or `.device` for a device that is not a PCI function).
pub fn bar_sizes(config: &VmConfig) -> Result<Vec<u64>, ConfigError> {
    let mut sizes = Vec::with_capacity(config.device_memory.len());
    for (i, m) in config.device_memory.iter().enumerate() {
        let bad = |key: &str, message: String| ConfigError {
            field: format!("device_memory[{i}].{key}"),
            message,
        };
        let Some(device) = config
            .devices
            .iter()
            .find(|d| d.id.as_deref() == Some(m.device.as_str()))
        else {
            return Err(bad("device", format!("no device has id `{}`", m.device)));
        };
        if device.path.as_os_str().is_empty() || device.is_managed() {
            return Err(bad(
                "device",
                format!(
                    "`{}` has no sysfs path of its own: device memory needs a PCI function \
                     given by path",
                    m.device
                ),
            ));
        }
        let size = bar_size(&device.path, m.bar).map_err(|e| bad("bar", e))?;
        if size % DEVICE_MEMORY_ALIGN != 0 {
            return Err(bad(
                "bar",
                format!(
                    "BAR {} of `{}` is {size:#x} bytes, not a multiple of 128 MiB (Linux's \
                     x86_64 memory section, the unit a NUMA node's RAM comes in)",
                    m.bar, m.device
                ),
            ));
        }
        sizes.push(size);
    }
    Ok(sizes)
}

/// The size of memory BAR `bar` of the PCI function at `sysfs`.
fn bar_size(sysfs: &Path, bar: u8) -> Result<u64, String> {
    let file = sysfs.join("resource");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "reading {}: {e} (device memory needs a PCI function)",
            file.display()
        )
    })?;
    let line = text
        .lines()
        .nth(usize::from(bar))
        .ok_or_else(|| format!("{} has no line for BAR {bar}", file.display()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: BAR {bar}: `{line}`: {e}", file.display()))?;
    let [start, end, flags] = fields[..] else {
        return Err(format!(
            "{}: BAR {bar}: `{line}` is not start, end and flags",
            file.display()
        ));
    };
    if start == 0 && end == 0 {
        return Err(format!(
            "the device has no BAR {bar} (an unused BAR, or the upper half of a 64-bit one)"
        ));
    }
    if flags & IORESOURCE_MEM == 0 {
        return Err(format!(
            "BAR {bar} is not a memory BAR (flags {flags:#x}): only memory can be node RAM"
        ));
    }
    end.checked_sub(start)
        .and_then(|s| s.checked_add(1))
        .ok_or_else(|| format!("BAR {bar}: `{line}` ends before it starts"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tessera_api::config::{DeviceConfig, DeviceMemoryConfig, NumaConfig};

    /// An ivshmem-plain's resource file: BAR0 256 B registers, BAR2 a 64-bit 128 MiB BAR,
    /// BAR3 its upper half; BAR4 an I/O BAR; BAR5 a 64 MiB memory BAR.
    const RESOURCE: &str = "\
0x00000000fea00000 0x00000000fea000ff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000800000000 0x0000000807ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000c000 0x000000000000c03f 0x0000000000040101
0x00000000f8000000 0x00000000fbffffff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

    fn config(dir: &Path, bar: u8) -> VmConfig {
        let mut device = DeviceConfig::new(dir);
        device.id = Some("ivs0".into());
        VmConfig {
            devices: vec![device],
            numa: vec![NumaConfig {
                guest_numa_id: 0,
                ..NumaConfig::default()
            }],
            device_memory: vec![DeviceMemoryConfig {
                device: "ivs0".into(),
                bar,
                node: 0,
                distance: None,
            }],
            ..VmConfig::default()
        }
    }

    #[test]
    fn the_bar_must_be_present_memory_and_whole_sections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resource"), RESOURCE).unwrap();
        assert_eq!(bar_sizes(&config(dir.path(), 2)).unwrap(), vec![128 << 20]);
        for (bar, words) in [
            (3, "upper half"),
            (1, "no BAR 1"),
            (4, "not a memory BAR"),
            (5, "not a multiple of 128 MiB"),
            (0, "not a multiple of 128 MiB"),
        ] {
            let e = bar_sizes(&config(dir.path(), bar)).unwrap_err();
            assert_eq!(e.field, "device_memory[0].bar", "{e}");
            assert!(e.message.contains(words), "BAR {bar}: {e}");
        }
        let e = bar_sizes(&config(&dir.path().join("gone"), 2)).unwrap_err();
        assert!(e.message.contains("needs a PCI function"), "{e}");
    }
}
