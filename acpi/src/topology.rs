//! The topology description the tables are built from: plain, serde-(de)serializable data.
//!
//! Nothing here knows about byte layouts; `validate` checks it, the table modules encode it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Everything the guest's firmware tables describe.
///
/// NUMA node ids are ACPI proximity domains. They must be contiguous from 0, as in QEMU,
/// because the SLIT is indexed by them. An empty `nodes` list means a non-NUMA guest: no
/// SRAT, SLIT or HMAT is produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Logical processors, in MADT order (the first one is the boot CPU).
    #[serde(default)]
    pub cpus: Vec<Cpu>,
    /// NUMA nodes; any mix of CPUs, memory, Generic Initiators, or none of them.
    #[serde(default)]
    pub nodes: Vec<NumaNode>,
    /// Guest physical memory ranges.
    #[serde(default)]
    pub memory: Vec<MemoryRange>,
    /// PCI segments, each with its own host bridge and ECAM window.
    #[serde(default)]
    pub pci_segments: Vec<PciSegment>,
    /// PCI devices that Generic Initiator links may name.
    #[serde(default)]
    pub pci_devices: Vec<PciDevice>,
    /// Generic Initiator links, device → node; a device may link to many nodes.
    #[serde(default)]
    pub generic_initiators: Vec<GenericInitiatorLink>,
    /// Full node distance matrix, `distances[from][to]`; `None` gives 10 on the
    /// diagonal and 20 elsewhere.
    #[serde(default)]
    pub distances: Option<Vec<Vec<u8>>>,
    /// HMAT latency and bandwidth from initiator nodes to memory nodes.
    #[serde(default)]
    pub hmat: Vec<HmatEntry>,
    /// HMAT memory-side caches in front of memory nodes.
    #[serde(default)]
    pub hmat_caches: Vec<HmatCache>,
    /// Fixed platform resources: interrupt controllers, serial port, power registers.
    #[serde(default)]
    pub platform: Platform,
}

/// One logical processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// Local APIC id; ids of 255 and above are described with x2APIC structures.
    pub apic_id: u32,
    /// The NUMA node the CPU belongs to (required when the topology has nodes).
    #[serde(default)]
    pub node: Option<u32>,
}

/// A NUMA node (ACPI proximity domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNode {
    /// The proximity domain number.
    pub id: u32,
}

/// A guest physical memory range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRange {
    /// Guest physical base address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// The NUMA node the range belongs to (required when the topology has nodes).
    #[serde(default)]
    pub node: Option<u32>,
    /// Whether the range is present and usable (SRAT "Enabled").
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whether memory may be hot-added into the range later.
    #[serde(default)]
    pub hotpluggable: bool,
    /// Whether the range is non-volatile (persistent) memory.
    #[serde(default)]
    pub non_volatile: bool,
}

fn default_true() -> bool {
    true
}

/// A half-open address window `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Window {
    /// The last address inside the window, `None` for an empty or overflowing one.
    pub fn last(&self) -> Option<u64> {
        self.size
            .checked_sub(1)
            .and_then(|s| self.base.checked_add(s))
    }
}

/// A PCI segment (domain) with its host bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSegment {
    /// Segment group number (`_SEG`, MCFG).
    pub id: u16,
    /// ECAM base address for bus 0 of this segment (MCFG entry).
    pub ecam_base: u64,
    /// First bus decoded by the host bridge (`_BBN`).
    #[serde(default)]
    pub start_bus: u8,
    /// Last bus decoded by the host bridge.
    #[serde(default = "default_end_bus")]
    pub end_bus: u8,
    /// 32-bit MMIO window for BARs.
    pub mmio32: Window,
    /// 64-bit MMIO window for BARs.
    #[serde(default)]
    pub mmio64: Option<Window>,
    /// Port I/O window for BARs; only the segment with 0xCF8/0xCFC (segment 0) usually has one.
    #[serde(default)]
    pub io: Option<Window>,
    /// The host bridge's NUMA node (`_PXM`).
    #[serde(default)]
    pub node: Option<u32>,
    /// Legacy INTx routing (`_PRT`).
    #[serde(default)]
    pub intx_routes: Vec<IntxRoute>,
    /// Root-bus slots (device numbers 0..=31) the guest may hot-add to and eject from by
    /// ACPI PCI hotplug; each gets a slot device with `_ADR`, `_SUN` and `_EJ0` under the
    /// host bridge. Needs `platform.pci_hotplug`. List every slot a device may come and go
    /// in, boot-time devices' too (they are ejectable); leave out slots whose device must
    /// never go, such as segment 0's host bridge at slot 0.
    #[serde(default)]
    pub hotplug_slots: Vec<u8>,
}

