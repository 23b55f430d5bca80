//! PCI configuration space reached the way a guest reaches it: through a port I/O bus with
//! the 0xCF8/0xCFC pair and an MMIO bus with the segment's ECAM window, wired as the VMM
//! wires them.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};

use tessera_devices::pci::{
    PciBar, PciBarType, PciConfigIo, PciConfigMmio, PciConfiguration, PciHostBridge, PciIds,
    PciSegment, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN, PCI_ECAM_BUS_SIZE,
};
use tessera_devices::Bus;

const ECAM_BASE: u64 = 0xe000_0000;
const CFG_ADDR: u64 = PCI_CONFIG_IO_PORT as u64;
const CFG_DATA: u64 = CFG_ADDR + 4;
/// devfn of the test endpoint: device 2, function 0.
const ENDPOINT: u8 = 2 << 3;

struct Machine {
    pio: Bus,
    mmio: Bus,
}

fn endpoint() -> PciConfiguration {
    let mut c = PciConfiguration::new(PciIds {
        vendor_id: 0x8086,
        device_id: 0x10d3,
        revision_id: 1,
        class_code: 0x02_00_00,
        subsystem_vendor_id: 0x8086,
        subsystem_id: 0xa01f,
    });
    c.add_bar(&PciBar {
        index: 0,
        bar_type: PciBarType::Memory32,
        address: 0xc000_0000,
        size: 0x2_0000,
        prefetchable: false,
    })
    .unwrap();
    c.add_bar(&PciBar {
        index: 2,
        bar_type: PciBarType::Io,
        address: 0xc000,
        size: 0x20,
        prefetchable: false,
    })
    .unwrap();
    c.add_bar(&PciBar {
        index: 3,
        bar_type: PciBarType::Memory64,
        address: 0x1_0000_0000,
        size: 0x4000,
        prefetchable: true,
    })
    .unwrap();
    c
}

fn machine() -> Machine {
    let mut segment = PciSegment::new(0);
    segment
        .add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
        .unwrap();
    segment
        .add_device(ENDPOINT, Arc::new(Mutex::new(endpoint())))
        .unwrap();
    let segment = Arc::new(Mutex::new(segment));
    let pio = Bus::new();
    pio.insert(
        CFG_ADDR,
        PCI_CONFIG_IO_PORT_LEN,
        Arc::new(Mutex::new(PciConfigIo::new(segment.clone()))),
    )
    .unwrap();
    let mmio = Bus::new();
    mmio.insert(
        ECAM_BASE,
        PCI_ECAM_BUS_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(segment))),
    )
    .unwrap();
    Machine { pio, mmio }
}

fn config_address(bus: u32, devfn: u8, reg_byte: u32) -> u32 {
    0x8000_0000 | bus << 16 | u32::from(devfn) << 8 | (reg_byte & 0xfc)
}

impl Machine {
    fn outl(&self, port: u64, v: u32) {
        assert!(self.pio.write(port, &v.to_le_bytes()));
    }
    fn inl(&self, port: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(self.pio.read(port, &mut b));
        u32::from_le_bytes(b)
    }
    fn cf8_read(&self, devfn: u8, reg_byte: u32) -> u32 {
        self.outl(CFG_ADDR, config_address(0, devfn, reg_byte));
        self.inl(CFG_DATA)
    }
    fn cf8_write(&self, devfn: u8, reg_byte: u32, v: u32) {
        self.outl(CFG_ADDR, config_address(0, devfn, reg_byte));
        self.outl(CFG_DATA, v);
    }
    fn ecam_read(&self, devfn: u8, reg_byte: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        let addr = ECAM_BASE + (u64::from(devfn) << 12) + reg_byte;
        assert!(self.mmio.read(addr, &mut b[..len]));
        u32::from_le_bytes(b)
    }
    fn ecam_write(&self, devfn: u8, reg_byte: u64, data: &[u8]) {
        let addr = ECAM_BASE + (u64::from(devfn) << 12) + reg_byte;
        assert!(self.mmio.write(addr, data));
    }
}

#[test]
fn host_bridge_ids_via_cf8_and_ecam_agree() {
    let m = machine();
    let via_io: Vec<u32> = (0..64u32).map(|r| m.cf8_read(0, r * 4)).collect();
    let via_ecam: Vec<u32> = (0..64u32)
        .map(|r| m.ecam_read(0, u64::from(r) * 4, 4))
        .collect();
    assert_eq!(via_io, via_ecam);
    assert_eq!(via_io[0], 0x0008_1b36, "vendor 0x1b36, device 0x0008");
    assert_eq!(via_io[2] >> 8, 0x06_00_00, "class: host bridge");
    assert_eq!(via_io[3] >> 16 & 0x7f, 0, "header type 0");
    // The endpoint too.
    assert_eq!(m.cf8_read(ENDPOINT, 0), 0x10d3_8086);
    assert_eq!(m.ecam_read(ENDPOINT, 0, 4), 0x10d3_8086);
}

