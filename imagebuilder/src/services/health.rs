//! Health and readiness, one implementation for both init systems: `/usr/lib/kiln/health`
//! (what "healthy" means: the restarted services up — and under systemd, no failed unit — plus
//! `update.health_checks`) and `/usr/lib/kiln/ready` (wait for health, reconcile and bless
//! through kiln-updater, print `kiln-ready`). Only the probe of "is this service up" differs:
//! busybox records pids, systemd knows its units.

use super::{all_services, containers, shell_quote, BakedImage, InitSystem};
use crate::spec::{Restart, Spec};

/// Seconds a systemd unit must have been active to count as up: a service that exits at once
/// and is restarted is briefly active again and again, never for this long.
pub const STABLE_SECS: u64 = 2;

/// The services whose being up is part of health (restarted ones; `never` ones run once).
fn watched(spec: &Spec) -> Vec<String> {
    all_services(spec)
        .iter()
        .filter(|s| s.restart == Restart::Always)
        .map(|s| s.name.clone())
        .collect()
}

fn probe(spec: &Spec, init: InitSystem, images: &[BakedImage]) -> String {
    let (running, markers) = containers::essential(spec, images);
    let names = watched(spec).join(" ");
    match init {
        InitSystem::Busybox => format!(
            r#"for s in {names}; do
  pid=$(cat "/run/kiln/svc/$s.pid" 2>/dev/null)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then down="$down $s"; fi
done
"#
        ),
        InitSystem::Systemd => format!(
            r#"now=$(cut -d. -f1 /proc/uptime)
for s in {names}; do
  st=; since=0
  for kv in $(systemctl show "$s.service" -p ActiveState -p ActiveEnterTimestampMonotonic 2>/dev/null); do
    case "$kv" in
      ActiveState=*) st="${{kv#*=}}" ;;
      ActiveEnterTimestampMonotonic=*) since="${{kv#*=}}" ;;
    esac
  done
  # Up: active, and for {STABLE_SECS} s at least (a crash loop is never up that long).
  if [ "$st" != active ] || [ $((since / 1000000 + {STABLE_SECS})) -gt "$now" ]; then down="$down $s"; fi
done
# An essential container runs: its task is RUNNING and its process is {STABLE_SECS} s old
# (the unit alone says little: `ctr run` is active for seconds before the task starts).
task_age() {{
  pid=$(printf '%s\n' "$tasks" | while read -r t p st; do [ "$t" = "$1" ] && [ "$st" = RUNNING ] && echo "$p"; done)
  [ -n "$pid" ] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  set -- ${{stat##*) }}
  echo $((now - ${{20}} / $(getconf CLK_TCK)))
}}
if [ -n "{running}" ]; then
  tasks=$(ctr -n {ns} task ls 2>/dev/null)
  for n in {running}; do
    age=$(task_age "$n") || age=-1
    [ "$age" -ge {STABLE_SECS} ] || down="$down container:$n"
  done
fi
# An essential container run once has succeeded (for this image).
for m in {markers}; do
  [ -e "$m" ] || down="$down ${{m##*/}}(once)"
done
# A failed unit makes the system degraded: not healthy.
for u in $(systemctl list-units --state=failed --plain --no-legend --no-pager 2>/dev/null | cut -d' ' -f1); do
  down="$down $u(failed)"
done
"#,
            markers = markers.join(" "),
            running = running.join(" "),
            ns = containers::NAMESPACE,
        ),
    }
}

/// Health check: exits 0 when every always-restarted service runs (systemd: and no unit
/// failed) and every declared `update.health_checks` command succeeds (`quiet`: no console
/// line).
pub fn health(spec: &Spec, init: InitSystem, images: &[BakedImage]) -> String {
    format!(
        r#"#!/bin/sh
# kiln health check ({init}): the services declared with restart = "always" are running.
down=""
{probe}if [ -n "$down" ]; then
  [ "$1" = quiet ] || echo "kiln-health: not running:$down" > /dev/console
  exit 1
fi
{checks}exit 0
"#,
        init = init.name(),
        probe = probe(spec, init, images),
        checks = spec
            .update
            .health_checks
            .iter()
            .map(|c| format!(
                "if ! ( {c} ) >/dev/null 2>&1; then [ \"$1\" = quiet ] || echo {msg} > /dev/console; exit 1; fi\n",
                msg = shell_quote(&format!("kiln-health: check failed: {c}"))
            ))
            .collect::<String>()
    )
}

