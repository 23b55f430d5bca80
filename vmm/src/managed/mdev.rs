//! Managed mdevs: checking a request against the parent's `mdev_supported_types`
//! (before anything changes), creating the mdev by writing its UUID to the type's
//! `create`, and removing it through `/sys/bus/mdev/devices/UUID/remove`. An mdev defined
//! with mdevctl but not started (`/etc/mdevctl.d/PARENT/UUID`) is started the same way
//! from its definition.

use std::path::PathBuf;

use tessera_api::config::DeviceConfig;

use super::sysfs::{dir_names, is_bdf, read_trimmed, Host};
use super::ManagedError;

/// An mdev to create, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdevPlan {
    /// The parent's sysfs directory.
    pub parent: PathBuf,
    /// The type's directory under the parent's `mdev_supported_types`.
    pub type_dir: PathBuf,
    /// The type's name.
    pub mdev_type: String,
    /// The UUID to create it under (lower case).
    pub uuid: String,
    /// Whether it comes from an mdevctl definition.
    pub from_mdevctl: bool,
}

fn bad(field: &str, message: impl Into<String>) -> ManagedError {
    ManagedError::device(field, message)
}

/// The mdev parents of this host (the names under `/sys/class/mdev_bus`).
fn known_parents(host: &Host) -> Vec<String> {
    dir_names(&host.path("/sys/class/mdev_bus"))
}

/// The sysfs directory of parent `parent`: a PCI address, a sysfs path, or a name under
/// `/sys/class/mdev_bus`.
fn resolve_parent(host: &Host, field: &str, parent: &str) -> Result<PathBuf, ManagedError> {
    let path = if is_bdf(parent) {
        host.pci_device(parent)
    } else if parent.starts_with('/') {
        host.path(parent)
    } else {
        host.path("/sys/class/mdev_bus").join(parent)
    };
    let listed = || {
        let known = known_parents(host);
        if known.is_empty() {
            "this host has no mdev parents (no /sys/class/mdev_bus entries: is the vendor's \
             mdev driver loaded?)"
                .to_string()
        } else {
            format!("this host's mdev parents: {}", known.join(", "))
        }
    };
    if !path.exists() {
        return Err(bad(
            field,
            format!("`{parent}` does not exist; {}", listed()),
        ));
    }
    if !path.join("mdev_supported_types").is_dir() {
        return Err(bad(
            field,
            format!(
                "`{parent}` is not an mdev parent (it has no mdev_supported_types); {}",
                listed()
            ),
        ));
    }
    path.canonicalize()
        .map_err(|e| bad(field, format!("`{parent}`: {e}")))
}