#[test]
fn absent_functions_read_all_ones() {
    let m = machine();
    for devfn in [1u8, 8, ENDPOINT + 1, 0xff] {
        assert_eq!(
            m.cf8_read(devfn, 0),
            0xffff_ffff,
            "devfn {devfn:#x} via 0xcf8"
        );
        assert_eq!(
            m.ecam_read(devfn, 0, 4),
            0xffff_ffff,
            "devfn {devfn:#x} via ECAM"
        );
        assert_eq!(m.ecam_read(devfn, 2, 2), 0xffff);
    }
    // Bus 1 through CONFIG_ADDRESS.
    m.outl(CFG_ADDR, config_address(1, 0, 0));
    assert_eq!(m.inl(CFG_DATA), 0xffff_ffff);
    // Enable bit clear: no configuration cycle.
    m.outl(CFG_ADDR, config_address(0, 0, 0) & !0x8000_0000);
    assert_eq!(m.inl(CFG_DATA), 0xffff_ffff);
    // A write to an absent function goes nowhere and breaks nothing.
    m.cf8_write(8, 4, 0x7);
    assert_eq!(m.cf8_read(8, 4), 0xffff_ffff);
}

#[test]
fn ecam_beyond_bus_0_reads_all_ones() {
    // A window inserted with more buses than bus 0 (an MCFG with end_bus > 0).
    let mut segment = PciSegment::new(1);
    segment
        .add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
        .unwrap();
    let mmio = Bus::new();
    mmio.insert(
        ECAM_BASE,
        4 * PCI_ECAM_BUS_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(Arc::new(Mutex::new(
            segment,
        ))))),
    )
    .unwrap();
    let mut b = [0u8; 4];
    assert!(mmio.read(ECAM_BASE, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
    assert!(mmio.read(ECAM_BASE + PCI_ECAM_BUS_SIZE, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff, "bus 1, devfn 0");
}

#[test]
fn config_address_reads_back() {
    let m = machine();
    assert_eq!(m.inl(CFG_ADDR), 0);
    m.outl(CFG_ADDR, 0x8000_1234);
    assert_eq!(m.inl(CFG_ADDR), 0x8000_1234);
    // Reserved bits 30:24 and 1:0 are not kept.
    m.outl(CFG_ADDR, 0xffff_ffff);
    assert_eq!(m.inl(CFG_ADDR), 0x80ff_fffc);
    // Byte and word accesses to 0xcf8..0xcfb are not CONFIG_ADDRESS accesses
    // (Linux's type 1 probe writes a byte to 0xcfb).
    assert!(m.pio.write(CFG_ADDR + 3, &[0x01]));
    assert!(m.pio.write(CFG_ADDR, &[0x00, 0x00]));
    assert_eq!(m.inl(CFG_ADDR), 0x80ff_fffc);
    let mut b = [0u8; 1];
    assert!(m.pio.read(CFG_ADDR + 1, &mut b));
    assert_eq!(b, [0xff]);
    assert!(m.pio.read(CFG_ADDR, &mut b));
    assert_eq!(b, [0xff]);
    let mut w = [0u8; 2];
    assert!(m.pio.read(CFG_ADDR + 2, &mut w));
    assert_eq!(w, [0xff, 0xff]);
}

#[test]
fn byte_and_word_data_port_accesses() {
    let m = machine();
    m.outl(CFG_ADDR, config_address(0, ENDPOINT, 0));
    let mut b1 = [0u8; 1];
    let mut b2 = [0u8; 2];
    // Vendor 0x8086, device 0x10d3: bytes 86 80 d3 10.
    assert!(m.pio.read(CFG_DATA + 1, &mut b1));
    assert_eq!(b1, [0x80]);
    assert!(m.pio.read(CFG_DATA + 2, &mut b2));
    assert_eq!(u16::from_le_bytes(b2), 0x10d3);
    assert!(m.pio.read(CFG_DATA + 3, &mut b1));
    assert_eq!(b1, [0x10]);
    // Word at 0xcfd covers bytes 1..=2.
    assert!(m.pio.read(CFG_DATA + 1, &mut b2));
    assert_eq!(u16::from_le_bytes(b2), 0xd380);
    // A word at 0xcff would run past the port range: the bus refuses it.
    assert!(!m.pio.read(CFG_DATA + 3, &mut b2));

    // Writes: interrupt line byte (reg 0x3c, byte 0) via 0xcfc and the command
    // register's high byte (reg 0x04, byte 1) via 0xcfd; word at 0xcfe to status.
    m.outl(CFG_ADDR, config_address(0, ENDPOINT, 0x3c));
    assert!(m.pio.write(CFG_DATA, &[0x0b]));
    assert_eq!(m.cf8_read(ENDPOINT, 0x3c) & 0xff, 0x0b);
    m.outl(CFG_ADDR, config_address(0, ENDPOINT, 0x04));
    assert!(m.pio.write(CFG_DATA + 1, &[0x04])); // INTx disable
    assert!(m.pio.write(CFG_DATA, &[0x06])); // memory space + bus master
    assert!(m.pio.write(CFG_DATA + 2, &[0xff, 0xff])); // status: nothing to clear
    assert_eq!(m.cf8_read(ENDPOINT, 0x04), 0x0000_0406);
    // Same via ECAM with a word write at byte 0x06... and byte reads at 5/6.
    assert_eq!(m.ecam_read(ENDPOINT, 5, 1), 0x04);
    assert_eq!(m.ecam_read(ENDPOINT, 6, 2), 0x0000);
    m.ecam_write(ENDPOINT, 4, &[0x00, 0x00]);
    assert_eq!(m.ecam_read(ENDPOINT, 4, 4), 0);
    // ECAM accesses that cross a dword are not valid configuration accesses.
    assert_eq!(m.ecam_read(ENDPOINT, 3, 2), 0xffff);
}

#[test]
fn bar_sizing_through_config_ports() {
    let m = machine();
    // 32-bit memory BAR 0, 128 KiB.
    assert_eq!(m.cf8_read(ENDPOINT, 0x10), 0xc000_0000);
    m.cf8_write(ENDPOINT, 0x10, 0xffff_ffff);
    assert_eq!(m.cf8_read(ENDPOINT, 0x10), 0xfffe_0000);
    m.cf8_write(ENDPOINT, 0x10, 0xc000_0000);
    assert_eq!(m.cf8_read(ENDPOINT, 0x10), 0xc000_0000);
    // BAR 1 is unimplemented: reads 0 after all ones.
    m.cf8_write(ENDPOINT, 0x14, 0xffff_ffff);
    assert_eq!(m.cf8_read(ENDPOINT, 0x14), 0);
    // I/O BAR 2, 32 ports.
    assert_eq!(m.cf8_read(ENDPOINT, 0x18), 0xc001);
    m.cf8_write(ENDPOINT, 0x18, 0xffff_ffff);
    assert_eq!(m.cf8_read(ENDPOINT, 0x18), 0xffff_ffe1);
    // 64-bit prefetchable BAR 3/4, 16 KiB: both halves, via ECAM this time.
    assert_eq!(m.ecam_read(ENDPOINT, 0x1c, 4), 0x0000_000c);
    assert_eq!(m.ecam_read(ENDPOINT, 0x20, 4), 0x0000_0001);
    m.ecam_write(ENDPOINT, 0x1c, &[0xff; 4]);
    m.ecam_write(ENDPOINT, 0x20, &[0xff; 4]);
    assert_eq!(m.ecam_read(ENDPOINT, 0x1c, 4), 0xffff_c00c);
    assert_eq!(m.ecam_read(ENDPOINT, 0x20, 4), 0xffff_ffff);
    let size = !(u64::from(m.ecam_read(ENDPOINT, 0x20, 4)) << 32
        | u64::from(m.ecam_read(ENDPOINT, 0x1c, 4) & !0xf))
        + 1;
    assert_eq!(size, 0x4000);
}

#[test]
fn read_only_and_writable_header_bits() {
    let m = machine();
    // Vendor/device ID is read-only, via both paths and any width.
    m.cf8_write(0, 0, 0x1234_5678);
    m.ecam_write(0, 0, &[0xaa]);
    m.ecam_write(0, 2, &[0xbb, 0xcc]);
    assert_eq!(m.cf8_read(0, 0), 0x0008_1b36);
    // Class/revision read-only.
    m.cf8_write(0, 8, 0xffff_ffff);
    assert_eq!(m.cf8_read(0, 8), 0x0600_0000);
    // Command: only the implemented bits stick; status unchanged.
    m.cf8_write(0, 4, 0xffff_ffff);
    assert_eq!(m.cf8_read(0, 4), 0x0000_0547);
    m.cf8_write(0, 4, 0);
    assert_eq!(m.cf8_read(0, 4), 0);
}
