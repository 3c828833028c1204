//! Status: what each object's status should say, computed purely from its verdict and
//! how many gateways serve it. Written only when it differs from what is there, and
//! `lastTransitionTime` changes only when a condition's status does, so an unchanged
//! object is never written (GitOps tools would loop on volatile timestamps).
//!
//! Besides `Accepted` and `Ready`, the kstatus conditions Flux's health checks read are set
//! while they are True (abnormal-true polarity, absent otherwise): `Stalled` for a rejected
//! object (so `flux` fails fast with the reason instead of timing out) and `Reconciling` for
//! an accepted one that not every gateway serves yet.

use acteon_api::compile::gaps::Gaps;
use acteon_api::crd::{ExecutionsStatus, ResourceStatus, StatusCondition};

/// `Ready` reason of a valid object that asks for what the gateway does not do yet.
pub const NOT_IMPLEMENTED: &str = "NotImplemented";
use acteon_channel::GatewayReport;

use super::build::Verdict;

/// How many live gateways serve a snapshot containing the object's current generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    pub serving: u32,
    pub live: u32,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    current: &ResourceStatus,
    now: &str,
) -> StatusCondition {
    let status = if ok { "True" } else { "False" };
    let previous = current.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.to_owned()),
    };
    StatusCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// The status an object should have. `serving` is `None` for rejected objects; `gaps` is
/// what the object asks for that the gateway does not do yet (not ready when it does not
/// work at all, named in the message when a setting is not enforced).
pub fn desired(
    generation: i64,
    verdict: &Verdict,
    serving: Option<Serving>,
    gaps: &Gaps,
    current: &ResourceStatus,
    now: &str,
) -> ResourceStatus {
    let (accepted, ready, gateways_serving) = match (verdict, serving) {
        (Verdict::Rejected { reason, message }, _) => (
            condition(
                "Accepted",
                false,
                reason,
                message.clone(),
                generation,
                current,
                now,
            ),
            condition(
                "Ready",
                false,
                reason,
                message.clone(),
                generation,
                current,
                now,
            ),
            None,
        ),
        (Verdict::Accepted, s) => {
            let s = s.unwrap_or(Serving {
                serving: 0,
                live: 0,
            });
            let (ok, reason, mut message) = if let Some(why) = &gaps.not_implemented {
                (false, NOT_IMPLEMENTED, why.clone())
            } else if s.live == 0 {
                (
                    false,
                    "NoGateways",
                    "accepted; no gateway is running".to_owned(),
                )
            } else if s.serving < s.live {
                (
                    false,
                    "Propagating",
                    format!("served by {} of {} gateways", s.serving, s.live),
                )
            } else {
                (true, "Served", format!("served by all {} gateways", s.live))
            };
            if !gaps.not_enforced.is_empty() {
                let settings = gaps.not_enforced.join(", ");
                message.push_str(&format!("; not enforced yet: {settings}"));
            }
            (
                condition(
                    "Accepted",
                    true,
                    "Valid",
                    "valid; included in the published configuration".into(),
                    generation,
                    current,
                    now,
                ),
                condition("Ready", ok, reason, message, generation, current, now),
                Some(s.serving),
            )
        }
    };
    // Not implemented will not change by waiting: Stalled, so Flux fails fast with why.
    let kstatus = if accepted.status == "False" {
        Some(("Stalled", &accepted))
    } else if ready.reason == NOT_IMPLEMENTED {
        Some(("Stalled", &ready))
    } else if ready.status == "False" {
        Some(("Reconciling", &ready))
    } else {
        None
    };
    let kstatus = kstatus.map(|(type_, from)| {
        condition(
            type_,
            true,
            &from.reason,
            from.message.clone(),
            generation,
            current,
            now,
        )
    });
    let mut conditions = vec![accepted, ready];
    conditions.extend(kstatus);
    ResourceStatus {
        observed_generation: Some(generation),
        conditions,
        gateways_serving,
        executions: current.executions.clone(),
    }
}

