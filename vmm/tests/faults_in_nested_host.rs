//! Faults and load, end to end in the nested test host (issue 12 item 3), with L2's
//! kernel as the judge:
//! - a hostile guest writes random bytes all over its passed-through NVMe's config space
//!   and BAR0 (`pci-bar hostile`, several seeds), then powers off: tessera ends with 0
//!   every time, does not keep logging failed BAR moves, and the NVMe works for the next
//!   guest;
//! - a guest hammering emulated registers (0xCF8/0xCFC config access to the host bridge,
//!   the serial port) does not starve the API: every `vmm.ping` and `vm.info` is
//!   answered, and `vm.shutdown`/`vmm.shutdown` end tessera with 0;
//! - tessera SIGKILLed in the middle of a hot-add (the `TESSERA_TEST_KILL_AT` points) or
//!   while a `vm.remove-device` waits for the guest's eject: the next tessera takes the
//!   same device at once, and `tessera --cleanup` finds nothing left.
//!
//! Every step in L1 runs under a bound; a step that outlives it is reported with what
//! each of its threads waits on in the kernel, then killed.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_device_report};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4";
const NVME_PATH: &str = "/sys/bus/pci/devices/0000:00:03.0";
/// Hostile runs in one L1 boot, each with its own seed.
const HOSTILE_SEEDS: [u32; 6] = [1, 2, 3, 4, 5, 6];
/// BAR0 writes per hostile run: 32 rounds (judge-init.sh) of 64 (pci-bar).
const HOSTILE_BAR_WRITES: u32 = 32 * 64;
/// Seconds any one tessera run may take before it counts as hung (a healthy one: a few).
const STEP_SECS: u32 = 60;
/// What the next start logs after a killed tessera that had bound the NVMe.
const ONE_UNDONE: &str = "1 change(s) of dead tessera processes undone, 0 failed";
/// What `tessera --cleanup` prints when nothing is left.
const NOTHING_LEFT: &str =
    "tessera --cleanup: 0 change(s) of dead tessera processes undone, 0 failed, 0 record(s)";

