//! Properties over random histories of inputs and time.

use super::*;

#[derive(Clone, Debug)]
enum Step {
    Wait(u64),
    Ask(Request),
    Temp(Option<f64>),
    Water(Option<f64>),
    Mute(bool),
    Stuck(bool),
    Link(bool),
    Banner,
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<bool>().prop_map(Request::Heater),
        proptest::option::of(0u32..15).prop_map(|cups| Request::BrewStart { cups }),
        Just(Request::BrewStop),
        (0u32..15).prop_map(Request::SelectCups),
        any::<bool>().prop_map(Request::KeepWarm),
        Just(Request::ResetController),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..120_000).prop_map(Step::Wait),
        3 => request().prop_map(Step::Ask),
        2 => proptest::option::of(-50.0f64..150.0).prop_map(Step::Temp),
        1 => proptest::option::of(0.5f64..12.0).prop_map(Step::Water),
        1 => any::<bool>().prop_map(Step::Mute),
        1 => any::<bool>().prop_map(Step::Stuck),
        1 => any::<bool>().prop_map(Step::Link),
        1 => Just(Step::Banner),
    ]
}

/// Replays a history and checks the safety properties on every output.
fn check_history(limits: Limits, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut rig = Rig::new(limits.clone());
    prop_assert_eq!(rig.sent.first().map(|(_, c)| *c), Some(Command::HeaterOff));
    let mut on_since: Option<Duration> = None;
    let mut last_feed: Option<Duration> = None;
    // After a reboot, B+1 only once a start command was accepted.
    let mut may_heat = true;
    let mut checked = 0;
    let mut check = |rig: &Rig, may_heat: &mut bool| -> Result<(), TestCaseError> {
        for (at, c) in &rig.sent[checked..] {
            match c {
                Command::HeaterOn => {
                    prop_assert!(*may_heat, "B+1 after a reboot without a new start");
                    let since = *on_since.get_or_insert(*at);
                    prop_assert!(*at - since < limits.max_heater_on);
                    if let Some(prev) = last_feed {
                        prop_assert!(*at - prev <= limits.feed_interval);
                    }
                    last_feed = Some(*at);
                }
                _ if *c == Command::HeaterOff || *c == Command::Reset => {
                    on_since = None;
                    last_feed = None;
                }
                _ => {}
            }
        }
        if rig.sent[checked..].last().map(|(_, c)| *c) == Some(Command::HeaterOn) {
            prop_assert!(
                rig.status().faults.blocking().is_empty(),
                "B+1 while an interlock holds: {:?}",
                rig.status().faults
            );
        }
        checked = rig.sent.len();
        Ok(())
    };
    for s in steps {
        match s {
            Step::Wait(ms) => {
                // Advance in slices so every feed is checked against the state it saw.
                let end = rig.now + Duration::from_millis(*ms);
                while rig.now < end {
                    let slice = (end - rig.now).min(limits.feed_interval);
                    rig.run_for(slice);
                    check(&rig, &mut may_heat)?;
                }
            }
            Step::Ask(r) => {
                if rig.request(*r).is_ok() && r.starts_heating() {
                    may_heat = true;
                }
            }
            Step::Temp(t) => rig.temp = *t,
            Step::Water(w) => rig.water = *w,
            Step::Mute(m) => rig.mute = *m,
            Step::Stuck(s) => rig.stuck = *s,
            Step::Link(up) => {
                rig.core.handle_link(rig.now, *up);
                rig.drain();
            }
            Step::Banner => {
                rig.relay = rig.stuck;
                rig.core.handle_banner(rig.now, "MrCoffeeBot v2.0");
                may_heat = false;
                rig.drain();
            }
        }
        check(&rig, &mut may_heat)?;
    }
    rig.core.handle_shutdown(rig.now);
    rig.drain();
    prop_assert_eq!(rig.last_command(), Command::HeaterOff);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn safety_holds_over_random_histories(steps in proptest::collection::vec(step(), 1..60)) {
        check_history(limits(), &steps)?;
    }

    #[test]
    fn safety_holds_with_short_limits(steps in proptest::collection::vec(step(), 1..60)) {
        check_history(Limits {
            max_heater_on: secs(20),
            preheat_timeout: secs(10),
            seconds_per_cup: 1.5,
            keep_warm_max: secs(30),
            stale_after: secs(1),
            ..limits()
        }, &steps)?;
    }
}
