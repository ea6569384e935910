//! The interlocks: each test fails if its interlock is removed.

use super::*;

/// Heats manually, then lets `fault` happen; checks the trip: B+0 at once, program ended,
/// `fault` event, and a start command refused while it holds.
fn assert_trips(rig: &mut Rig, fault: Fault) {
    let reason = TripReason::Fault(fault);
    assert!(rig.has_event(&Event::Fault { reason }), "{:?}", rig.events);
    assert_eq!(rig.status().mode, Mode::Off);
    assert!(!rig.core.relay_on, "the core commands the heater off");
    assert_eq!(rig.status().last_fault.map(|(r, _)| r), Some(reason));
}

fn heating_rig() -> Rig {
    let mut rig = Rig::new(limits());
    rig.temp = Some(60.0);
    rig.run_for(secs(1));
    rig.request(Request::Heater(true)).unwrap();
    rig.run_for(secs(1));
    rig
}

#[test]
fn interlock_link_down() {
    let mut rig = heating_rig();
    rig.core.handle_link(rig.now, false);
    rig.drain();
    assert_trips(&mut rig, Fault::LinkDown);
    assert!(rig.status().faults.contains(Fault::LinkDown));
    let err = rig.request(Request::Heater(true)).unwrap_err();
    assert!(err.reason.starts_with("link_down"));
    let sent = rig.sent.len();
    rig.run_for(secs(5));
    assert_eq!(
        rig.sent.len(),
        sent,
        "nothing is written while the link is down"
    );
}

#[test]
fn interlock_stale_telemetry() {
    let mut rig = heating_rig();
    rig.mute = true;
    let muted_at = rig.at();
    rig.run_for(secs(4));
    assert_trips(&mut rig, Fault::StaleTelemetry);
    let tripped_at = rig.first_event_at("fault");
    assert!(tripped_at - muted_at <= secs(3));
    assert!(rig.request(Request::Heater(true)).is_err());
    // Keeps polling so the controller can come back; recovers when it answers.
    rig.mute = false;
    rig.run_for(secs(2));
    assert!(!rig.status().faults.contains(Fault::StaleTelemetry));
    rig.request(Request::Heater(true)).unwrap();
}

#[test]
fn interlock_sensor_error_on_every_sentinel_and_out_of_range() {
    for bad in [None, Some(-40.0), Some(130.0)] {
        let mut rig = heating_rig();
        rig.temp = bad;
        rig.run_for(secs(1));
        assert_trips(&mut rig, Fault::SensorError);
        assert_eq!(rig.status().temperature_c, None);
        assert!(rig.request(Request::KeepWarm(true)).is_err());
    }
}

#[test]
fn interlock_overtemp_is_latched_until_a_new_start() {
    let mut rig = heating_rig();
    rig.temp = Some(110.0);
    rig.run_for(secs(1));
    assert_trips(&mut rig, Fault::Overtemp);
    rig.temp = Some(100.0);
    rig.run_for(secs(10));
    assert!(rig.status().faults.contains(Fault::Overtemp), "latched");
    assert!(!rig.relay);
    // Refused while it is still too hot…
    rig.temp = Some(115.0);
    rig.run_for(secs(1));
    assert!(rig.request(Request::Heater(true)).is_err());
    // …accepted once it cooled: the start clears the latch.
    rig.temp = Some(90.0);
    rig.run_for(secs(1));
    rig.request(Request::Heater(true)).unwrap();
    assert!(!rig.status().faults.contains(Fault::Overtemp));
    assert!(rig.relay);
}

#[test]
fn interlock_dry_boil_fast_rise_above_90() {
    let mut rig = heating_rig();
    rig.temp = Some(80.0);
    rig.heat_rate = 2.0;
    rig.run_for(secs(12));
    assert_trips(&mut rig, Fault::DryBoil);
    let t = rig.status().temperature_c.unwrap();
    assert!(t < 110.0, "tripped by the rise, not the max ({t})");
}

