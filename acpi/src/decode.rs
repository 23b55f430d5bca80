//! Decoding SRAT, SLIT and HMAT bytes back into plain data, so an API can show an
//! orchestrator what a guest will be told before it boots.
//!
//! Only the structures these tables carry here are decoded; others are listed by type
//! and length. Malformed input is an error, never a panic.

use serde::Serialize;

/// Why table bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{signature}: {message} at byte {offset:#x}")]
pub struct DecodeError {
    /// The table.
    pub signature: String,
    /// What is wrong.
    pub message: String,
    /// Where.
    pub offset: usize,
}

/// A decoded SRAT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Srat {
    /// Processor affinity: Local APIC (type 0) and x2APIC (type 2) structures.
    pub processors: Vec<SratProcessor>,
    /// Memory affinity (type 1).
    pub memory: Vec<SratMemory>,
    /// Generic Initiator affinity (type 5).
    pub generic_initiators: Vec<SratGenericInitiator>,
    /// Structures of other types: (type, length).
    pub other: Vec<(u8, u8)>,
}

/// A processor's proximity domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SratProcessor {
    /// APIC or x2APIC id.
    pub apic_id: u32,
    /// Proximity domain.
    pub node: u32,
    /// Whether it is an x2APIC structure.
    pub x2apic: bool,
    /// Enabled flag.
    pub enabled: bool,
}

/// A memory range's proximity domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SratMemory {
    /// Base address.
    pub base: u64,
    /// Length.
    pub size: u64,
    /// Proximity domain.
    pub node: u32,
    /// Enabled flag.
    pub enabled: bool,
    /// Hot-pluggable flag.
    pub hotpluggable: bool,
    /// Non-volatile flag.
    pub non_volatile: bool,
}

/// A Generic Initiator's proximity domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SratGenericInitiator {
    /// Proximity domain.
    pub node: u32,
    /// Device handle type: 0 ACPI, 1 PCI.
    pub handle_type: u8,
    /// For PCI handles, the device as `SSSS:BB:DD.F`.
    pub bdf: Option<String>,
    /// Enabled flag.
    pub enabled: bool,
}

/// A decoded SLIT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slit {
    /// `distances[from][to]`.
    pub distances: Vec<Vec<u8>>,
}

/// A decoded HMAT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Hmat {
    /// Memory Proximity Domain Attributes structures: (memory node, attached initiator).
    pub memory_domains: Vec<HmatMemoryDomain>,
    /// System Locality Latency and Bandwidth values, in ns or MB/s.
    pub localities: Vec<HmatLocality>,
    /// Memory Side Cache Information structures; left out when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<HmatCacheInfo>,
}

/// One memory-side cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HmatCacheInfo {
    /// The memory node the cache is in front of.
    pub node: u32,
    /// Size in bytes.
    pub size: u64,
    /// This cache's level.
    pub level: u8,
    /// How many cache levels the node has.
    pub total_levels: u8,
    /// `none`, `direct` or `complex`.
    pub associativity: &'static str,
    /// `none`, `write_back` or `write_through`.
    pub policy: &'static str,
    /// Line size in bytes.
    pub line: u16,
}

/// A memory domain's attached initiator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HmatMemoryDomain {
    /// Memory proximity domain.
    pub node: u32,
    /// Attached initiator, when the structure says it is valid.
    pub initiator: Option<u32>,
}

/// One latency or bandwidth value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HmatLocality {
    /// `access_latency`, `read_bandwidth`, ...
    pub data_type: &'static str,
    /// Initiator node.
    pub initiator: u32,
    /// Target node.
    pub target: u32,
    /// Nanoseconds for latencies, MB/s for bandwidths.
    pub value: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    signature: &'static str,
}

impl Reader<'_> {
    fn err(&self, message: impl Into<String>, offset: usize) -> DecodeError {
        DecodeError {
            signature: self.signature.into(),
            message: message.into(),
            offset,
        }
    }
    fn u8(&self, at: usize) -> Result<u8, DecodeError> {
        self.bytes
            .get(at)
            .copied()
            .ok_or_else(|| self.err("table ends early", at))
    }
    fn le<const N: usize>(&self, at: usize) -> Result<[u8; N], DecodeError> {
        self.bytes
            .get(at..at + N)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.err("table ends early", at))
    }
    fn u16(&self, at: usize) -> Result<u16, DecodeError> {
        self.le::<2>(at).map(u16::from_le_bytes)
    }
    fn u32(&self, at: usize) -> Result<u32, DecodeError> {
        self.le::<4>(at).map(u32::from_le_bytes)
    }
    fn u64(&self, at: usize) -> Result<u64, DecodeError> {
        self.le::<8>(at).map(u64::from_le_bytes)
    }
    /// Checks signature and length against the header.
    fn header(&self) -> Result<usize, DecodeError> {
        if self.bytes.get(0..4) != Some(self.signature.as_bytes()) {
            return Err(self.err("wrong signature", 0));
        }
        let len = self.u32(4)? as usize;
        if len != self.bytes.len() {
            return Err(self.err(
                format!("header says {len} bytes, got {}", self.bytes.len()),
                4,
            ));
        }
        Ok(len)
    }
}

