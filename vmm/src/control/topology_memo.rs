//! The guest topology and ACPI tables of the control loop's configuration, computed once
//! per configuration: every edit's check, `vm.info` and `vm.acpi` ask for the topology of
//! the same configuration, and building it (the tables twice: once to size them) was
//! most of what the VMM did before the guest's first instruction. Reads nothing but the
//! configuration, except `device_memory`'s BAR sizes from the host, which are never
//! remembered.

use std::cell::{OnceCell, RefCell};
use std::sync::Arc;

use tessera_acpi::AcpiTables;
use tessera_api::config::VmConfig;
use tessera_api::server::ApiError;

use super::topology_err;
use crate::guest_topology::{guest_topology, GuestTopology};

/// The last topology computed, its tables once asked for, and the configuration they
/// are a pure function of.
#[derive(Default)]
pub(super) struct TopologyMemo(RefCell<Option<Entry>>);

struct Entry {
    config: VmConfig,
    topology: Arc<GuestTopology>,
    tables: OnceCell<Result<Arc<AcpiTables>, ApiError>>,
}

impl TopologyMemo {
    /// `config`'s guest topology; an error names the field at fault.
    pub(super) fn topology(&self, config: &VmConfig) -> Result<Arc<GuestTopology>, ApiError> {
        if let Some(entry) = self.0.borrow().as_ref() {
            if entry.config == *config {
                return Ok(Arc::clone(&entry.topology));
            }
        }
        let topology = Arc::new(
            guest_topology(config, tessera_arch::vcpu::host_phys_bits()).map_err(topology_err)?,
        );
        if config.device_memory.is_empty() {
            *self.0.borrow_mut() = Some(Entry {
                config: config.clone(),
                topology: Arc::clone(&topology),
                tables: OnceCell::new(),
            });
        }
        Ok(topology)
    }

    /// The ACPI tables of `config`'s guest.
    pub(super) fn tables(&self, config: &VmConfig) -> Result<Arc<AcpiTables>, ApiError> {
        let topology = self.topology(config)?;
        let build = || {
            topology
                .acpi_tables()
                .map(Arc::new)
                .map_err(|e| ApiError::new(400, e.to_string(), Some(e.field())))
        };
        match self.0.borrow().as_ref() {
            Some(entry) if Arc::ptr_eq(&entry.topology, &topology) => {
                entry.tables.get_or_init(build).clone()
            }
            _ => build(),
        }
    }
}
