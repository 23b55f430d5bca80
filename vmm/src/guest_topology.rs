//! From a VM configuration to the guest's topology: RAM ranges per zone, PCI segments
//! with their windows, each device's and GI-ready slot's guest BDF (placed by the device
//! manager's `placement`), and the NUMA description (nodes, GI links, distances, HMAT values)
//! the ACPI tables are built from.
//!
//! Deterministic: the same configuration always gives the same BDFs and so the same
//! ACPI bytes. Touches no host resource, but for reading the sizes of `device_memory`'s
//! BARs from sysfs ([`guest_topology_sized`] takes them given).

use tessera_acpi::{
    Bdf, Cpu, GenericInitiatorLink, HmatEntry, IntxPin, IntxRoute, MemoryRange, NumaNode,
    PciDevice, PciSegment, Topology, Window,
};
use tessera_api::config::{
    ConfigError, HmatCacheAssociativity, HmatCacheConfig, HmatCachePolicy, HmatDataType,
    HmatLbConfig, VmConfig, HOST_BRIDGE_ID,
};
use tessera_arch::layout::{
    lay_out_with_device_memory, GuestLayout, LayoutError, Range, RSDP_START,
};

use crate::device_manager::placement::{place_devices, PciSlots, Placement};
pub use crate::device_manager::placement::{PlacedDevice, PlacedSlot};

/// First GSI used for PCI INTx; 0..15 are the ISA interrupts.
const INTX_GSI_BASE: u32 = 16;
/// INTx lines shared round-robin by the slots (as on a PC: the pins of 32 slots swizzle
/// onto 8 I/O APIC inputs).
const INTX_GSI_COUNT: u32 = 8;
/// COM1's GSI.
pub const SERIAL_GSI: u32 = 4;
/// The GED's GSI.
pub const GED_GSI: u32 = 9;
/// The I/O ports segment 0 decodes for BARs (0xcf8/0xcfc and the legacy devices sit
/// below). Only segment 0 decodes port I/O.
pub const PCI_IO_WINDOW: Range = Range {
    start: 0x1000,
    end: 0x1_0000,
};

/// The guest as the configuration describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestTopology {
    /// Where RAM and windows are.
    pub layout: GuestLayout,
    /// Each VFIO device's guest address.
    pub devices: Vec<PlacedDevice>,
    /// Each GI-ready slot's guest address.
    pub pci_slots: Vec<PlacedSlot>,
    /// Each `device_memory` entry where it landed, in configuration order.
    pub device_memory: Vec<PlacedDeviceMemory>,
    /// The slot tables those addresses came from, which the device manager keeps.
    pub slots: PciSlots,
    /// What the ACPI tables are built from.
    pub acpi: Topology,
    /// Where they go: the RSDP in the BIOS area, the tables in the layout's ACPI area.
    pub acpi_placement: tessera_acpi::Placement,
    /// The guest's physical address width (CPUID 0x8000_0008): the host's, or
    /// `cpus.max_phys_bits` if that is smaller. The memory map fits it.
    pub phys_bits: u8,
}

impl GuestTopology {
    /// The guest's ACPI tables, at their guest addresses.
    pub fn acpi_tables(&self) -> Result<tessera_acpi::AcpiTables, tessera_acpi::Error> {
        tessera_acpi::build(&self.acpi, self.acpi_placement)
    }
}

/// A device's memory BAR as a node's RAM, where the layout put it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedDeviceMemory {
    /// The device's id.
    pub device: String,
    /// The BAR.
    pub bar: usize,
    /// The node whose RAM it is.
    pub node: u32,
    /// Its guest physical range.
    pub range: Range,
}