/// A Chain's `status.executions` from the gateways' reports (`chain` = `namespace/name`):
/// running runs from the newest census (none counted there = 0; no census anywhere keeps
/// the current figure), the newest failure any gateway saw (none keeps the current one, so
/// a restarted gateway does not erase it).
pub fn chain_executions(
    chain: &str,
    reports: &[GatewayReport],
    current: Option<&ExecutionsStatus>,
) -> ExecutionsStatus {
    let census = reports
        .iter()
        .filter(|r| r.chain_census_ms.is_some())
        .max_by_key(|r| r.chain_census_ms);
    let running = match census {
        Some(r) => Some(r.chains.get(chain).and_then(|a| a.running).unwrap_or(0)),
        None => current.and_then(|c| c.running),
    };
    let newest = reports
        .iter()
        .filter_map(|r| r.chains.get(chain))
        .filter_map(|a| Some((a.last_failure_ms?, a.last_failure.as_ref()?)))
        .max_by_key(|(at, _)| *at);
    let (last_failure, last_failure_time) = match newest {
        Some((at, reason)) => (Some(reason.clone()), rfc3339_ms(at)),
        None => (
            current.and_then(|c| c.last_failure.clone()),
            current.and_then(|c| c.last_failure_time.clone()),
        ),
    };
    ExecutionsStatus {
        running,
        last_failure,
        last_failure_time,
    }
}