fn default_end_bus() -> u8 {
    0xff
}

/// One `_PRT` entry: INTx pin of a device slot to a global system interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntxRoute {
    /// Device (slot) number on the root bus, 0..=31.
    pub device: u8,
    /// Interrupt pin.
    pub pin: IntxPin,
    /// Global system interrupt (IOAPIC input) the pin is wired to. A `_PRT` entry that names
    /// a GSI directly makes it level-triggered, active-low: the device model must match.
    pub gsi: u32,
}

/// A PCI INTx pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntxPin {
    /// INTA#
    A,
    /// INTB#
    B,
    /// INTC#
    C,
    /// INTD#
    D,
}

impl IntxPin {
    /// The `_PRT` pin number (INTA# = 0).
    pub fn index(self) -> u8 {
        match self {
            IntxPin::A => 0,
            IntxPin::B => 1,
            IntxPin::C => 2,
            IntxPin::D => 3,
        }
    }
}

/// A PCI device as Generic Initiator links name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciDevice {
    /// Unique name of the device, as links refer to it.
    pub id: String,
    /// Guest address, `"SSSS:BB:DD.F"`.
    pub bdf: Bdf,
}

/// A PCI address: segment, bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bdf {
    /// Segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// Builds a BDF, rejecting device numbers above 31 and functions above 7.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfParseError> {
        if device > 31 {
            return Err(BdfParseError::Device(device));
        }
        if function > 7 {
            return Err(BdfParseError::Function(function));
        }
        Ok(Bdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// Device and function packed as in config space addresses and SRAT handles.
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | (self.function & 7)
    }
}

/// Why a BDF string or number was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BdfParseError {
    /// Not of the form `SSSS:BB:DD.F` or `BB:DD.F`.
    #[error("`{0}` is not a PCI address of the form SSSS:BB:DD.F (hex)")]
    Syntax(String),
    /// Device number above 31.
    #[error("PCI device number {0} is above 31")]
    Device(u8),
    /// Function number above 7.
    #[error("PCI function number {0} is above 7")]
    Function(u8),
}

impl FromStr for Bdf {
    type Err = BdfParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || BdfParseError::Syntax(s.to_string());
        let (rest, function) = s.rsplit_once('.').ok_or_else(syntax)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (segment, bus, device) = match parts.as_slice() {
            [seg, bus, dev] => (*seg, *bus, *dev),
            [bus, dev] => ("0", *bus, *dev),
            _ => return Err(syntax()),
        };
        let hex_ok = |p: &str, max_len: usize| {
            !p.is_empty() && p.len() <= max_len && p.chars().all(|c| c.is_ascii_hexdigit())
        };
        if !hex_ok(segment, 4) || !hex_ok(bus, 2) || !hex_ok(device, 2) || !hex_ok(function, 1) {
            return Err(syntax());
        }
        let segment = u16::from_str_radix(segment, 16).map_err(|_| syntax())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| syntax())?;
        let device = u8::from_str_radix(device, 16).map_err(|_| syntax())?;
        let function = u8::from_str_radix(function, 16).map_err(|_| syntax())?;
        Bdf::new(segment, bus, device, function)
    }
}