/// Checks the parent and type of `device` at `at` (`devices[N]` or `device`) and picks
/// its UUID; changes nothing.
pub fn plan(
    host: &Host,
    at: &str,
    device: &DeviceConfig,
) -> Result<Option<MdevPlan>, ManagedError> {
    let f = |name: &str| format!("{at}.{name}");
    let (parent, mdev_type, from_mdevctl) = match (&device.mdev_parent, &device.mdev_type) {
        (Some(p), Some(t)) => (p.clone(), t.clone(), false),
        (None, None) if device.path.as_os_str().is_empty() => match &device.uuid {
            Some(uuid) => {
                let (p, t) = mdevctl_definition(host, &f("uuid"), uuid)?;
                (p, t, true)
            }
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let parent_field = if from_mdevctl {
        f("uuid")
    } else {
        f("mdev_parent")
    };
    let parent_dir = resolve_parent(host, &parent_field, &parent)?;
    let types_dir = parent_dir.join("mdev_supported_types");
    let type_dir = types_dir.join(&mdev_type);
    let type_field = if from_mdevctl {
        f("uuid")
    } else {
        f("mdev_type")
    };
    if mdev_type.contains('/') || !type_dir.is_dir() {
        let valid = dir_names(&types_dir)
            .into_iter()
            .map(|t| {
                let name = read_trimmed(&types_dir.join(&t).join("name"));
                match name {
                    Some(n) if !n.is_empty() && n != t => format!("{t} ({n})"),
                    _ => t,
                }
            })
            .collect::<Vec<_>>();
        return Err(bad(
            &type_field,
            format!(
                "`{mdev_type}` is not an mdev type of {parent}; its types: {}",
                if valid.is_empty() {
                    "none".to_string()
                } else {
                    valid.join(", ")
                }
            ),
        ));
    }
    let available = read_trimmed(&type_dir.join("available_instances"))
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(0);
    if available == 0 {
        let existing = dir_names(&type_dir.join("devices"));
        return Err(bad(
            &type_field,
            format!(
                "{parent} can create no more `{mdev_type}` mdevs (available_instances is 0){}",
                if existing.is_empty() {
                    String::new()
                } else {
                    format!("; existing ones: {}", existing.join(", "))
                }
            ),
        ));
    }
    let uuid = match &device.uuid {
        Some(u) => u.to_ascii_lowercase(),
        // Control writes generated UUIDs back before boot; this is for callers that did not.
        None => new_uuid(),
    };
    if host.mdev_device(&uuid).exists() {
        let hint = if from_mdevctl {
            "it is already started (mdevctl start?)"
        } else {
            "it already exists"
        };
        return Err(bad(
            &f("uuid"),
            format!(
                "mdev {uuid} is already in use: {hint}; give another uuid, or \
                 path=/sys/bus/mdev/devices/{uuid} to pass the existing one through unmanaged"
            ),
        ));
    }
    Ok(Some(MdevPlan {
        parent: parent_dir,
        type_dir,
        mdev_type,
        uuid,
        from_mdevctl,
    }))
}

/// The parent and type mdevctl defined `uuid` with (`/etc/mdevctl.d/PARENT/UUID`, JSON
/// with `mdev_type`).
fn mdevctl_definition(
    host: &Host,
    field: &str,
    uuid: &str,
) -> Result<(String, String), ManagedError> {
    let dir = host.path("/etc/mdevctl.d");
    let uuid = uuid.to_ascii_lowercase();
    for parent in dir_names(&dir) {
        let file = dir.join(&parent).join(&uuid);
        if !file.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| bad(field, format!("{}: {e}", file.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            bad(
                field,
                format!("{} is not an mdevctl definition: {e}", file.display()),
            )
        })?;
        let Some(t) = json.get("mdev_type").and_then(|t| t.as_str()) else {
            return Err(bad(field, format!("{} has no mdev_type", file.display())));
        };
        // Attributes are written by mdevctl between create and use; Tessera does not
        // write them, so it refuses rather than start a different device.
        if json
            .get("attrs")
            .and_then(|a| a.as_array())
            .is_some_and(|a| !a.is_empty())
        {
            return Err(bad(
                field,
                format!(
                    "{} sets attrs, which Tessera does not apply: start it with mdevctl and give \
                     path=/sys/bus/mdev/devices/{uuid}",
                    file.display()
                ),
            ));
        }
        return Ok((parent, t.to_string()));
    }
    if host.mdev_device(&uuid).exists() {
        return Err(bad(
            field,
            format!(
                "mdev {uuid} is already in use (it exists); give path=/sys/bus/mdev/devices/{uuid} \
                 to pass it through unmanaged"
            ),
        ));
    }
    Err(bad(
        field,
        format!(
            "no mdev {uuid} is defined in {} and none exists: give mdev_parent and mdev_type to \
             create one",
            dir.display()
        ),
    ))
}

/// Creates the mdev of `plan` (its record written already): the UUID goes to the type's
/// `create`. Returns the mdev's sysfs directory.
pub fn create(host: &Host, plan: &MdevPlan) -> Result<PathBuf, ManagedError> {
    let create = plan.type_dir.join("create");
    host.write(&create, &plan.uuid)
        .map_err(|source| ManagedError::Host {
            what: format!(
                "creating mdev {} of type {} ({})",
                plan.uuid,
                plan.mdev_type,
                create.display()
            ),
            source,
        })?;
    let dev = host.mdev_device(&plan.uuid);
    if !dev.exists() {
        return Err(ManagedError::Host {
            what: format!("creating mdev {}", plan.uuid),
            source: std::io::Error::other(format!("{} did not appear", dev.display())),
        });
    }
    tracing::info!(
        "managed: created mdev {} ({}) on {}",
        plan.uuid,
        plan.mdev_type,
        plan.parent.display()
    );
    Ok(dev)
}

/// Removes mdev `uuid`; one that is gone already is fine.
pub fn remove(host: &Host, uuid: &str) -> Result<(), ManagedError> {
    let dev = host.mdev_device(uuid);
    if !dev.exists() {
        return Ok(());
    }
    host.write(&dev.join("remove"), "1")
        .map_err(|source| ManagedError::Host {
            what: format!("removing mdev {uuid}"),
            source,
        })?;
    tracing::info!("managed: removed mdev {uuid}");
    Ok(())
}

/// A new random (version 4) UUID, from the kernel's generator.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // Unique enough for one host without /dev/urandom: time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}
