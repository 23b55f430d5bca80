//! Cloud Hypervisor's own configurations (`tests/fixtures/cloud-hypervisor/`, made by
//! running CH) load, validate and round-trip, and Tessera writes every field CH wrote,
//! at CH's value. Each CH field Tessera cannot honour is accepted at CH's default and
//! refused at any other value with a `ConfigError` naming it; CH's option-string keys
//! for the same fields parse to the same configuration, with the same refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use serde_json::{json, Value};
use tessera_api::config::VmConfig;
use tessera_api::options::{
    parse_cpus, parse_device, parse_memory, parse_memory_zone, parse_platform,
};
use tessera_api::types::VmInfo;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/cloud-hypervisor/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn parse(v: &Value) -> VmConfig {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

/// Every leaf of `ch` (a key path and its value) is in `ours` with the same value;
/// returns the key paths `ours` has that `ch` does not.
fn contains(ch: &Value, ours: &Value, at: &str, extra: &mut Vec<String>) {
    match (ch, ours) {
        (Value::Object(c), Value::Object(o)) => {
            for (k, v) in c {
                let at = format!("{at}.{k}");
                let theirs = o.get(k).unwrap_or_else(|| panic!("{at}: missing"));
                contains(v, theirs, &at, extra);
            }
            extra.extend(
                o.keys()
                    .filter(|k| !c.contains_key(*k))
                    .map(|k| format!("{at}.{k}")),
            );
        }
        (Value::Array(c), Value::Array(o)) => {
            assert_eq!(c.len(), o.len(), "{at}");
            for (i, (c, o)) in c.iter().zip(o).enumerate() {
                contains(c, o, &format!("{at}[{i}]"), extra);
            }
        }
        _ => assert_eq!(ch, ours, "{at}"),
    }
}

#[test]
fn chs_configurations_load_validate_and_are_written_back_as_ch_wrote_them() {
    // What Tessera writes beyond CH: `platform`, which CH leaves out when it was not
    // given and Tessera always writes (with CH's defaults).
    for (name, tessera_adds) in [
        ("minimal.json", vec![".platform"]),
        ("rich.json", vec![]),
        ("honoured.json", vec![]),
    ] {
        let ch = fixture(name);
        let config = parse(&ch);
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = serde_json::to_value(&config).unwrap();
        let mut extra = Vec::new();
        contains(&ch, &ours, "", &mut extra);
        assert_eq!(extra, tessera_adds, "{name}");
        // What Tessera wrote loads to the same configuration.
        assert_eq!(parse(&ours), config, "{name}");
        if ch.get("platform").is_none() {
            assert_eq!(
                ours["platform"],
                json!({"num_pci_segments": 1, "iommu_address_width_bits": 64,
                       "iommufd": false, "vfio_p2p_dma": true}),
                "{name}: platform, at CH's defaults"
            );
        }
    }
}

#[test]
fn a_configuration_as_a_ch_user_writes_it_is_filled_in_as_ch_fills_it() {
    let user = fixture("user.json");
    let config = parse(&user);
    config.validate().unwrap();
    assert_eq!(parse(&serde_json::to_value(&config).unwrap()), config);
    // Every field CH reports for a configuration is reported for this one, with
    // CH's defaults where the user gave nothing.
    let ours = serde_json::to_value(&config).unwrap();
    let mut ch = fixture("minimal.json");
    ch["cpus"]["boot_vcpus"] = json!(2);
    ch["cpus"]["max_vcpus"] = json!(2);
    ch["payload"] = user["payload"].clone();
    ch["serial"] = json!({"mode": "Tty"});
    ch["console"] = json!({"mode": "Off", "pci_segment": 0});
    let mut extra = Vec::new();
    contains(&ch, &ours, "", &mut extra);
    assert_eq!(extra, [".platform"]);
}

#[test]
fn chs_vm_info_answer_reads_as_tessera_vm_info() {
    let answer = fixture("vm-info-minimal.json");
    let info: VmInfo = serde_json::from_value(answer.clone()).unwrap();
    assert_eq!(info.memory_actual_size, Some(512 << 20));
    assert_eq!(info.config, parse(&fixture("minimal.json")));
    // And Tessera's answer has every key CH's has.
    let ours = serde_json::to_value(&info).unwrap();
    for k in answer.as_object().unwrap().keys() {
        assert!(ours.get(k).is_some(), "{k}");
    }
}

/// Sets `value` at the JSON pointer `ptr` in `v`, making the objects on the way.
fn set(v: &mut Value, ptr: &str, value: Value) {
    let mut at = v;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        at = match at {
            Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            Value::Object(o) => {
                if last {
                    o.insert((*p).to_owned(), value);
                    return;
                }
                o.entry(*p).or_insert_with(|| json!({}))
            }
            other => panic!("{ptr}: {other} is not a container"),
        };
        if last {
            *at = value;
            return;
        }
    }
}