#[test]
fn slow_rise_above_90_is_not_a_dry_boil() {
    let mut rig = heating_rig();
    rig.temp = Some(80.0);
    rig.heat_rate = 1.0;
    rig.run_for(secs(20));
    assert!(rig.status().temperature_c.unwrap() > 95.0);
    assert_eq!(rig.status().mode, Mode::Manual);
    assert!(rig.relay);
}

#[test]
fn interlock_heater_mismatch_stuck_relay() {
    let mut rig = heating_rig();
    rig.stuck = true;
    rig.request(Request::Heater(false)).unwrap();
    rig.run_for(secs(1));
    assert!(rig.has_event(&Event::Fault {
        reason: Fault::HeaterMismatch.into()
    }));
    assert!(rig.status().faults.contains(Fault::HeaterMismatch));
    assert!(rig.request(Request::Heater(true)).is_err());
    // Keeps telling the controller B+0, at the feed interval.
    let n = rig.sent.len();
    rig.run_for(secs(1));
    assert!(rig.sent[n..].iter().all(|(_, c)| *c == Command::HeaterOff));
    assert!(rig.sent.len() - n >= 4);
}

#[test]
fn interlock_max_heater_on_in_a_brew() {
    let mut rig = Rig::new(Limits {
        max_heater_on: secs(60),
        ..limits()
    });
    rig.request(Request::BrewStart { cups: Some(12) }).unwrap();
    rig.run_for(secs(61));
    assert!(rig.has_event(&Event::HeaterAutoOff { after_s: 60.0 }));
    assert!(rig.has_event(&Event::BrewAborted {
        cups: 12,
        reason: "max_heater_on"
    }));
    assert!(!rig.relay);
}

#[test]
fn controller_reboot_ends_the_program_and_never_re_enables() {
    let mut rig = Rig::new(limits());
    rig.request(Request::BrewStart { cups: None }).unwrap();
    rig.run_for(secs(2));
    rig.relay = false;
    rig.core.handle_banner(rig.now, "MrCoffeeBot v2.0");
    rig.drain();
    let at = rig.at();
    assert!(rig.has_event(&Event::ControllerRebooted { count: 1 }));
    assert!(rig.has_event(&Event::BrewAborted {
        cups: 4,
        reason: "controller_rebooted"
    }));
    rig.run_for(secs(30));
    assert_eq!(rig.feeds_after(at), 0);
    assert_eq!(rig.status().controller_reboots, 1);
    assert_eq!(rig.status().firmware.as_deref(), Some("MrCoffeeBot v2.0"));
}

#[test]
fn heater_found_off_while_commanded_on_counts_as_a_reboot() {
    let mut rig = heating_rig();
    // The controller lost the relay state without a banner: replies to B+1 say B+0.
    rig.dead = true;
    let at = rig.at();
    rig.run_for(secs(1));
    assert!(rig.has_event(&Event::ControllerRebooted { count: 1 }));
    assert_eq!(rig.status().mode, Mode::Off);
    let reboot_at = rig.first_event_at("controller_rebooted");
    // The first B+1 after the loss is answered B+0; one feed period later it is a reboot.
    assert!(
        reboot_at - at <= Duration::from_millis(600),
        "{at:?} {:?}",
        rig.events
    );
    rig.run_for(secs(5));
    assert_eq!(rig.feeds_after(reboot_at), 0);
}

#[test]
fn feed_gap_ends_the_program_instead_of_re_enabling() {
    let mut rig = heating_rig();
    // The process was frozen for 3 s: the controller cut the heater on its own.
    rig.now += secs(3);
    rig.core.handle_timeout(rig.now);
    rig.drain();
    assert!(rig.has_event(&Event::Fault {
        reason: Cutoff::FeedGap.into()
    }));
    assert_eq!(rig.last_command(), Command::HeaterOff);
    let at = rig.at();
    rig.run_for(secs(5));
    assert_eq!(rig.feeds_after(at - Duration::from_millis(1)), 0);
}