/// Why a configuration has no valid topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The configuration itself is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The memory map cannot be made.
    #[error("memory: {0}")]
    Layout(#[from] LayoutError),
    /// The ACPI topology is refused.
    #[error("{0}")]
    Acpi(#[from] tessera_acpi::Error),
}

impl TopologyError {
    /// The configuration field at fault, as a JSON path.
    pub fn field(&self) -> String {
        match self {
            TopologyError::Config(e) => e.field.clone(),
            TopologyError::Layout(_) => "memory".into(),
            TopologyError::Acpi(e) => e.field(),
        }
    }
}

/// Builds the guest's topology on a host with `host_phys_bits` physical address bits;
/// the guest gets as many, or `cpus.max_phys_bits` if that is fewer (as in CH). The
/// sizes of `device_memory`'s BARs are read from the host's sysfs (only when there are
/// some), after the configuration's own checks.
pub fn guest_topology(
    config: &VmConfig,
    host_phys_bits: u8,
) -> Result<GuestTopology, TopologyError> {
    config.validate()?;
    let sizes = crate::device_memory::bar_sizes(config)?;
    guest_topology_sized(config, host_phys_bits, &sizes)
}

/// [`guest_topology`] with the BAR size of each `device_memory` entry given, in order
/// (tests give them; no host is read).
pub fn guest_topology_sized(
    config: &VmConfig,
    host_phys_bits: u8,
    device_memory_sizes: &[u64],
) -> Result<GuestTopology, TopologyError> {
    config.validate()?;
    if device_memory_sizes.len() != config.device_memory.len() {
        return Err(ConfigError {
            field: "device_memory".into(),
            message: format!(
                "{} entries but {} BAR sizes",
                config.device_memory.len(),
                device_memory_sizes.len()
            ),
        }
        .into());
    }
    if config.cpus.max_vcpus != config.cpus.boot_vcpus {
        return Err(ConfigError {
            field: "cpus.max_vcpus".into(),
            message: "vCPU hotplug is not supported yet: max_vcpus must equal boot_vcpus".into(),
        }
        .into());
    }

    // Zones in configuration order; without zones, one zone of memory.size.
    let zone_sizes: Vec<u64> = if config.memory.zones.is_empty() {
        vec![config.memory.size]
    } else {
        config.memory.zones.iter().map(|z| z.size).collect()
    };
    let segments = config.platform.num_pci_segments;
    let phys_bits = host_phys_bits.min(config.cpus.max_phys_bits);
    let layout = lay_out_with_device_memory(&zone_sizes, device_memory_sizes, segments, phys_bits)
        .map_err(|e| match e {
            LayoutError::UnalignedDeviceMemory { index, .. } => {
                TopologyError::Config(ConfigError {
                    field: format!("device_memory[{index}].bar"),
                    message: e.to_string(),
                })
            }
            // The configuration's limit is what is too small, so name it.
            LayoutError::AddressSpace { .. } if phys_bits < host_phys_bits => {
                TopologyError::Config(ConfigError {
                    field: "cpus.max_phys_bits".into(),
                    message: format!(
                        "{e}: the guest's RAM and PCI windows need a wider address space \
                     (this host has {host_phys_bits} bits)"
                    ),
                })
            }
            e => TopologyError::Layout(e),
        })?;

    let Placement {
        slots,
        devices,
        pci_slots,
    } = place_devices(config)?;

    let node_of_zone = |zone: usize| -> Option<u32> {
        let id = config.memory.zones.get(zone)?.id.as_str();
        config
            .numa
            .iter()
            .find(|n| n.memory_zones.iter().any(|z| z == id))
            .map(|n| n.guest_numa_id)
    };
    let mut memory = Vec::new();
    for (zone, ranges) in layout.zones.iter().enumerate() {
        for r in ranges {
            memory.push(MemoryRange {
                base: r.start,
                size: r.len(),
                node: node_of_zone(zone),
                enabled: true,
                hotpluggable: false,
                non_volatile: false,
            });
        }
    }

    // Device memory: its node's RAM, hot-pluggable as GPU memory is on hosts that have it
    // (the guest's kernel may keep it out of the kernel's own allocations: movable_node).
    for (m, r) in config.device_memory.iter().zip(&layout.device_memory) {
        memory.push(MemoryRange {
            base: r.start,
            size: r.len(),
            node: Some(m.node),
            enabled: true,
            hotpluggable: true,
            non_volatile: false,
        });
    }

    let node_of_cpu = |cpu: u32| {
        config
            .numa
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.guest_numa_id)
    };
    let cpus = (0..config.cpus.boot_vcpus)
        .map(|i| Cpu {
            apic_id: i,
            node: node_of_cpu(i),
        })
        .collect();

    let pci_segments = layout
        .segments
        .iter()
        .enumerate()
        .map(|(id, w)| {
            let id = id as u16;
            PciSegment {
                id,
                ecam_base: w.ecam.start,
                start_bus: 0,
                end_bus: 0,
                mmio32: window(w.mmio32),
                mmio64: Some(window(w.mmio64)),
                // Only segment 0 decodes port I/O (0xcf8/0xcfc and BAR ports above 4 KiB).
                io: (id == 0).then_some(window(PCI_IO_WINDOW)),
                node: config
                    .numa
                    .iter()
                    .find(|n| n.pci_segments.contains(&id))
                    .map(|n| n.guest_numa_id),
                intx_routes: intx_routes(),
                hotplug_slots: slots.hotplug_slots(id),
            }
        })
        .collect();

    let mut generic_initiators = Vec::new();
    for (i, gi) in config.generic_initiators.iter().enumerate() {
        for node in gi.node_list(&format!("generic_initiators[{i}]"))? {
            generic_initiators.push(GenericInitiatorLink {
                device: gi.device.clone(),
                node,
            });
        }
    }
    for n in &config.numa {
        if let Some(device) = &n.device_id {
            generic_initiators.push(GenericInitiatorLink {
                device: device.clone(),
                node: n.guest_numa_id,
            });
        }
    }

    let node_count = config.numa.len();
    let distances = (node_count > 0).then(|| {
        (0..node_count)
            .map(|i| {
                (0..node_count)
                    .map(|j| distance(config, i as u32, j as u32))
                    .collect()
            })
            .collect()
    });

    let acpi = Topology {
        cpus,
        nodes: (0..node_count as u32).map(|id| NumaNode { id }).collect(),
        memory,
        pci_segments,
        // Segment 0's host bridge is a device GI links may name (HOST_BRIDGE_ID), and so
        // is every GI-ready slot, filled or not: the SRAT names its BDF from boot. A
        // device in a slot has the slot's id and BDF, so it is listed once.
        pci_devices: std::iter::once(PciDevice {
            id: HOST_BRIDGE_ID.to_string(),
            bdf: Bdf {
                segment: 0,
                bus: 0,
                device: 0,
                function: 0,
            },
        })
        .chain(pci_slots.iter().map(|s| PciDevice {
            id: s.id.clone(),
            bdf: s.bdf,
        }))
        .chain(
            devices
                .iter()
                .filter(|d| !pci_slots.iter().any(|s| s.id == d.id))
                .map(|d| PciDevice {
                    id: d.id.clone(),
                    bdf: d.bdf,
                }),
        )
        .collect(),
        generic_initiators,
        distances,
        // In configuration order, so the ACPI crate's refusals (`hmat[N].initiator`: a node
        // with neither vCPUs nor a GI link; `hmat[N].target`: one without memory;
        // duplicates) name the configuration's own entry.
        hmat: config.hmat.iter().map(hmat_entry).collect(),
        // Same order, same field names (`hmat_caches[N].level`) as the configuration.
        hmat_caches: config.hmat_caches.iter().map(hmat_cache).collect(),
        platform: platform(),
    };
    // The tables' size is known once they are encoded (validation included), so encode
    // them once to size the ACPI area at the top of low RAM; they are encoded again at
    // their address when written.
    let sized = tessera_acpi::build(&acpi, tessera_acpi::Placement::default())?;
    let tables_len = sized
        .tables
        .iter()
        .map(|t| t.address + t.bytes.len() as u64)
        .max()
        .map_or(0, |end| {
            end - tessera_acpi::Placement::default().tables_address
        });
    let mut layout = layout;
    let area = layout.reserve_acpi(tables_len)?;
    let device_memory = config
        .device_memory
        .iter()
        .zip(&layout.device_memory)
        .map(|(m, r)| PlacedDeviceMemory {
            device: m.device.clone(),
            bar: usize::from(m.bar),
            node: m.node,
            range: *r,
        })
        .collect();
    Ok(GuestTopology {
        device_memory,
        layout,
        devices,
        pci_slots,
        slots,
        acpi,
        acpi_placement: tessera_acpi::Placement {
            rsdp_address: RSDP_START,
            tables_address: area.start,
        },
        phys_bits,
    })
}