/// (fixture, JSON pointer, CH's default (accepted), a value Tessera refuses, the field
/// the refusal names, whether the message must say what Tessera does instead).
type Row = (&'static str, &'static str, Value, Value, &'static str, bool);

fn refusals() -> Vec<Row> {
    let m = "minimal.json";
    let r = "rich.json";
    let mut rows: Vec<Row> = vec![
        // cpus
        (
            m,
            "/cpus/topology",
            Value::Null,
            json!({"threads_per_core": 2, "cores_per_die": 1, "dies_per_package": 1, "packages": 1}),
            "cpus.topology",
            true,
        ),
        (
            m,
            "/cpus/kvm_hyperv",
            json!(false),
            json!(true),
            "cpus.kvm_hyperv",
            true,
        ),
        (
            m,
            "/cpus/features/amx",
            json!(false),
            json!(true),
            "cpus.features.amx",
            true,
        ),
        (
            m,
            "/cpus/core_scheduling",
            json!("Vm"),
            json!("Vcpu"),
            "cpus.core_scheduling",
            true,
        ),
        // memory
        (
            m,
            "/memory/hotplug_method",
            json!("Acpi"),
            json!("VirtioMem"),
            "memory.hotplug_method",
            true,
        ),
        (
            m,
            "/memory/hotplug_size",
            Value::Null,
            json!(1u64 << 30),
            "memory.hotplug_size",
            true,
        ),
        (
            m,
            "/memory/hotplugged_size",
            json!(0),
            json!(1u64 << 30),
            "memory.hotplugged_size",
            true,
        ),
        (
            r,
            "/memory/zones/1/file",
            Value::Null,
            json!("/dev/shm/m1"),
            "memory.zones[1].file",
            true,
        ),
        (
            r,
            "/memory/zones/0/hotplug_size",
            Value::Null,
            json!(1u64 << 30),
            "memory.zones[0].hotplug_size",
            true,
        ),
        (
            r,
            "/memory/zones/1/hotplugged_size",
            Value::Null,
            json!(1u64 << 30),
            "memory.zones[1].hotplugged_size",
            true,
        ),
        // payload
        (
            m,
            "/payload/firmware",
            Value::Null,
            json!("/fw/hypervisor-fw"),
            "payload.firmware",
            true,
        ),
        (
            m,
            "/payload/igvm",
            Value::Null,
            json!("/fw/x.igvm"),
            "payload.igvm",
            true,
        ),
        (
            m,
            "/payload/host_data",
            Value::Null,
            json!("00"),
            "payload.host_data",
            true,
        ),
        (
            m,
            "/payload/fw_cfg_config",
            Value::Null,
            json!({}),
            "payload.fw_cfg_config",
            true,
        ),
        // rng, console, debug console
        (
            m,
            "/rng/src",
            json!("/dev/urandom"),
            json!("/dev/random"),
            "rng.src",
            true,
        ),
        (
            m,
            "/rng/iommu",
            json!(false),
            json!(true),
            "rng.iommu",
            true,
        ),
        (m, "/rng/id", Value::Null, json!("rng0"), "rng.id", true),
        (
            m,
            "/rng/pci_segment",
            json!(0),
            json!(1),
            "rng.pci_segment",
            true,
        ),
        (
            m,
            "/rng/pci_device_id",
            Value::Null,
            json!(3),
            "rng.pci_device_id",
            true,
        ),
        (
            m,
            "/console/mode",
            json!("Tty"),
            json!("Pty"),
            "console.mode",
            true,
        ),
        (
            m,
            "/console/mode",
            json!("Off"),
            json!("File"),
            "console.mode",
            true,
        ),
        (
            m,
            "/console/mode",
            json!("Null"),
            json!("Socket"),
            "console.mode",
            true,
        ),
        (
            m,
            "/console/file",
            Value::Null,
            json!("/tmp/console"),
            "console.file",
            true,
        ),
        (
            m,
            "/console/socket",
            Value::Null,
            json!("/tmp/console.sock"),
            "console.socket",
            true,
        ),
        (
            m,
            "/console/iommu",
            json!(false),
            json!(true),
            "console.iommu",
            true,
        ),
        (
            m,
            "/console/id",
            Value::Null,
            json!("con0"),
            "console.id",
            true,
        ),
        (
            m,
            "/console/pci_segment",
            json!(0),
            json!(1),
            "console.pci_segment",
            true,
        ),
        (
            m,
            "/console/pci_device_id",
            Value::Null,
            json!(2),
            "console.pci_device_id",
            true,
        ),
        (
            m,
            "/debug_console/mode",
            json!("Off"),
            json!("Tty"),
            "debug_console.mode",
            true,
        ),
        (
            m,
            "/debug_console/file",
            Value::Null,
            json!("/tmp/dbg"),
            "debug_console.file",
            true,
        ),
        // devices
        (
            r,
            "/devices/0/iommu",
            json!(false),
            json!(true),
            "devices[0].iommu",
            true,
        ),
        (
            r,
            "/devices/0/fd",
            Value::Null,
            json!(3),
            "devices[0].fd",
            true,
        ),
        (
            r,
            "/devices/0/x_nv_gpudirect_clique",
            Value::Null,
            json!(0),
            "devices[0].x_nv_gpudirect_clique",
            true,
        ),
        (
            r,
            "/devices/0/x_exclude_mmap_bars",
            json!([]),
            json!([0, 6]),
            "devices[0].x_exclude_mmap_bars[1]",
            false,
        ),
        // platform
        (
            r,
            "/platform/iommu_segments",
            json!([]),
            json!([1]),
            "platform.iommu_segments",
            true,
        ),
        (
            r,
            "/platform/iommu_address_width_bits",
            json!(64),
            json!(48),
            "platform.iommu_address_width_bits",
            true,
        ),
        (
            r,
            "/platform/oem_strings",
            json!([]),
            json!(["a"]),
            "platform.oem_strings",
            true,
        ),
        (
            r,
            "/platform/serial_number",
            Value::Null,
            json!("s"),
            "platform.system_serial_number",
            true,
        ),
        (
            r,
            "/platform/uuid",
            Value::Null,
            json!("u"),
            "platform.system_uuid",
            true,
        ),
        (
            r,
            "/platform/tdx",
            json!(false),
            json!(true),
            "platform.tdx",
            true,
        ),
        (
            r,
            "/platform/sev_snp",
            json!(false),
            json!(true),
            "platform.sev_snp",
            true,
        ),
        (
            r,
            "/platform/iommufd",
            json!(false),
            json!(true),
            "platform.iommufd",
            true,
        ),
        (
            r,
            "/platform/iommufd_fd",
            Value::Null,
            json!(5),
            "platform.iommufd_fd",
            true,
        ),
        (
            r,
            "/platform/vfio_p2p_dma",
            json!(true),
            json!(false),
            "platform.vfio_p2p_dma",
            true,
        ),
        // pci_segments: equal weights are Tessera's even split; others are not.
        (
            r,
            "/pci_segments",
            json!([{"pci_segment": 1}]),
            json!([{"pci_segment": 1, "mmio64_aperture_weight": 3}]),
            "pci_segments[0].mmio64_aperture_weight",
            true,
        ),
        (
            r,
            "/pci_segments",
            json!([{"pci_segment": 0, "mmio32_aperture_weight": 4}, {"pci_segment": 1, "mmio32_aperture_weight": 4}]),
            json!([{"pci_segment": 2}]),
            "pci_segments[0].pci_segment",
            false,
        ),
        (
            r,
            "/pci_segments",
            json!([]),
            json!([{"pci_segment": 0, "mmio32_aperture_weight": 0}]),
            "pci_segments[0].mmio32_aperture_weight",
            false,
        ),
        // top-level switches
        (m, "/pvpanic", json!(false), json!(true), "pvpanic", true),
        (m, "/iommu", json!(false), json!(true), "iommu", true),
        (m, "/watchdog", json!(false), json!(true), "watchdog", true),
        (m, "/gdb", json!(false), json!(true), "gdb", true),
        (
            m,
            "/landlock_enable",
            json!(false),
            json!(true),
            "landlock_enable",
            true,
        ),
        (
            m,
            "/preserved_fds",
            json!([]),
            json!([3]),
            "preserved_fds",
            true,
        ),
    ];
    for name in [
        "platform/system_serial_number",
        "platform/system_uuid",
        "platform/system_manufacturer",
        "platform/system_product_name",
        "platform/system_version",
        "platform/system_family",
        "platform/system_sku_number",
        "platform/chassis_asset_tag",
    ] {
        let field: &'static str = Box::leak(name.replace('/', ".").into_boxed_str());
        let ptr: &'static str = Box::leak(format!("/{name}").into_boxed_str());
        rows.push((r, ptr, Value::Null, json!("x"), field, true));
    }
    // Devices Tessera does not have: an empty list (or null) only.
    for (name, entry) in [
        (
            "rate_limit_groups",
            json!({"id": "g0", "rate_limiter_config": {}}),
        ),
        ("disks", json!({"path": "/disk.img"})),
        ("net", json!({"tap": "tap0"})),
        (
            "generic_vhost_user",
            json!({"socket": "/v", "queue_sizes": [256], "device_type": 1}),
        ),
        ("fs", json!({"tag": "t", "socket": "/fs.sock"})),
        ("pmem", json!({"file": "/pmem"})),
        ("user_devices", json!({"socket": "/u.sock"})),
        ("vdpa", json!({"path": "/dev/vhost-vdpa-0"})),
        ("landlock_rules", json!({"path": "/", "access": "r"})),
    ] {
        let ptr: &'static str = Box::leak(format!("/{name}").into_boxed_str());
        rows.push((m, ptr, json!([]), json!([entry]), &ptr[1..], true));
    }
    for (name, object) in [
        ("balloon", json!({"size": 0})),
        ("vsock", json!({"cid": 3, "socket": "/vsock"})),
        ("pvmemcontrol", json!({})),
        ("rtc", json!({})),
        ("tpm", json!({"socket": "/tpm.sock"})),
        ("ivshmem", json!({"path": "/shm", "size": 1048576})),
    ] {
        let ptr: &'static str = Box::leak(format!("/{name}").into_boxed_str());
        rows.push((m, ptr, Value::Null, object, &ptr[1..], true));
    }
    rows
}

#[test]
fn every_ch_field_tessera_cannot_honour_is_accepted_at_its_default_and_refused_otherwise() {
    let rows = refusals();
    assert!(rows.len() >= 76, "{}", rows.len());
    for (file, ptr, default, refused, field, says_instead) in rows {
        let mut v = fixture(file);
        set(&mut v, ptr, default.clone());
        parse(&v)
            .validate()
            .unwrap_or_else(|e| panic!("{ptr} = {default}: refused: {e}"));
        // null, the other form of "none", is accepted too.
        if default.is_array() {
            set(&mut v, ptr, Value::Null);
            parse(&v).validate().unwrap();
        }
        set(&mut v, ptr, refused.clone());
        let e = parse(&v)
            .validate()
            .expect_err(&format!("{ptr} = {refused} is accepted"));
        assert_eq!(e.field, field, "{ptr} = {refused}: {e}");
        assert!(!e.message.is_empty());
        if says_instead {
            assert!(e.message.contains("Tessera"), "{ptr}: {}", e.message);
        }
    }
}

#[test]
fn the_fields_tessera_honours_are_accepted_away_from_chs_default() {
    let h = parse(&fixture("honoured.json"));
    h.validate().unwrap();
    assert_eq!(
        (h.cpus.max_phys_bits, h.cpus.nested),
        (40, false),
        "honoured.json as CH wrote it"
    );
    assert!(h.memory.mergeable && h.memory.reserve && !h.memory.thp);
    assert_eq!(h.devices[0].x_exclude_mmap_bars, [2]);
    // Tessera's topology, spelled out, for any vCPU count.
    let mut c = parse(&fixture("minimal.json"));
    c.cpus.boot_vcpus = 6;
    c.cpus.max_vcpus = 6;
    c.cpus.topology = Some(tessera_api::config::CpuTopology {
        threads_per_core: 1,
        cores_per_die: 6,
        dies_per_package: 1,
        packages: 1,
    });
    c.validate().unwrap();
    c.cpus.core_scheduling = tessera_api::config::CoreScheduling::Off;
    c.validate().unwrap();
    // The debug console's port places nothing when it is off.
    c.debug_console.iobase = Some(0x402);
    c.validate().unwrap();
    // vCPU pinning, as CH's option writes it.
    c.cpus = parse_cpus("boot=6,affinity=[0@[2-3],5@[0]]").unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.cpus.affinity.as_deref().unwrap()[0],
        tessera_api::config::CpuAffinity {
            vcpu: 0,
            host_cpus: vec![2, 3]
        }
    );
}