#[test]
fn suspect_85_after_boot_is_not_trusted_but_is_later() {
    let mut rig = booted_at_85();
    // The first reading after the boot came with 85.0: unknown, not an error.
    let first = rig.sent.iter().rposition(|(_, c)| *c == Command::HeaterOff);
    assert!(first.is_some());
    assert_eq!(rig.status().temperature_c, None);
    assert!(!rig.status().faults.contains(Fault::SensorError));
    rig.run_for(secs(1));
    assert_eq!(rig.status().temperature_c, Some(85.0));
}

#[test]
fn every_85_in_the_sensors_power_on_window_is_not_trusted() {
    // Seen on the real firmware: the bridge started 25 ms after the board; the DS18B20 reads
    // 85.0 for ~770 ms, and two replies came within that time.
    let mut rig = booted_at_85();
    assert_eq!(rig.status().temperature_c, None);
    let t = rig.now + Duration::from_millis(5);
    let reading = one_line(85.0);
    rig.core.handle_reading(t, reading);
    assert_eq!(rig.status().temperature_c, None);
    assert!(!rig.status().faults.contains(Fault::SensorError));
    rig.core
        .handle_reading(t + Duration::from_millis(500), reading);
    assert_eq!(rig.status().temperature_c, None);
    rig.core.handle_reading(
        t + Duration::from_millis(600),
        Reading {
            temperature_c: Some(21.0),
            ..reading
        },
    );
    assert_eq!(rig.status().temperature_c, Some(21.0));
}

#[test]
fn reset_writes_heater_off_then_reset() {
    let mut rig = heating_rig();
    rig.request(Request::ResetController).unwrap();
    let n = rig.sent.len();
    assert_eq!(
        rig.sent[n - 2..]
            .iter()
            .map(|(_, c)| *c)
            .collect::<Vec<_>>(),
        [Command::HeaterOff, Command::Reset]
    );
    assert_eq!(rig.status().mode, Mode::Off);
}

#[test]
fn shutdown_writes_heater_off_last() {
    let mut rig = heating_rig();
    rig.core.handle_shutdown(rig.now);
    rig.drain();
    assert_eq!(rig.last_command(), Command::HeaterOff);
    assert!(rig.core.shutdown_confirmed());
    assert!(rig.request(Request::Heater(true)).is_err());
    let n = rig.sent.len();
    rig.run_for(secs(10));
    assert_eq!(rig.sent.len(), n, "nothing after the final B+0");
}

#[test]
fn water_level_is_linear_and_clamped() {
    let l = limits();
    assert_eq!(l.water_level_pct(8.0), 0);
    assert_eq!(l.water_level_pct(1.0), 100);
    assert_eq!(l.water_level_pct(4.5), 50);
    assert_eq!(l.water_level_pct(20.0), 0);
    assert_eq!(l.water_level_pct(0.2), 100);
}

/// A stale relay is never shown as current: once replies stop, the relay and the readings
/// become unknown (`None`), and come back with the next reply.
#[test]
fn stale_telemetry_shows_the_relay_and_readings_as_unknown() {
    let mut rig = Rig::new(limits());
    rig.run_for(secs(2));
    rig.request(Request::Heater(true)).unwrap();
    rig.run_for(secs(1));
    let before = rig.status();
    assert_eq!(before.heater, Some(true));
    assert!(before.temperature_c.is_some() && before.water_distance_in.is_some());
    rig.mute = true;
    rig.run_for(secs(4));
    let stale = rig.status();
    assert!(stale.faults.contains(Fault::StaleTelemetry));
    assert_eq!(
        stale.heater, None,
        "the last reported relay is not the relay now"
    );
    assert_eq!(stale.temperature_c, None);
    assert_eq!(stale.water_distance_in, None);
    assert_eq!(stale.water_level_pct, None);
    rig.mute = false;
    rig.run_for(secs(2));
    let back = rig.status();
    assert!(!back.faults.contains(Fault::StaleTelemetry));
    assert_eq!(back.heater, Some(false));
    assert!(back.temperature_c.is_some());
}
