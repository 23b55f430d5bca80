//! The buses and the PCI configuration paths as the guest reaches them: any port or MMIO
//! address near the config mechanisms, any width, through 0xCF8/0xCFC and ECAM to the
//! segment's functions; and the [`Bus`] itself against a model of its ranges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use arbitrary::{Arbitrary, Unstructured};
use tessera_devices::bus::{Bus, BusDevice, BusError};
use tessera_devices::pci::{
    PciBar, PciBarType, PciConfigIo, PciConfigMmio, PciConfiguration, PciDevice, PciHostBridge,
    PciIds, PciSegment,
};

/// ECAM window of segment 0 on the MMIO bus.
const ECAM_BASE: u64 = 0xe000_0000;

/// Checks the contract the config paths give devices, then passes the access on.
struct Contract<D>(D);

impl<D: PciDevice> PciDevice for Contract<D> {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        assert!(reg < 1024, "register {reg} past 4 KiB");
        self.0.read_config_register(reg)
    }
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        assert!(reg < 1024, "register {reg} past 4 KiB");
        assert!(
            matches!(data.len(), 1 | 2 | 4) && offset + data.len() as u64 <= 4,
            "write of {} bytes at byte {offset} of a dword",
            data.len()
        );
        self.0.write_config_register(reg, offset, data);
    }
}

#[derive(Arbitrary, Debug)]
enum ConfigOp {
    /// A port access at 0xCF4 + `port % 16` (around the pair, to hit its edges).
    Pio {
        port: u8,
        len: u8,
        write: Option<u32>,
    },
    /// Select (bus, devfn, reg) through CONFIG_ADDRESS, as a dword at 0xCF8.
    Select { address: u32 },
    /// An ECAM access at any offset of the first 1 MiB and a little beyond.
    Mmio {
        offset: u32,
        len: u8,
        write: Option<u32>,
    },
}

/// The config-access target.
pub fn run_config_access(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ops: Vec<ConfigOp> = super::rest(&mut u, 128);
    let mut segment = PciSegment::new(0);
    let bridge: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(Contract(PciHostBridge::new())));
    let _ = segment.add_device(0, bridge);
    let mut endpoint = PciConfiguration::new(PciIds::default());
    let _ = endpoint.add_bar(&PciBar {
        index: 0,
        bar_type: PciBarType::Memory64,
        address: 0x1_0000_0000,
        size: 0x4000,
        prefetchable: true,
    });
    let _ = endpoint.add_bar(&PciBar {
        index: 2,
        bar_type: PciBarType::Io,
        address: 0xc000,
        size: 0x20,
        prefetchable: false,
    });
    let _ = endpoint.add_capability(&[0x05, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let _ = endpoint.add_capability(&[0x11, 0, 3, 0, 0, 0x20, 0, 0, 0, 0x30, 0, 0]);
    let endpoint: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(Contract(endpoint)));
    let _ = segment.add_device(16, endpoint.clone());
    let _ = segment.add_device(17, endpoint);
    let segment = Arc::new(Mutex::new(segment));
    let (pio, mmio) = (Bus::new(), Bus::new());
    let _ = pio.insert(
        0xcf8,
        8,
        Arc::new(Mutex::new(PciConfigIo::new(segment.clone()))),
    );
    let _ = mmio.insert(
        ECAM_BASE,
        1 << 20,
        Arc::new(Mutex::new(PciConfigMmio::new(segment))),
    );
    for op in ops.iter().take(128) {
        match *op {
            ConfigOp::Pio { port, len, write } => {
                let addr = 0xcf4 + u64::from(port % 16);
                let len = usize::from(len % 9);
                match write {
                    Some(v) => {
                        let bytes = u64::from(v).to_le_bytes();
                        pio.write(addr, &bytes[..len]);
                    }
                    None => {
                        let mut b = vec![0u8; len];
                        pio.read(addr, &mut b);
                    }
                }
            }
            ConfigOp::Select { address } => {
                pio.write(0xcf8, &address.to_le_bytes());
                let mut b = [0u8; 4];
                assert!(pio.read(0xcf8, &mut b));
                assert_eq!(
                    u32::from_le_bytes(b),
                    address & 0x80ff_fffc,
                    "CONFIG_ADDRESS reads back what was selected"
                );
                // An empty devfn on bus 0 master-aborts: all ones.
                let devfn = (address >> 8) & 0xff;
                if address & 0x8000_0000 != 0 && ![0, 16, 17].contains(&devfn) {
                    let mut d = [0u8; 4];
                    assert!(pio.read(0xcfc, &mut d));
                    assert_eq!(d, [0xff; 4], "empty devfn {devfn:#x}");
                }
            }
            ConfigOp::Mmio { offset, len, write } => {
                let addr = ECAM_BASE + u64::from(offset % (1 << 20) + (offset >> 31) * 8);
                let len = usize::from(len % 9);
                match write {
                    Some(v) => {
                        let bytes = u64::from(v).to_le_bytes();
                        mmio.write(addr, &bytes[..len]);
                    }
                    None => {
                        let mut b = vec![0u8; len];
                        mmio.read(addr, &mut b);
                    }
                }
            }
        }
    }
}