/// Shell helpers for every script.
///
/// `bounded LABEL SECS CMD...` runs CMD with its output in /run/tmp/LABEL.out and prints
/// `LABEL-exit=STATUS secs=S`; if CMD outlives SECS it first prints `LABEL-hung:` lines
/// (each thread's name, state, wait channel and kernel stack, and the output's tail),
/// then kills it. `state LABEL` prints `LABEL: nvme=DRIVER override=... records=N`.
/// `wait_for FILE TEXT` waits (60 s at most) for TEXT in FILE.
fn helpers() -> String {
    format!(
        r#". "$HOST{REPO}/scripts/l1-vfio.sh"
mkdir -p /run/tmp
uptime_s() {{ cut -d' ' -f1 /proc/uptime; }}
bounded() {{
  label=$1; secs=$2; shift 2
  t0=$(uptime_s)
  "$@" >/run/tmp/$label.out 2>&1 &
  p=$!
  n=0
  while kill -0 $p 2>/dev/null && [ $n -lt $((secs * 5)) ]; do sleep 0.2; n=$((n + 1)); done
  if kill -0 $p 2>/dev/null; then
    echo "$label-hung: still running after $secs s"
    for t in /proc/$p/task/*; do
      echo "$label-hung: thread $(cat $t/comm) $(grep '^State:' $t/status) wchan=$(cat $t/wchan)"
      sed "s/^/$label-hung:   /" $t/stack 2>/dev/null
    done
    tail -20 /run/tmp/$label.out | sed "s/^/$label-hung: out: /"
    kill -9 $p
  fi
  wait $p
  st=$?
  echo "$label-exit=$st secs=$(echo "$t0 $(uptime_s)" | awk '{{printf "%.1f", $2 - $1}}')"
}}
state() {{
  echo "$1: nvme=$(driver_of 0000:00:03.0) \
override=$(cat {NVME_PATH}/driver_override) \
records=$(ls /run/tessera 2>/dev/null | grep -c json)"
}}
wait_for() {{
  i=0
  while [ $i -lt 300 ] && ! grep -q "$2" $1; do sleep 0.2; i=$((i + 1)); done
  grep -q "$2" $1
}}
"#
    )
}

/// The tessera command line in L1: the judge's kernel and initramfs, `extra` added to
/// its command line, then `args`.
fn tessera(extra: &str, args: &str) -> String {
    let judge = images().unwrap();
    format!(
        "in-host {TESSERA} --kernel {} --initramfs {} --cmdline '{CMDLINE}{extra}' \
         --cpus boot=1 --memory size=512M {args}",
        judge.vmlinuz.display(),
        judge.initramfs.display()
    )
}

/// The NVMe, bound to vfio-pci by tessera and given back when it goes.
fn managed_nvme(id: &str) -> String {
    format!("--device id={id},path={NVME_PATH},managed=on")
}

/// L1 shell: a guest with the NVMe that reports its devices and powers off, as step
/// LABEL; then `LABEL-state`.
fn normal_guest(label: &str) -> String {
    format!(
        "echo '{label}-begin'\n\
         bounded {label} {STEP_SECS} {run}\n\
         cat /run/tmp/{label}.out\n\
         echo '{label}-end'\n\
         state {label}-state\n",
        run = tessera(" judge.devices=1", &managed_nvme("nvme0")),
    )
}

/// The value of the first whitespace-separated `key=value` word of `text`.
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    let needle = format!("{key}=");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(needle.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}

/// The rest of the first line starting with `label: `.
fn line<'a>(console: &'a str, label: &str) -> &'a str {
    let prefix = format!("{label}: ");
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no line {label}:\n{console}"))
}

fn section<'a>(console: &'a str, begin: &str, end: &str) -> &'a str {
    let start = console
        .find(begin)
        .unwrap_or_else(|| panic!("no {begin}:\n{console}"));
    let rest = &console[start..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// `LABEL-exit=STATUS secs=S` of step LABEL.
fn step_end<'a>(console: &'a str, label: &str) -> &'a str {
    let needle = format!("{label}-exit=");
    console
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(needle.as_str()))
        .unwrap_or_else(|| panic!("step {label} never ended:\n{console}"))
}

/// Step LABEL ended by itself (not killed as hung) with status 0.
fn assert_exited_0(console: &str, label: &str) {
    assert!(
        !console.contains(&format!("{label}-hung:")),
        "step {label} hung:\n{console}"
    );
    assert_eq!(value(console, &format!("{label}-exit")), "0", "{console}");
}

/// The normal guest of step LABEL: its nvme driver bound the NVMe and read back what it
/// wrote; L1 has the NVMe back without a driver, and no records.
fn assert_nvme_works(console: &str, label: &str) {
    assert_exited_0(console, label);
    let boot = section(console, &format!("{label}-begin"), &format!("{label}-end"));
    let d = parse_device_report(boot)
        .unwrap()
        .unwrap_or_else(|| panic!("{label}: no device report:\n{boot}"));
    let nvme = d.devices("nvme");
    assert_eq!(nvme.len(), 1, "{label}: {d:?}\n{boot}");
    assert_eq!(d.field("nvme", nvme[0], "driver"), Some("nvme"), "{d:?}");
    assert!(d.is_ok("nvme", nvme[0], "rw"), "{label}: {d:?}\n{boot}");
    assert_eq!(
        line(console, &format!("{label}-state")),
        "nvme=none override=(null) records=0",
        "{console}"
    );
}

#[test]
fn a_hostile_guest_scribbling_over_its_nvme_ends_cleanly_and_the_nvme_works_after() {
    let runs: String = HOSTILE_SEEDS
        .iter()
        .map(|seed| {
            let label = format!("hostile{seed}");
            format!(
                "bounded {label} {STEP_SECS} {run}\n\
                 echo \"{label}-lines: $(grep -c '' /run/tmp/{label}.out) \
                 moved-warnings=$(grep -c 'the guest moved a BAR' /run/tmp/{label}.out) \
                 no-bus-range=$(grep -c 'no bus range starts at' /run/tmp/{label}.out)\"\n\
                 grep -e judge-hostile -e WARN -e ERROR -e seccomp /run/tmp/{label}.out | head -40\n\
                 state {label}-state\n",
                run = tessera(
                    // iomem=relaxed: the guest kernel lets a program map BAR0 (its
                    // sysfs resource file) even while a driver holds it.
                    &format!(" iomem=relaxed judge.action=hostile judge.seed={seed}"),
                    &managed_nvme("nvme0")
                ),
            )
        })
        .collect();
    let script = format!(
        "{helpers}state before\n{runs}{normal}",
        helpers = helpers(),
        normal = normal_guest("after-hostile"),
    );
    let out = nested::run(&script, &[]).unwrap();
    let c = &out.console;
    assert_eq!(out.status, 0, "{c}");
    assert_eq!(
        line(c, "before"),
        "nvme=none override=(null) records=0",
        "{c}"
    );
    for seed in HOSTILE_SEEDS {
        let label = format!("hostile{seed}");
        assert_exited_0(c, &label);
        // The guest did its writes: every BAR0 write lands (a mapping); the kernel may
        // refuse some config writes.
        let did = c
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("judge-hostile: ")
                    .filter(|l| l.contains(&format!(" seed={seed} ")))
            })
            .unwrap_or_else(|| panic!("{label}: the guest wrote nothing:\n{c}"));
        assert!(
            did.contains(&format!("bar_writes={HOSTILE_BAR_WRITES} ")) && did.contains(" rc=0 "),
            "{label}: {did}\n{c}"
        );
        let writes: u64 = value(did, "config_writes").parse().unwrap();
        let counts = line(c, &format!("{label}-lines"));
        let count = |key: &str| -> u64 { value(counts, key).parse().unwrap() };
        assert_eq!(count("no-bus-range"), 0, "{label}: bookkeeping broke:\n{c}");
        // A refused move is warned about once per address, so never more often than
        // the guest wrote config space.
        assert!(count("moved-warnings") <= writes, "{label}: {counts}\n{c}");
        assert_eq!(
            line(c, &format!("{label}-state")),
            "nvme=none override=(null) records=0",
            "{label}: the NVMe must be given back:\n{c}"
        );
        eprintln!("{label}: {}; {did}; {counts}", step_end(c, &label));
    }
    let seeds: Vec<&str> = c
        .lines()
        .filter_map(|l| l.trim().strip_prefix("judge-hostile: "))
        .collect();
    assert_eq!(seeds.len(), HOSTILE_SEEDS.len(), "{c}");
    assert_nvme_works(c, "after-hostile");
}

/// `api-bench`, built beside tessera (`cargo test --workspace` builds it; or
/// `cargo build -p tessera-tests --bin api-bench`).
fn api_bench() -> std::path::PathBuf {
    let bench = std::path::Path::new(TESSERA).with_file_name("api-bench");
    assert!(
        bench.exists(),
        "{} is missing: cargo build -p tessera-tests --bin api-bench",
        bench.display()
    );
    bench
}

/// The `api-bench` line for `path` after `tag` on the console.
fn bench_line<'a>(console: &'a str, tag: &str, path: &str) -> &'a str {
    let rest = section(console, &format!("{tag}-begin"), &format!("{tag}-end"));
    rest.lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("api-bench GET /api/v1/{path} ")))
        .unwrap_or_else(|| panic!("{tag}: no api-bench line for {path}:\n{console}"))
}

/// Whether the VM was reset during the run: tessera logs every reboot at info, a triple
/// fault's and the guest's own reset alike (it keeps the KVM VM and makes new vCPUs).
fn vm_was_reset(console: &str) -> bool {
    console.contains("guest rebooting")
}

#[test]
fn a_guest_hammering_emulated_registers_does_not_starve_the_api() {
    let bench = api_bench();
    let run = tessera(" judge.action=console", "--api-socket /run/api.sock");
    // The VM's port-I/O exits, from KVM's counters in L1's debugfs: a count, which the
    // machine's load cannot skew (the vCPU thread's CPU ticks once went backwards here).
    let script = format!(
        r#"{helpers}
rm -f /run/tmp/in; mkfifo /run/tmp/in
TESSERA_LOG=info {run} </run/tmp/in >/run/tmp/hm.out 2>&1 &
pid=$!
exec 3>/run/tmp/in
wait_for /run/tmp/hm.out judge-boot-id= || {{ echo no-boot; cat /run/tmp/hm.out; exit 1; }}
boot=$(sed -n 's/^judge-boot-id=\([0-9a-f-]*\).*/\1/p' /run/tmp/hm.out | head -1)
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
io_exits() {{ cat /sys/kernel/debug/kvm/*-*/io_exits 2>/dev/null; }}
# The VM's port-I/O exits from start_count until /run/tmp/stop: the sum of the counter's
# rises, sampled every 0.2 s, so that a reset (new vCPUs, KVM's sum back near zero) does
# not make it negative.
count_exits() {{
  total=0; last=$(io_exits)
  while [ ! -e /run/tmp/stop ]; do
    sleep 0.2
    now=$(io_exits)
    if [ -n "$now" ] && [ -n "$last" ]; then
      if [ "$now" -ge "$last" ]; then total=$((total + now - last)); else total=$((total + now)); fi
    fi
    last=$now
  done
  echo "$total" >/run/tmp/exits
}}
start_count() {{ rm -f /run/tmp/stop /run/tmp/exits; count_exits & counter=$!; }}
# The API bench; then the exits counted since start_count.
bench() {{
  echo "$1-begin"
  in-host {bench} --socket /run/api.sock --path vmm.ping --path vm.info --seconds 3 --requests 100000000
  echo "$1-bench-exit=$?"
  touch /run/tmp/stop
  wait $counter
  echo "$1-io-exits=$(cat /run/tmp/exits)"
  echo "$1-end"
}}
start_count
bench idle
# Counted from the order on, so a guest reset early in the hammering still shows it ran.
start_count
echo "$boot hammer" >&3
wait_for /run/tmp/hm.out 'judge-order: hammer' || echo no-hammer-order
sleep 1
bench hammered
put() {{ echo "$1: $(in-host curl -s -m 60 -w '%{{http_code}}' --unix-socket /run/api.sock -X PUT http://localhost/api/v1/$1)"; }}
put vm.shutdown
put vmm.shutdown
exec 3>&-
n=0
while kill -0 $pid 2>/dev/null && [ $n -lt 300 ]; do sleep 0.2; n=$((n + 1)); done
kill -0 $pid 2>/dev/null && {{ echo "tessera-hung: still running"; kill -9 $pid; }}
wait $pid
echo "tessera-exit=$?"
grep -e '^judge-order' -e '^judge-boot-id' -e 'pci-bar' /run/tmp/hm.out
echo '=== tessera'
grep -v -e '^judge' -e '^dmesg:' /run/tmp/hm.out | tail -60
"#,
        helpers = helpers(),
        bench = bench.display(),
    );
    // Under the emulated SVM the hammering L2, with the API loaded at the same time, is
    // reset on its own in up to half the runs (a triple fault, or a reset it asked for
    // with nothing in its log), and L1's own kernel has overflowed its stack in its KVM
    // in about a third; neither the guest alone nor with busy loops in L1 ever did, under
    // tessera or QEMU. So L1 failing is retried up to twice, and a reset is this test's to
    // judge: tessera must live through it, and the exit count, a sum of the counter's
    // rises from the hammer order on, still shows the hammering before it.
    let out = nested::run_expecting_l2_resets(&script, &[]).unwrap();
    let c = &out.console;
    assert_eq!(out.status, 0, "{c}");
    if vm_was_reset(c) {
        eprintln!("the hammering guest was reset (emulated SVM); tessera rebooted it:\n{c}");
    }
    assert!(c.contains("judge-order: hammer"), "{c}");
    assert!(!c.contains("pci-bar:"), "the hammer loop failed:\n{c}");
    for tag in ["idle", "hammered"] {
        assert_eq!(value(c, &format!("{tag}-bench-exit")), "0", "{c}");
        for path in ["vmm.ping", "vm.info"] {
            let l = bench_line(c, tag, path);
            assert_eq!(value(l, "errors"), "0", "{l}");
            assert!(value(l, "requests").parse::<u64>().unwrap() > 0, "{l}");
            eprintln!("{tag}: {l}");
        }
        eprintln!(
            "{tag}: port-I/O exits {}",
            value(c, &format!("{tag}-io-exits"))
        );
    }
    // The guest's loop was running: it made at least a thousand more port-I/O exits from
    // the order to the end of the hammered bench than the idle guest did in its bench
    // (thousands a second, even in the nested host; an idle guest makes a few).
    let exits = |tag: &str| -> i64 { value(c, &format!("{tag}-io-exits")).parse().unwrap() };
    assert!(exits("hammered") > exits("idle") + 1000, "{c}");
    assert_eq!(line(c, "vm.shutdown"), "204", "{c}");
    assert_eq!(line(c, "vmm.shutdown"), "204", "{c}");
    assert!(!c.contains("tessera-hung"), "{c}");
    assert_eq!(value(c, "tessera-exit"), "0", "{c}");
}

/// Where tessera is killed on the hot-add path (`TESSERA_TEST_KILL_AT`, documented on
/// `tessera_vmm::managed::KILL_AT_ENV`): the NVMe bound to vfio-pci; guest RAM DMA-mapped
/// for the VM's first VFIO device; the device opened and mapped, the guest not yet told.
const HOT_ADD_KILL_POINTS: [&str; 3] = ["after-bind", "during-dma-map", "hot-add-before-notify"];

/// L1 shell, after a kill at step LABEL: the state left, a normal guest with the NVMe
/// (the next tessera), then `tessera --cleanup`.
fn after_kill(label: &str) -> String {
    format!(
        "state {label}-killed\n\
         {next}\
         in-host {TESSERA} --cleanup >/run/tmp/cleanup.out 2>&1\n\
         echo \"{label}-cleanup-exit=$?\"\n\
         sed 's/^/{label}-cleanup: /' /run/tmp/cleanup.out\n\
         state {label}-cleaned\n",
        next = normal_guest(&format!("{label}-next")),
    )
}

/// The console of a VM with an API socket at /run/LABEL.sock whose guest waits for
/// orders; `$pid` is tessera, fd 3 its console input. `env` goes before the command.
fn api_vm(label: &str, env: &str, extra: &str, args: &str) -> String {
    format!(
        "rm -f /run/tmp/in /run/{label}.sock; mkfifo /run/tmp/in\n\
         {env} {run} </run/tmp/in >/run/tmp/{label}.out 2>&1 &\n\
         pid=$!\n\
         exec 3>/run/tmp/in\n\
         wait_for /run/tmp/{label}.out judge-boot-id= || echo '{label}-no-boot'\n",
        run = tessera(
            &format!(" judge.action=console{extra}"),
            &format!("--api-socket /run/{label}.sock {args}")
        ),
    )
}

/// L1 shell: waits (60 s at most) for `$pid` to end, then prints `LABEL-exit=STATUS`.
fn wait_pid(label: &str) -> String {
    format!(
        "n=0\n\
         while kill -0 $pid 2>/dev/null && [ $n -lt 300 ]; do sleep 0.2; n=$((n + 1)); done\n\
         kill -0 $pid 2>/dev/null && {{ echo '{label}-hung: still running'; kill -9 $pid; }}\n\
         wait $pid\n\
         echo \"{label}-exit=$?\"\n\
         exec 3>&-\n"
    )
}

/// The checks after a kill at step LABEL: `left` in L1 right after; the next tessera
/// undid it first thing, took the NVMe, and its guest used it; nothing for --cleanup.
fn assert_taken_again(c: &str, label: &str) {
    assert_eq!(value(c, &format!("{label}-exit")), "137", "{label}:\n{c}");
    assert_eq!(
        line(c, &format!("{label}-killed")),
        "nvme=vfio-pci override=vfio-pci records=1",
        "{label}: the kill leaves the binding and its record:\n{c}"
    );
    let next = format!("{label}-next");
    assert_nvme_works(c, &next);
    let boot = section(c, &format!("{next}-begin"), &format!("{next}-end"));
    assert!(
        boot.contains(ONE_UNDONE),
        "{label}: the next start must undo the killed one's change:\n{boot}"
    );
    assert_eq!(value(c, &format!("{label}-cleanup-exit")), "0", "{c}");
    assert!(
        line(c, &format!("{label}-cleanup")).starts_with(NOTHING_LEFT),
        "{label}:\n{c}"
    );
    assert_eq!(
        line(c, &format!("{label}-cleaned")),
        "nvme=none override=(null) records=0",
        "{c}"
    );
    eprintln!("{label}: next {}", step_end(c, &next));
}

#[test]
fn kill_9_mid_hotplug_leaves_the_device_to_the_next_tessera_at_once() {
    let add = format!(r#"{{"id": "nvme9", "path": "{NVME_PATH}", "managed": true}}"#);
    let kills: String = HOT_ADD_KILL_POINTS
        .iter()
        .map(|point| {
            format!(
                "echo 'kill-at={point}'\n\
                 {vm}\
                 r=$(in-host curl -s -m 60 -w '%{{http_code}}' --unix-socket /run/{point}.sock \
                   -X PUT http://localhost/api/v1/vm.add-device -d '{add}')\n\
                 echo \"{point}-add: curl=$? code=$r\"\n\
                 {wait}\
                 grep TESSERA_TEST_KILL_AT /run/tmp/{point}.out\n\
                 {after}",
                vm = api_vm(point, &format!("TESSERA_TEST_KILL_AT={point}"), "", ""),
                wait = wait_pid(point),
                after = after_kill(point),
            )
        })
        .collect();
    // A guest without acpiphp never ejects: the removal waits for the whole bound.
    let removal = format!(
        "echo 'kill-at=removal'\n\
         {vm}\
         in-host curl -s -m 90 -w 'code=%{{http_code}}' --unix-socket /run/removal.sock \
           -X PUT http://localhost/api/v1/vm.remove-device -d '{{\"id\": \"nvme0\"}}' \
           >/run/tmp/removal.curl 2>&1 &\n\
         cpid=$!\n\
         wait_for /run/tmp/removal.out 'asked the guest to eject'\n\
         echo \"removal-asked=$?\"\n\
         sleep 1\n\
         echo \"removal-pending: $(kill -0 $cpid 2>/dev/null && echo yes || echo no)\"\n\
         kill -9 $pid\n\
         {wait}\
         wait $cpid\n\
         echo \"removal-answer: curl=$? $(cat /run/tmp/removal.curl)\"\n\
         {after}",
        vm = api_vm(
            "removal",
            "TESSERA_LOG=info",
            " acpiphp.disable=1",
            &format!("--eject-timeout 60 {}", managed_nvme("nvme0"))
        ),
        wait = wait_pid("removal"),
        after = after_kill("removal"),
    );
    let script = format!("{}{kills}{removal}", helpers());
    let out = nested::run(&script, &[]).unwrap();
    let c = &out.console;
    assert_eq!(out.status, 0, "{c}");
    for point in HOT_ADD_KILL_POINTS {
        assert!(!c.contains(&format!("{point}-no-boot")), "{point}:\n{c}");
        // The hot-add was never answered: tessera died under it.
        let add = line(c, &format!("{point}-add"));
        assert!(
            add.ends_with("code=000") && !add.starts_with("curl=0 "),
            "{point}: {add}"
        );
        assert!(
            c.contains(&format!(
                "TESSERA_TEST_KILL_AT={point}: killing this process"
            )),
            "{point}: not killed at its point:\n{c}"
        );
        assert_taken_again(c, point);
    }
    assert!(!c.contains("removal-no-boot"), "{c}");
    assert_eq!(value(c, "removal-asked"), "0", "{c}");
    assert_eq!(
        line(c, "removal-pending"),
        "yes",
        "the removal must still wait for the eject when tessera is killed:\n{c}"
    );
    let answer = line(c, "removal-answer");
    assert!(
        answer.ends_with("code=000") && !answer.starts_with("curl=0 "),
        "{answer}"
    );
    assert_taken_again(c, "removal");
}