impl TryFrom<String> for Bdf {
    type Error = BdfParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Bdf> for String {
    fn from(b: Bdf) -> String {
        b.to_string()
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// A Generic Initiator link: the device is an initiator in the node's proximity domain.
/// One link per SRAT Generic Initiator Affinity structure, as QEMU's
/// `acpi-generic-initiator` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericInitiatorLink {
    /// The `id` of a device in `pci_devices`.
    pub device: String,
    /// The node the device initiates from.
    pub node: u32,
}

/// What an HMAT value measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatDataType {
    /// Access latency in nanoseconds.
    AccessLatency,
    /// Read latency in nanoseconds.
    ReadLatency,
    /// Write latency in nanoseconds.
    WriteLatency,
    /// Access bandwidth in MB/s.
    AccessBandwidth,
    /// Read bandwidth in MB/s.
    ReadBandwidth,
    /// Write bandwidth in MB/s.
    WriteBandwidth,
}

impl HmatDataType {
    /// Whether the value is a latency (nanoseconds) rather than a bandwidth (MB/s).
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            HmatDataType::AccessLatency | HmatDataType::ReadLatency | HmatDataType::WriteLatency
        )
    }
}

/// One HMAT System Locality Latency and Bandwidth value, as QEMU's `-numa hmat-lb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmatEntry {
    /// Initiator node: one with CPUs or Generic Initiators.
    pub initiator: u32,
    /// Target node: one with memory.
    pub target: u32,
    /// What `value` measures.
    pub data_type: HmatDataType,
    /// Nanoseconds for latencies, MB/s for bandwidths; must be non-zero.
    pub value: u64,
}

/// One HMAT Memory Side Cache Information structure, as QEMU's `-numa hmat-cache`: one
/// level of cache in front of a memory node's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmatCache {
    /// The memory node the cache is in front of.
    pub node: u32,
    /// Cache size in bytes; each level of a node must be larger than the level below.
    pub size: u64,
    /// Cache level, 1..=3; a node's levels run from 1 without gaps.
    pub level: u8,
    /// How the cache is indexed.
    #[serde(default)]
    pub associativity: HmatCacheAssociativity,
    /// Its write policy.
    #[serde(default)]
    pub policy: HmatCacheWritePolicy,
    /// Cache line size in bytes.
    #[serde(default)]
    pub line: u16,
}

/// A memory-side cache's associativity (ACPI's Cache Attributes bits 8..11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatCacheAssociativity {
    /// None given.
    #[default]
    None,
    /// Direct mapped.
    Direct,
    /// Complex cache indexing.
    Complex,
}

/// A memory-side cache's write policy (ACPI's Cache Attributes bits 12..15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatCacheWritePolicy {
    /// None given.
    #[default]
    None,
    /// Write-back.
    WriteBack,
    /// Write-through.
    WriteThrough,
}

/// Fixed platform resources the DSDT, MADT and FADT describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Platform {
    /// Six-character OEM id written into every table header.
    pub oem_id: String,
    /// Local APIC MMIO address.
    pub lapic_address: u32,
    /// I/O APICs.
    pub ioapics: Vec<IoApic>,
    /// ISA interrupt source overrides.
    pub interrupt_overrides: Vec<InterruptOverride>,
    /// The COM1 16550 UART, if any.
    pub serial: Option<Serial>,
    /// Hardware-reduced ACPI sleep and reset registers.
    pub power: PowerRegisters,
    /// The Generic Event Device that signals the power button and PCI hotplug.
    pub ged: Option<Ged>,
    /// The ACPI PCI hotplug controller the segments' `hotplug_slots` are driven through;
    /// `None` leaves hotplug out of the DSDT. Needs `ged`, whose interrupt announces changes.
    pub pci_hotplug: Option<PciHotplug>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            oem_id: "TESSRA".to_string(),
            lapic_address: 0xfee0_0000,
            ioapics: vec![IoApic {
                id: 0,
                address: 0xfec0_0000,
                gsi_base: 0,
            }],
            interrupt_overrides: Vec::new(),
            serial: Some(Serial {
                port: 0x3f8,
                gsi: 4,
            }),
            power: PowerRegisters::default(),
            ged: Some(Ged {
                mmio_base: 0xfed0_1000,
                gsi: 9,
                power_button_event: 1 << 0,
                pci_hotplug_event: 1 << 1,
            }),
            pci_hotplug: None,
        }
    }
}