/// One configured HMAT value as the ACPI crate takes it: nanoseconds or MiB/s. A value
/// missing its field (which `VmConfig::validate` refuses first) would become 0, which the
/// crate refuses too.
fn hmat_entry(h: &HmatLbConfig) -> HmatEntry {
    HmatEntry {
        initiator: h.initiator,
        target: h.target,
        data_type: match h.data_type {
            HmatDataType::AccessLatency => tessera_acpi::HmatDataType::AccessLatency,
            HmatDataType::ReadLatency => tessera_acpi::HmatDataType::ReadLatency,
            HmatDataType::WriteLatency => tessera_acpi::HmatDataType::WriteLatency,
            HmatDataType::AccessBandwidth => tessera_acpi::HmatDataType::AccessBandwidth,
            HmatDataType::ReadBandwidth => tessera_acpi::HmatDataType::ReadBandwidth,
            HmatDataType::WriteBandwidth => tessera_acpi::HmatDataType::WriteBandwidth,
        },
        value: h.table_value().unwrap_or(0),
    }
}

/// One configured memory-side cache as the ACPI crate takes it.
fn hmat_cache(c: &HmatCacheConfig) -> tessera_acpi::HmatCache {
    use tessera_acpi::{HmatCacheAssociativity as A, HmatCacheWritePolicy as P};
    tessera_acpi::HmatCache {
        node: c.node,
        size: c.size,
        level: c.level,
        associativity: match c.associativity {
            HmatCacheAssociativity::None => A::None,
            HmatCacheAssociativity::Direct => A::Direct,
            HmatCacheAssociativity::Complex => A::Complex,
        },
        policy: match c.policy {
            HmatCachePolicy::None => P::None,
            HmatCachePolicy::WriteBack => P::WriteBack,
            HmatCachePolicy::WriteThrough => P::WriteThrough,
        },
        line: c.line,
    }
}

