//! `device_memory`: a passed-through device's memory BAR given to the guest as the RAM of
//! a memory-only NUMA node (Tessera extension; the x86 form of QEMU spapr's NVLink2 GPU
//! RAM nodes), and the checks on it that need no host. The BAR's size and kind are the
//! host's to say (checked by the VMM before anything is opened).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, VmConfig};

/// The SLIT distance between a device-memory node and every other node when the entry
/// gives none: the same from every node (as QEMU's spapr placed NVLink2 GPU RAM), and
/// twice the default remote distance (20), so the kernel falls back to it after any
/// other node's RAM.
pub const DEFAULT_DEVICE_MEMORY_DISTANCE: u8 = 40;

/// One device memory BAR as a node's RAM: `{"device": "ivs0", "bar": 2, "node": 3}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMemoryConfig {
    /// The id of the device (in `devices`) whose BAR it is.
    pub device: String,
    /// The BAR, 0..=5: a memory BAR the host lets the VMM mmap whole.
    pub bar: u8,
    /// The guest NUMA node whose memory it becomes: declared in `numa`, with no vCPUs
    /// and no memory zones.
    pub node: u32,
    /// The SLIT distance from every other node to this one, both ways, unless `numa`
    /// gives a distance for a pair; default [`DEFAULT_DEVICE_MEMORY_DISTANCE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<u8>,
}

impl DeviceMemoryConfig {
    /// The distance this node is from every other.
    pub fn distance(&self) -> u8 {
        self.distance.unwrap_or(DEFAULT_DEVICE_MEMORY_DISTANCE)
    }
}

impl VmConfig {
    /// The `device_memory` entry giving node `node` its memory, with its index.
    pub fn device_memory_of_node(&self, node: u32) -> Option<(usize, &DeviceMemoryConfig)> {
        self.device_memory
            .iter()
            .enumerate()
            .find(|(_, m)| m.node == node)
    }

    /// The `device_memory` entry naming device `id`, with its index: the device then
    /// cannot leave a running VM (its BAR is guest RAM).
    pub fn backs_device_memory(&self, id: &str) -> Option<(usize, &DeviceMemoryConfig)> {
        self.device_memory
            .iter()
            .enumerate()
            .find(|(_, m)| m.device == id)
    }

    /// The `device_memory` checks that need no host: the device is configured (not a
    /// slot a hotplug may fill) and does not trap the BAR, the BAR index exists, the node
    /// is declared with neither vCPUs nor zones, one BAR per node and a BAR once, and the
    /// distance is one the SLIT can hold.
    pub(super) fn validate_device_memory(&self) -> Result<(), ConfigError> {
        let mut nodes: BTreeMap<u32, usize> = BTreeMap::new();
        let mut bars: BTreeMap<(&str, u8), usize> = BTreeMap::new();
        for (i, m) in self.device_memory.iter().enumerate() {
            let at = |key: &str| format!("device_memory[{i}].{key}");
            let Some(device) = self
                .devices
                .iter()
                .find(|d| d.id.as_deref() == Some(m.device.as_str()))
            else {
                return Err(ConfigError::new(
                    at("device"),
                    format!(
                        "no device has id `{}` (device memory comes from a device given at \
                         boot, with an id)",
                        m.device
                    ),
                ));
            };
            if m.bar > 5 {
                return Err(ConfigError::new(
                    at("bar"),
                    format!("{} is not a BAR (0..=5)", m.bar),
                ));
            }
            if device.x_exclude_mmap_bars.contains(&u64::from(m.bar)) {
                return Err(ConfigError::new(
                    at("bar"),
                    format!(
                        "BAR {} of `{}` is in its x_exclude_mmap_bars: device memory is \
                         mmapped into the guest, never trapped",
                        m.bar, m.device
                    ),
                ));
            }
            if let Some(first) = bars.insert((m.device.as_str(), m.bar), i) {
                return Err(ConfigError::new(
                    at("bar"),
                    format!(
                        "BAR {} of `{}` is already device_memory[{first}]",
                        m.bar, m.device
                    ),
                ));
            }
            let Some(node) = self.numa.iter().find(|n| n.guest_numa_id == m.node) else {
                return Err(ConfigError::new(
                    at("node"),
                    format!("node {} is not declared in `numa`", m.node),
                ));
            };
            if !node.cpus.is_empty() || !node.memory_zones.is_empty() {
                return Err(ConfigError::new(
                    at("node"),
                    format!(
                        "node {} has vCPUs or memory zones: device memory needs a node of \
                         its own, with neither",
                        m.node
                    ),
                ));
            }
            if let Some(first) = nodes.insert(m.node, i) {
                return Err(ConfigError::new(
                    at("node"),
                    format!(
                        "node {} already has device_memory[{first}]: one BAR per node",
                        m.node
                    ),
                ));
            }
            if let Some(d) = m.distance {
                if !(11..=254).contains(&d) {
                    return Err(ConfigError::new(
                        at("distance"),
                        format!("{d} is not a distance to another node (11..=254)"),
                    ));
                }
            }
        }
        Ok(())
    }
}