/// An I/O APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoApic {
    /// I/O APIC id.
    pub id: u8,
    /// MMIO address.
    pub address: u32,
    /// First global system interrupt it serves.
    pub gsi_base: u32,
}

/// An ISA IRQ routed to a different global system interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterruptOverride {
    /// ISA IRQ number.
    pub source: u8,
    /// Global system interrupt it arrives on.
    pub gsi: u32,
    /// MPS INTI flags (polarity bits 0-1, trigger mode bits 2-3).
    #[serde(default)]
    pub flags: u16,
}

/// A 16550 UART at an I/O port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// Base I/O port.
    pub port: u16,
    /// Global system interrupt (edge, active high).
    pub gsi: u32,
}

/// Hardware-reduced ACPI sleep and reset registers, all in port I/O space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerRegisters {
    /// FADT SLEEP_CONTROL_REG: the guest writes `(SLP_TYP << 2) | SLP_EN` here.
    pub sleep_control_port: u16,
    /// FADT SLEEP_STATUS_REG.
    pub sleep_status_port: u16,
    /// FADT RESET_REG.
    pub reset_port: u16,
    /// FADT RESET_VALUE.
    pub reset_value: u8,
}

impl Default for PowerRegisters {
    fn default() -> Self {
        PowerRegisters {
            sleep_control_port: 0x3c0,
            sleep_status_port: 0x3c0,
            reset_port: 0x3c0,
            reset_value: 1,
        }
    }
}

/// The ACPI Generic Event Device (`ACPI0013`): one interrupt and a 32-bit event
/// register whose bits say which event fired.
///
/// The bits are the device model's (`tessera_devices::GED_EVENT_*`); the VMM passes them
/// in so that `_EVT` tests exactly what the device sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ged {
    /// MMIO address of the event register.
    pub mmio_base: u64,
    /// Global system interrupt (edge, active high).
    pub gsi: u32,
    /// The event register bit (a mask with one bit set) for "the power button was pressed".
    pub power_button_event: u32,
    /// The event register bit for "PCI hotplug slots changed"; `_EVT` scans the slots on
    /// it when [`Platform::pci_hotplug`] is set.
    pub pci_hotplug_event: u32,
}

/// The ACPI PCI hotplug controller: a block of 32-bit MMIO registers (Cloud Hypervisor's
/// model) that the DSDT's `\_SB.PHPR` methods read and write.
///
/// The layout is the device model's (`tessera_devices::pci_hotplug`); the VMM passes it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciHotplug {
    /// MMIO address of the register block.
    pub mmio_base: u64,
    /// Length of the block in bytes; every register lies inside it.
    pub mmio_len: u64,
    /// Where each register is in the block.
    pub registers: PciHotplugRegisters,
}

/// Offsets of the hotplug controller's 32-bit registers (4-byte aligned, distinct). Each
/// register holds one bit per slot (bit n = slot n) of the segment `segment` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciHotplugRegisters {
    /// `PCIU`: slots that gained a device (read; the device clears it on read).
    pub slots_up: u64,
    /// `PCID`: slots whose device should be released (read; cleared on read).
    pub slots_down: u64,
    /// `B0EJ`: the guest writes a slot's bit to eject it.
    pub eject: u64,
    /// `PSEG`: the guest writes the segment the other registers refer to.
    pub segment: u64,
}

impl PciHotplugRegisters {
    /// The registers as (AML field name, topology field name, offset), in field order.
    pub(crate) fn named(&self) -> [([u8; 4], &'static str, u64); 4] {
        [
            (*b"PCIU", "slots_up", self.slots_up),
            (*b"PCID", "slots_down", self.slots_down),
            (*b"B0EJ", "eject", self.eject),
            (*b"PSEG", "segment", self.segment),
        ]
    }
}