fn rfc3339_ms(ms: u64) -> Option<String> {
    let t = k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Whether a rejection is new for this generation (then a Warning Event is due).
pub fn is_new_rejection(
    generation: i64,
    desired: &ResourceStatus,
    current: &ResourceStatus,
) -> bool {
    let find = |s: &ResourceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let Some(want) = find(desired) else {
        return false;
    };
    want.0 == "False"
        && (current.observed_generation != Some(generation) || find(current) != Some(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:01:00Z";

    fn rejected() -> Verdict {
        Verdict::Rejected {
            reason: "InvalidCel".into(),
            message: "spec.cel: syntax error".into(),
        }
    }

    fn ready(s: &ResourceStatus) -> &StatusCondition {
        s.conditions.iter().find(|c| c.type_ == "Ready").unwrap()
    }

    #[test]
    fn an_unchanged_object_gets_an_identical_status() {
        let serving = Some(Serving {
            serving: 2,
            live: 2,
        });
        let first = desired(
            3,
            &Verdict::Accepted,
            serving,
            &ResourceStatus::default(),
            T0,
        );
        let again = desired(3, &Verdict::Accepted, serving, &first, T1);
        assert_eq!(first, again, "no volatile fields");
        assert_eq!(ready(&first).status, "True");
        assert_eq!(first.gateways_serving, Some(2));
        assert_eq!(first.observed_generation, Some(3));
    }

    #[test]
    fn transition_time_moves_only_when_the_condition_status_does() {
        let partial = desired(
            1,
            &Verdict::Accepted,
            Some(Serving {
                serving: 1,
                live: 2,
            }),
            &Default::default(),
            T0,
        );
        assert_eq!(ready(&partial).reason, "Propagating");
        assert_eq!(ready(&partial).message, "served by 1 of 2 gateways");
        let none = desired(
            1,
            &Verdict::Accepted,
            Some(Serving {
                serving: 0,
                live: 2,
            }),
            &partial,
            T1,
        );
        assert_eq!(
            ready(&none).last_transition_time.as_deref(),
            Some(T0),
            "still False"
        );
        let full = desired(
            1,
            &Verdict::Accepted,
            Some(Serving {
                serving: 2,
                live: 2,
            }),
            &none,
            T1,
        );
        assert_eq!(ready(&full).last_transition_time.as_deref(), Some(T1));
        let accepted = full
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert_eq!(
            accepted.last_transition_time.as_deref(),
            Some(T0),
            "Accepted stayed True"
        );
    }

    fn find<'a>(s: &'a ResourceStatus, type_: &str) -> Option<&'a StatusCondition> {
        s.conditions.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn kstatus_conditions_are_present_only_while_true() {
        let propagating = desired(
            2,
            &Verdict::Accepted,
            Some(Serving {
                serving: 0,
                live: 1,
            }),
            &Default::default(),
            T0,
        );
        let reconciling = find(&propagating, "Reconciling").expect("Reconciling while propagating");
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", "Propagating")
        );
        assert!(find(&propagating, "Stalled").is_none());

        let served = desired(
            2,
            &Verdict::Accepted,
            Some(Serving {
                serving: 1,
                live: 1,
            }),
            &propagating,
            T1,
        );
        assert!(find(&served, "Reconciling").is_none());
        assert!(find(&served, "Stalled").is_none());

        let rejected = desired(3, &rejected(), None, &served, T1);
        let stalled = find(&rejected, "Stalled").expect("Stalled when rejected");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidCel")
        );
        assert_eq!(stalled.message, "spec.cel: syntax error");
        assert_eq!(stalled.observed_generation, Some(3));
        assert!(find(&rejected, "Reconciling").is_none());
    }

    #[test]
    fn no_gateways_is_not_ready() {
        let s = desired(1, &Verdict::Accepted, None, &Default::default(), T0);
        assert_eq!(ready(&s).status, "False");
        assert_eq!(ready(&s).reason, "NoGateways");
    }

    #[test]
    fn rejections_carry_the_reason_and_are_announced_once_per_generation() {
        let s = desired(4, &rejected(), None, &Default::default(), T0);
        assert_eq!(ready(&s).reason, "InvalidCel");
        assert_eq!(ready(&s).message, "spec.cel: syntax error");
        assert_eq!(s.gateways_serving, None);
        assert!(is_new_rejection(4, &s, &Default::default()));
        assert!(!is_new_rejection(4, &s, &s), "already reported");
        let next = desired(5, &rejected(), None, &s, T1);
        assert!(
            is_new_rejection(5, &next, &s),
            "a new generation with the same problem"
        );
        let ok = desired(5, &Verdict::Accepted, None, &s, T1);
        assert!(!is_new_rejection(5, &ok, &s));
    }

    /// `desired` of an object without gaps.
    fn desired(
        generation: i64,
        verdict: &Verdict,
        serving: Option<Serving>,
        current: &ResourceStatus,
        now: &str,
    ) -> ResourceStatus {
        super::desired(generation, verdict, serving, &Gaps::default(), current, now)
    }

    #[test]
    fn what_is_not_implemented_is_not_ready_and_stalled_and_unenforced_settings_are_named() {
        let serving = Some(Serving {
            serving: 2,
            live: 2,
        });
        let gap = Gaps {
            not_implemented: Some("provider type `slack` is not implemented".into()),
            not_enforced: Vec::new(),
        };
        let s = super::desired(
            1,
            &Verdict::Accepted,
            serving,
            &gap,
            &Default::default(),
            T0,
        );
        assert_eq!(
            find(&s, "Accepted").map(|c| c.status.as_str()),
            Some("True")
        );
        assert_eq!(
            (ready(&s).status.as_str(), ready(&s).reason.as_str()),
            ("False", NOT_IMPLEMENTED)
        );
        assert!(ready(&s).message.contains("`slack`"));
        assert!(find(&s, "Stalled").is_some() && find(&s, "Reconciling").is_none());
        let unenforced = Gaps {
            not_implemented: None,
            not_enforced: vec!["circuitBreaker", "rateLimit"],
        };
        let s = super::desired(
            1,
            &Verdict::Accepted,
            serving,
            &unenforced,
            &Default::default(),
            T0,
        );
        assert_eq!(ready(&s).status, "True");
        assert_eq!(
            ready(&s).message,
            "served by all 2 gateways; not enforced yet: circuitBreaker, rateLimit"
        );
    }

    /// (chain, running, last failure and when).
    type ChainSeen<'a> = (&'a str, Option<u64>, Option<(&'a str, u64)>);

    fn gateway(census: Option<u64>, chains: &[ChainSeen<'_>]) -> GatewayReport {
        GatewayReport {
            chain_census_ms: census,
            chains: chains
                .iter()
                .map(|(chain, running, failure)| {
                    let activity = acteon_channel::ChainActivity {
                        running: *running,
                        last_failure: failure.map(|f| f.0.to_owned()),
                        last_failure_ms: failure.map(|f| f.1),
                    };
                    ((*chain).to_owned(), activity)
                })
                .collect(),
            ..GatewayReport::default()
        }
    }

    #[test]
    fn chain_executions_come_from_the_newest_census_and_failure() {
        let reports = [
            gateway(Some(100), &[("ns/a", Some(7), Some(("old", 1_000)))]),
            gateway(Some(200), &[("ns/a", Some(3), None)]),
            gateway(None, &[("ns/a", None, Some(("step `page`: 503", 2_000)))]),
        ];
        let e = chain_executions("ns/a", &reports, None);
        assert_eq!(e.running, Some(3), "the newest census counts");
        assert_eq!(e.last_failure.as_deref(), Some("step `page`: 503"));
        assert_eq!(e.last_failure_time.as_deref(), Some("1970-01-01T00:00:02Z"));
        let other = chain_executions("ns/b", &reports, None);
        assert_eq!(
            other,
            ExecutionsStatus {
                running: Some(0),
                ..Default::default()
            }
        );
    }

    #[test]
    fn chain_executions_keep_what_no_report_says() {
        let current = ExecutionsStatus {
            running: Some(4),
            last_failure: Some("timed out".into()),
            last_failure_time: Some("2026-12-04T00:00:00Z".into()),
        };
        let e = chain_executions("ns/a", &[gateway(None, &[])], Some(&current));
        assert_eq!(
            e, current,
            "no census and no failure reported: unchanged (no churn)"
        );
        let e = chain_executions("ns/a", &[], None);
        assert_eq!(e, ExecutionsStatus::default());
    }
}