/// Records the accesses that reach it, by device id.
struct Probe {
    id: u32,
    seen: Arc<Mutex<Vec<(u32, u64, usize)>>>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.id, offset, data.len()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.id, offset, data.len()));
    }
}

#[derive(Arbitrary, Debug)]
enum RangeOp {
    Insert {
        base: u16,
        len: u16,
        high: bool,
    },
    Remove {
        base: u16,
        high: bool,
    },
    Relocate {
        old: u16,
        new: u16,
        high: bool,
    },
    Access {
        addr: u16,
        len: u8,
        high: bool,
        write: bool,
    },
}

/// Addresses from a small space (so that ranges collide), near 0 or near the top of the
/// address space (so that ends overflow).
fn address(x: u16, high: bool) -> u64 {
    let x = u64::from(x) * 8;
    if high {
        u64::MAX - x
    } else {
        x
    }
}

/// The Bus against a model: a map of (base → (len, id)).
pub fn run_ranges(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ops: Vec<RangeOp> = super::rest(&mut u, 256);
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut model: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let free = |model: &BTreeMap<u64, (u64, u32)>, base: u64, len: u64, ignore: Option<u64>| {
        let last = base.checked_add(len.checked_sub(1)?)?;
        model
            .iter()
            .filter(|(b, _)| Some(**b) != ignore)
            .all(|(&b, &(l, _))| b + (l - 1) < base || b > last)
            .then_some(())
    };
    for (n, op) in ops.iter().take(256).enumerate() {
        match *op {
            RangeOp::Insert { base, len, high } => {
                let base = address(base, high);
                let len = u64::from(len % 512);
                let id = n as u32;
                let probe = Arc::new(Mutex::new(Probe {
                    id,
                    seen: seen.clone(),
                }));
                let result = bus.insert(base, len, probe);
                let expect = free(&model, base, len, None);
                assert_eq!(
                    result.is_ok(),
                    expect.is_some(),
                    "insert {base:#x}+{len:#x}"
                );
                if result.is_ok() {
                    model.insert(base, (len, id));
                }
            }
            RangeOp::Remove { base, high } => {
                let base = address(base, high);
                let result = bus.remove(base);
                assert_eq!(result.is_ok(), model.remove(&base).is_some());
            }
            RangeOp::Relocate { old, new, high } => {
                let (old, new) = (address(old, high), address(new, high));
                let result = bus.relocate(old, new);
                let expect = model
                    .get(&old)
                    .copied()
                    .filter(|&(len, _)| free(&model, new, len, Some(old)).is_some());
                match (&result, expect) {
                    (Ok(()), Some(entry)) => {
                        model.remove(&old);
                        model.insert(new, entry);
                    }
                    (Err(BusError::NoRange { .. } | BusError::Overlap { .. }), None)
                    | (Err(BusError::Overflow { .. }), None) => {}
                    _ => assert_eq!(result.is_ok(), expect.is_some(), "relocate"),
                }
            }
            RangeOp::Access {
                addr,
                len,
                high,
                write,
            } => {
                let addr = address(addr, high).wrapping_add(u64::from(len % 5));
                let len = usize::from(len % 9);
                let expect = model
                    .range(..=addr)
                    .next_back()
                    .filter(|(&b, &(l, _))| {
                        len > 0
                            && addr
                                .checked_add(len as u64 - 1)
                                .is_some_and(|last| last <= b + (l - 1))
                    })
                    .map(|(&b, &(_, id))| (id, addr - b, len));
                let reached = if write {
                    bus.write(addr, &vec![0; len])
                } else {
                    bus.read(addr, &mut vec![0; len])
                };
                let got = seen.lock().unwrap_or_else(PoisonError::into_inner).pop();
                assert_eq!(reached, expect.is_some(), "access {addr:#x}+{len}");
                assert_eq!(
                    got, expect,
                    "access {addr:#x}+{len} reached the wrong device"
                );
            }
        }
        let ranges: Vec<(u64, u64)> = model.iter().map(|(&b, &(l, _))| (b, l)).collect();
        assert_eq!(bus.ranges(), ranges);
    }
}