#[test]
fn affinity_is_refused_by_field_for_a_missing_or_repeated_vcpu_or_no_host_cpu() {
    let base = parse(&fixture("minimal.json"));
    for (cpus, field, message) in [
        (
            "boot=2,affinity=[2@[0]]",
            "cpus.affinity[0].vcpu",
            "vCPU 2 does not exist (max_vcpus is 2)",
        ),
        (
            "boot=2,affinity=[0@[0],1@[1],0@[1]]",
            "cpus.affinity[2].vcpu",
            "vCPU 0 is already pinned by cpus.affinity[0]",
        ),
        (
            "boot=1,affinity=[0@[1024]]",
            "cpus.affinity[0].host_cpus",
            "host CPU 1024 is beyond the 1024 a CPU set holds",
        ),
    ] {
        let mut c = base.clone();
        c.cpus = parse_cpus(cpus).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            (field, message),
            "{cpus}"
        );
    }
    let mut c = base.clone();
    c.cpus.affinity = Some(vec![tessera_api::config::CpuAffinity {
        vcpu: 0,
        host_cpus: vec![],
    }]);
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "cpus.affinity[0].host_cpus");
    assert_eq!(e.message, "must name at least one host CPU");
}

#[test]
fn chs_option_keys_give_the_configuration_ch_wrote() {
    let honoured = parse(&fixture("honoured.json"));
    assert_eq!(
        parse_cpus("boot=2,max_phys_bits=40,nested=off,core_scheduling=off,topology=1:2:1:1")
            .unwrap(),
        honoured.cpus
    );
    assert_eq!(
        parse_memory("size=512M,mergeable=on,reserve=on,thp=off").unwrap(),
        honoured.memory
    );
    assert_eq!(
        parse_device(
            "path=/sys/bus/pci/devices/0000:00:04.0,id=nic0,pci_segment=1,pci_device_id=0,x_exclude_mmap_bars=[2]"
        )
        .unwrap(),
        honoured.devices[0]
    );
    assert_eq!(
        parse_platform("num_pci_segments=2").unwrap(),
        honoured.platform
    );
    let rich = parse(&fixture("rich.json"));
    assert_eq!(
        parse_memory_zone("id=m1,size=256M,host_numa_node=0").unwrap(),
        rich.memory.zones[1]
    );
    let minimal = parse(&fixture("minimal.json"));
    // CH's defaults, spelled out with CH's keys.
    assert_eq!(
        parse_cpus(
            "boot=1,max=1,kvm_hyperv=off,max_phys_bits=46,nested=on,core_scheduling=vm,profile=host,features=[]"
        )
        .unwrap(),
        minimal.cpus
    );
    assert_eq!(
        parse_memory(
            "size=512M,mergeable=off,hotplug_method=acpi,shared=off,hugepages=off,prefault=off,reserve=off,thp=on"
        )
        .unwrap(),
        minimal.memory
    );
    assert_eq!(
        parse_platform(
            "num_pci_segments=1,iommu_address_width=64,iommufd=off,vfio_p2p_dma=on,iommu_segments=[],oem_strings=[]"
        )
        .unwrap()
        .check_supported(),
        Ok(())
    );
    assert_eq!(
        parse_device("path=/x,iommu=off,x_exclude_mmap_bars=[0-1,4]")
            .unwrap()
            .x_exclude_mmap_bars,
        [0, 1, 4]
    );
}