fn window(r: Range) -> Window {
    Window {
        base: r.start,
        size: r.len(),
    }
}

/// The SLIT entry from `from` to `to`: as configured; else the distance configured from
/// `to` back to `from`, as Cloud Hypervisor reads one-way distances (its documented
/// `distances=[1@15]` on node 0 alone gives 15 both ways); else a device-memory node's
/// distance (the larger of two); else 10 to itself and 20 elsewhere.
fn distance(config: &VmConfig, from: u32, to: u32) -> u8 {
    if from == to {
        return 10;
    }
    let configured = |from: u32, to: u32| {
        config
            .numa
            .iter()
            .find(|n| n.guest_numa_id == from)
            .and_then(|n| n.distances.iter().find(|d| d.destination == to))
            .and_then(|d| u8::try_from(d.distance).ok())
    };
    let device_memory = |node: u32| {
        config
            .device_memory_of_node(node)
            .map(|(_, m)| m.distance())
    };
    configured(from, to)
        .or_else(|| configured(to, from))
        .or_else(|| device_memory(from).max(device_memory(to)))
        .unwrap_or(tessera_acpi::DEFAULT_REMOTE_DISTANCE)
}

/// The GSI of `slot`'s interrupt `pin` (1..=4 = INTA#..INTD#), as the `_PRT` routes it.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    INTX_GSI_BASE + (u32::from(slot) + u32::from(pin.saturating_sub(1))) % INTX_GSI_COUNT
}

/// Slot `s` pin `p` → GSI `16 + (s + p) % 8`, the PC swizzle.
fn intx_routes() -> Vec<IntxRoute> {
    (0..32u8)
        .flat_map(|device| {
            [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D]
                .into_iter()
                .map(move |pin| IntxRoute {
                    device,
                    pin,
                    gsi: intx_gsi(device, pin.index() + 1),
                })
        })
        .collect()
}

fn platform() -> tessera_acpi::Platform {
    use tessera_arch::layout::{GED_START, IOAPIC_START, LAPIC_START};
    tessera_acpi::Platform {
        lapic_address: LAPIC_START as u32,
        ioapics: vec![tessera_acpi::IoApic {
            id: 0,
            address: IOAPIC_START as u32,
            gsi_base: 0,
        }],
        serial: Some(tessera_acpi::Serial {
            port: 0x3f8,
            gsi: SERIAL_GSI,
        }),
        ged: Some(tessera_acpi::Ged {
            mmio_base: GED_START,
            gsi: GED_GSI,
            power_button_event: tessera_devices::GED_EVENT_POWER_BUTTON,
            pci_hotplug_event: tessera_devices::GED_EVENT_PCI_HOTPLUG,
        }),
        // Every VM has the controller on its MMIO bus (the device manager's).
        pci_hotplug: Some(pci_hotplug_controller()),
        ..tessera_acpi::Platform::default()
    }
}

/// The ACPI PCI hotplug controller as the DSDT describes it: arch's address, the device
/// model's register block.
pub fn pci_hotplug_controller() -> tessera_acpi::PciHotplug {
    use tessera_devices::pci_hotplug as hp;
    tessera_acpi::PciHotplug {
        mmio_base: tessera_arch::layout::PCI_HOTPLUG_START,
        mmio_len: hp::PCI_HOTPLUG_MMIO_LEN,
        registers: tessera_acpi::PciHotplugRegisters {
            slots_up: hp::PCI_HOTPLUG_SLOTS_UP,
            slots_down: hp::PCI_HOTPLUG_SLOTS_DOWN,
            eject: hp::PCI_HOTPLUG_EJECT,
            segment: hp::PCI_HOTPLUG_SEGMENT,
        },
    }
}