/// Readiness in phases. `all` (busybox init): wait (up to `update.health_timeout_secs`) for the
/// health check; then, if the image has the updater, notice a rolled-back update and bless a
/// pending slot (a pending slot that is not healthy reboots, so the boot counter decides); then
/// print `kiln-ready`. Under systemd `kiln-reconcile.service` runs the reconcile early,
/// `kiln-mark-good.service` runs `ready mark-good` and `kiln-ready.service` `ready announce`.
pub fn ready(spec: &Spec, init: InitSystem) -> String {
    format!(
        r#"#!/bin/sh
# kiln readiness ({init}): ready [all|mark-good|announce]
. /usr/lib/kiln/release
phase="${{1:-all}}"
slot=unknown
for w in $(cat /proc/cmdline); do
  case "$w" in kiln.slot=*) slot="${{w#kiln.slot=}}";; esac
done
up=yes
if [ "$phase" != announce ]; then
  # A wall-clock deadline: one health check can take seconds (systemctl and ctr under TCG).
  deadline=$(( $(cut -d. -f1 /proc/uptime) + {secs} ))
  until /usr/lib/kiln/health quiet; do
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ]; then up=no; break; fi
    sleep 0.2
  done
  # A live network boot (kiln pxe) has no slots to reconcile or bless.
  if [ -x /usr/bin/kiln-updater ] && [ "$slot" != live ]; then
    [ "$phase" = all ] && /usr/bin/kiln-updater reconcile > /dev/console 2>&1
    /usr/bin/kiln-updater mark-good > /dev/console 2>&1
    if [ $? -eq 3 ]; then
      echo "kiln-not-ready: the pending slot is unhealthy; rebooting so the boot counter decides" > /dev/console
      sleep 2
      reboot
      exit 1
    fi
  fi
{feed}  [ "$phase" = mark-good ] && exit 0
else
  /usr/lib/kiln/health quiet || up=no
fi
if [ "$up" = no ]; then
  /usr/lib/kiln/health
  echo "kiln-not-ready: services not running after {secs} s" > /dev/console
  exit 1
fi
echo "kiln-ready slot=$slot version=$KILN_VERSION name=$KILN_NAME" > /dev/console
"#,
        init = init.name(),
        feed = match (init, spec.boot.watchdog_secs) {
            // Blessed (or good) and not rebooting: from now on busybox feeds the watchdog.
            // (systemd feeds it itself: RuntimeWatchdogSec.)
            (InitSystem::Busybox, Some(w)) =>
                format!("  watchdog -T {w} -t {} /dev/watchdog\n", (w / 4).max(1)),
            _ => String::new(),
        },
        secs = spec.update.health_timeout_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tests::spec;

    #[test]
    fn ready_waits_for_restarted_services_only() {
        let r = ready(&spec(false), InitSystem::Busybox);
        assert!(health(&spec(false), InitSystem::Busybox, &[]).contains("for s in cp; do"));
        let mut with_check = spec(false);
        with_check
            .update
            .health_checks
            .push("test -e /run/ok".into());
        for init in [InitSystem::Busybox, InitSystem::Systemd] {
            let h = health(&with_check, init, &[]);
            assert!(
                h.contains("if ! ( test -e /run/ok ) >/dev/null 2>&1; then"),
                "{h}"
            );
            assert!(
                h.contains("'kiln-health: check failed: test -e /run/ok'"),
                "{h}"
            );
        }
        assert!(r.contains("until /usr/lib/kiln/health quiet; do"));
        assert!(
            r.contains("deadline=$(( $(cut -d. -f1 /proc/uptime) + 120 ))"),
            "120 s of wall-clock time: {r}"
        );
        assert!(r.contains("kiln-ready slot=$slot version=$KILN_VERSION"));
    }

    #[test]
    fn systemd_health_asks_systemd_and_counts_failed_units() {
        let h = health(&spec(false), InitSystem::Systemd, &[]);
        assert!(h.contains("for s in cp; do"), "{h}");
        assert!(h.contains(r#"systemctl show "$s.service""#), "{h}");
        assert!(h.contains("--state=failed"), "{h}");
        assert!(!h.contains("/run/kiln/svc"), "{h}");
    }

    #[test]
    fn the_watchdog_is_fed_by_busybox_only() {
        let mut s = spec(false);
        s.boot.watchdog_secs = Some(200);
        assert!(ready(&s, InitSystem::Busybox).contains("watchdog -T 200 -t 50 /dev/watchdog"));
        assert!(!ready(&s, InitSystem::Systemd).contains("watchdog"));
    }
}