#[test]
fn chs_option_keys_are_refused_as_the_api_refuses_them() {
    type Parse = fn(&str) -> Result<(), tessera_api::options::OptionError>;
    let cpus: Parse = |s| parse_cpus(s).map(drop);
    let memory: Parse = |s| parse_memory(s).map(drop);
    let zone: Parse = |s| parse_memory_zone(s).map(drop);
    let device: Parse = |s| parse_device(s).map(drop);
    let platform: Parse = |s| parse_platform(s).map(drop);
    for (parse, s, key) in [
        (cpus, "kvm_hyperv=on", "kvm_hyperv"),
        (cpus, "boot=2,topology=2:1:1:1", "topology"),
        (cpus, "boot=2,topology=1:2:1", "topology"),
        (cpus, "features=amx", "features"),
        (cpus, "features=[sse]", "features"),
        (cpus, "affinity=[0-1]", "affinity"),
        (cpus, "core_scheduling=vcpu", "core_scheduling"),
        (cpus, "core_scheduling=always", "core_scheduling"),
        (cpus, "profile=skylake", "profile"),
        (cpus, "nested=maybe", "nested"),
        (memory, "hotplug_method=virtio-mem", "hotplug_method"),
        (memory, "hotplug_size=1G", "hotplug_size"),
        (memory, "hotplugged_size=1G", "hotplugged_size"),
        (memory, "thp=sometimes", "thp"),
        (zone, "id=m0,size=1G,file=/dev/shm/m0", "file"),
        (zone, "id=m0,size=1G,hotplug_size=1G", "hotplug_size"),
        (device, "path=/x,iommu=on", "iommu"),
        (device, "fd=3", "fd"),
        (
            device,
            "path=/x,x_nv_gpudirect_clique=0",
            "x_nv_gpudirect_clique",
        ),
        (
            device,
            "path=/x,x_exclude_mmap_bars=[7]",
            "x_exclude_mmap_bars",
        ),
        (platform, "iommu_address_width=48", "iommu_address_width"),
        (platform, "serial_number=abc", "serial_number"),
        (platform, "system_uuid=u", "system_uuid"),
        (platform, "uuid=u", "uuid"),
        (platform, "system_manufacturer=m", "system_manufacturer"),
        (platform, "oem_strings=[a,b]", "oem_strings"),
        (platform, "iommu_segments=[0]", "iommu_segments"),
        (platform, "iommufd=on", "iommufd"),
        (platform, "iommufd_fd=4", "iommufd_fd"),
        (platform, "vfio_p2p_dma=off", "vfio_p2p_dma"),
        (platform, "tdx=on", "tdx"),
        (platform, "sev_snp=on", "sev_snp"),
    ] {
        let e = parse(s).expect_err(s);
        assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
        assert!(e.message.starts_with(&format!("{key}: ")), "{s}: {e}");
    }
}

#[test]
fn null_lists_are_empty_lists_as_in_ch() {
    // CH's lists are Options: null is "none", and CH's clients send it.
    let c = parse(&json!({
        "payload": {"kernel": "/k"},
        "memory": {"size": 536870912, "zones": null},
        "devices": null,
        "numa": null,
        "generic_initiators": null
    }));
    c.validate().unwrap();
    assert!(c.devices.is_empty() && c.numa.is_empty() && c.memory.zones.is_empty());
    let n: tessera_api::config::NumaConfig = serde_json::from_value(json!({
        "guest_numa_id": 0, "cpus": null, "distances": null, "memory_zones": null,
        "pci_segments": null
    }))
    .unwrap();
    assert_eq!(
        n,
        serde_json::from_value(json!({"guest_numa_id": 0})).unwrap()
    );
    let d: tessera_api::config::DeviceConfig =
        serde_json::from_value(json!({"path": "/p", "x_exclude_mmap_bars": null})).unwrap();
    assert_eq!(d, tessera_api::config::DeviceConfig::new("/p"));
}