/// Decodes an SRAT.
pub fn decode_srat(bytes: &[u8]) -> Result<Srat, DecodeError> {
    let r = Reader {
        bytes,
        signature: "SRAT",
    };
    let len = r.header()?;
    let mut srat = Srat::default();
    let mut at = 48;
    while at < len {
        let (kind, slen) = (r.u8(at)?, r.u8(at + 1)?);
        if slen < 2 || at + usize::from(slen) > len {
            return Err(r.err(
                format!("structure of type {kind} has bad length {slen}"),
                at,
            ));
        }
        match (kind, slen) {
            (0, 16) => {
                let hi = r.le::<3>(at + 9)?;
                srat.processors.push(SratProcessor {
                    apic_id: u32::from(r.u8(at + 3)?),
                    node: u32::from_le_bytes([r.u8(at + 2)?, hi[0], hi[1], hi[2]]),
                    x2apic: false,
                    enabled: r.u32(at + 4)? & 1 != 0,
                });
            }
            (2, 24) => srat.processors.push(SratProcessor {
                apic_id: r.u32(at + 8)?,
                node: r.u32(at + 4)?,
                x2apic: true,
                enabled: r.u32(at + 12)? & 1 != 0,
            }),
            (1, 40) => {
                let flags = r.u32(at + 28)?;
                srat.memory.push(SratMemory {
                    base: r.u64(at + 8)?,
                    size: r.u64(at + 16)?,
                    node: r.u32(at + 2)?,
                    enabled: flags & 1 != 0,
                    hotpluggable: flags & 2 != 0,
                    non_volatile: flags & 4 != 0,
                });
            }
            (5, 32) => {
                let handle_type = r.u8(at + 3)?;
                let bdf = (handle_type == 1).then(|| -> Result<String, DecodeError> {
                    let devfn = r.u8(at + 11)?;
                    Ok(format!(
                        "{:04x}:{:02x}:{:02x}.{:x}",
                        r.u16(at + 8)?,
                        r.u8(at + 10)?,
                        devfn >> 3,
                        devfn & 7
                    ))
                });
                srat.generic_initiators.push(SratGenericInitiator {
                    node: r.u32(at + 4)?,
                    handle_type,
                    bdf: bdf.transpose()?,
                    enabled: r.u32(at + 24)? & 1 != 0,
                });
            }
            _ => srat.other.push((kind, slen)),
        }
        at += usize::from(slen);
    }
    Ok(srat)
}

/// Decodes a SLIT.
pub fn decode_slit(bytes: &[u8]) -> Result<Slit, DecodeError> {
    let r = Reader {
        bytes,
        signature: "SLIT",
    };
    let len = r.header()?;
    let n = r.u64(36)?;
    let cells = n.checked_mul(n).filter(|c| 44 + c == len as u64);
    let Some(_) = cells else {
        return Err(r.err(format!("{n} localities do not fill {len} bytes"), 36));
    };
    let n = n as usize;
    let distances = bytes
        .get(44..)
        .unwrap_or_default()
        .chunks(n.max(1))
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Slit { distances })
}

/// Decodes an HMAT (revision 2 layout).
pub fn decode_hmat(bytes: &[u8]) -> Result<Hmat, DecodeError> {
    let r = Reader {
        bytes,
        signature: "HMAT",
    };
    let len = r.header()?;
    let mut hmat = Hmat::default();
    let mut at = 40;
    while at < len {
        let kind = r.u16(at)?;
        let slen = r.u32(at + 4)? as usize;
        if slen < 8 || at + slen > len {
            return Err(r.err(
                format!("structure of type {kind} has bad length {slen}"),
                at,
            ));
        }
        match kind {
            0 => {
                let flags = r.u16(at + 8)?;
                hmat.memory_domains.push(HmatMemoryDomain {
                    node: r.u32(at + 16)?,
                    initiator: (flags & 1 != 0).then(|| r.u32(at + 12)).transpose()?,
                });
            }
            1 => {
                let data_type = r.u8(at + 9)?;
                let name = match data_type {
                    0 => "access_latency",
                    1 => "read_latency",
                    2 => "write_latency",
                    3 => "access_bandwidth",
                    4 => "read_bandwidth",
                    5 => "write_bandwidth",
                    _ => return Err(r.err(format!("unknown data type {data_type}"), at + 9)),
                };
                let ni = r.u32(at + 12)? as usize;
                let nt = r.u32(at + 16)? as usize;
                let base = r.u64(at + 24)?;
                let inits = at + 32;
                let targs = inits + 4 * ni;
                let entries = targs + 4 * nt;
                // Counts come from the table: checked, as they may be up to 2^32 each.
                let size = ni
                    .checked_mul(nt)
                    .and_then(|n| n.checked_mul(2))
                    .and_then(|n| n.checked_add(entries));
                if size != Some(at + slen) {
                    return Err(r.err("locality structure size does not match its counts", at));
                }
                for i in 0..ni {
                    for t in 0..nt {
                        let entry = u64::from(r.u16(entries + 2 * (i * nt + t))?);
                        if entry == 0 || entry == 0xffff {
                            continue;
                        }
                        let raw = entry.saturating_mul(base);
                        hmat.localities.push(HmatLocality {
                            data_type: name,
                            initiator: r.u32(inits + 4 * i)?,
                            target: r.u32(targs + 4 * t)?,
                            // Latencies are in picoseconds in the table.
                            value: if data_type <= 2 { raw / 1000 } else { raw },
                        });
                    }
                }
            }
            2 => {
                let attributes = r.u32(at + 24)?;
                let nibble = |shift: u32| ((attributes >> shift) & 0xf) as u8;
                hmat.caches.push(HmatCacheInfo {
                    node: r.u32(at + 8)?,
                    size: r.u64(at + 16)?,
                    total_levels: nibble(0),
                    level: nibble(4),
                    associativity: match nibble(8) {
                        0 => "none",
                        1 => "direct",
                        2 => "complex",
                        _ => "reserved",
                    },
                    policy: match nibble(12) {
                        0 => "none",
                        1 => "write_back",
                        2 => "write_through",
                        _ => "reserved",
                    },
                    line: (attributes >> 16) as u16,
                });
            }
            _ => {}
        }
        at += slen;
    }
    Ok(hmat)
}
