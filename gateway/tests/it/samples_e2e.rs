//! End to end: the real binary on the repository's samples (no arguments beyond the
//! listen address, so the default `config/samples` + `rules`), fed the events of seed
//! 003's IoT pipeline, checked against its "Expected Outcomes" table.
//!
//! Humidity readings are grouped per floor and energy reports scheduled (the samples wait
//! 30 s and 60 s: the group notifications are checked, the schedule's timers are only
//! counted as pending). Normal readings start the `telemetry-processing` chain, which runs
//! to its end on the worker (its `publish-event` step runs the `critical-alert` sub-chain).

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};

fn event(action_type: &str, dedup_key: &str, payload: Value) -> Value {
    json!({
        "namespace": "iot", "tenant": "smartbuilding-hq", "provider": "telemetry",
        "action_type": action_type, "payload": payload, "dedup_key": dedup_key
    })
}

fn reading(key: &str, payload: Value) -> Value {
    event("sensor_reading", key, payload)
}

async fn send(c: &reqwest::Client, server: &Server, body: &Value) -> Value {
    let r = c
        .post(server.url("/v1/dispatch"))
        .json(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.expect("json outcome")
}

/// The outcome's tag, plus the detail this test checks.
fn describe(outcome: &Value) -> String {
    match outcome {
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            let (tag, body) = m.iter().next().expect("one tag");
            match tag.as_str() {
                "Rerouted" => format!("Rerouted:{}", body["new_provider"].as_str().unwrap_or("?")),
                "Suppressed" => format!("Suppressed:{}", body["rule"].as_str().unwrap_or("?")),
                "Grouped" => format!("Grouped:{}", body["group_size"]),
                "Failed" => format!(
                    "Failed:{}:{}",
                    body["code"].as_str().unwrap_or("?"),
                    body["message"].as_str().unwrap_or("")
                ),
                other => other.to_owned(),
            }
        }
        other => panic!("unexpected outcome {other}"),
    }
}

#[tokio::test]
async fn seed_003_iot_pipeline() {
    let server = Server::start(&[]);
    let c = reqwest::Client::new();
    let mut counts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut record = |what: &'static str, outcome: &Value| {
        counts.entry(what).or_default().push(describe(outcome))
    };

    for (i, v) in [91.5, 88.0].iter().enumerate() {
        let o = send(&c, &server, &reading(&format!("crit-{i}"), json!({"device_id": format!("temp-{i}"), "sensor_type": "temperature", "value": v, "unit": "C"}))).await;
        record("critical", &o);
    }
    for i in 0..2 {
        let o = send(&c, &server, &reading(&format!("motion-{i}"), json!({"device_id": format!("motion-{i}"), "sensor_type": "motion", "event": "intrusion", "zone": "lobby"}))).await;
        record("intrusion", &o);
    }
    for i in 0..3 {
        let o = send(&c, &server, &reading(&format!("normal-{i}"), json!({"device_id": format!("temp-n{i}"), "sensor_type": "temperature", "value": 21 + i}))).await;
        record("normal", &o);
    }
    for i in 0..3 {
        let o = send(&c, &server, &reading(&format!("hum-{i}"), json!({"device_id": format!("hum-{i}"), "sensor_type": "humidity", "value": 40 + i, "floor": i % 2}))).await;
        record("humidity", &o);
    }
    for i in 0..2 {
        let o = send(&c, &server, &reading(&format!("energy-{i}"), json!({"device_id": format!("meter-{i}"), "sensor_type": "energy", "value": 120 + i}))).await;
        record("energy", &o);
    }
    for _ in 0..2 {
        let o = send(
            &c,
            &server,
            &reading(
                "dup-1",
                json!({"device_id": "temp-d", "sensor_type": "temperature", "value": 95}),
            ),
        )
        .await;
        record("duplicate", &o);
    }
    for i in 0..2 {
        let o = send(&c, &server, &reading(&format!("test-{i}"), json!({"device_id": format!("test-{i}"), "sensor_type": "temperature", "value": 20, "environment": "test"}))).await;
        record("test-device", &o);
    }
    let o = send(
        &c,
        &server,
        &event(
            "device_lifecycle",
            "life-1",
            json!({"device_id": "temp-9", "event": "provisioned"}),
        ),
    )
    .await;
    record("lifecycle", &o);
    let o = send(
        &c,
        &server,
        &event(
            "firmware_update",
            "fw-1",
            json!({"device_id": "temp-9", "version": "2.1", "signed": false}),
        ),
    )
    .await;
    record("firmware", &o);

    let expect = |what: &str, want: &[&str]| {
        let got = &counts[what];
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{what}: got {g}, want {w}");
        }
    };
    expect(
        "critical",
        &["Rerouted:alert-fanout", "Rerouted:alert-fanout"],
    );
    expect(
        "intrusion",
        &["Rerouted:alert-fanout", "Rerouted:alert-fanout"],
    );
    expect("normal", &["ChainStarted"; 3]);
    expect("humidity", &["Grouped:1", "Grouped:1", "Grouped:2"]);
    expect("energy", &["Scheduled"; 2]);
    expect("duplicate", &["Rerouted:alert-fanout", "Deduplicated"]);
    expect(
        "test-device",
        &[
            "Suppressed:suppress-test-devices",
            "Suppressed:suppress-test-devices",
        ],
    );
    expect("lifecycle", &["Rerouted:event-bus"]);
    expect("firmware", &["Suppressed:deny-unsigned-firmware"]);

    // Rapid fire: the tenant's throttle (30 per minute) has let through every event that
    // got past dedup so far; the next ones are throttled with the time until the oldest
    // pass leaves the minute, and rejected attempts consume nothing.
    let mut throttled = Vec::new();
    let mut passed = 0;
    for i in 0..40 {
        let o = send(
            &c,
            &server,
            &event(
                "heartbeat",
                &format!("hb-{i}"),
                json!({"device_id": format!("hb-{i}")}),
            ),
        )
        .await;
        match o.get("Throttled") {
            Some(t) => throttled.push(Duration::new(
                t["retry_after"]["secs"].as_u64().expect("secs"),
                t["retry_after"]["nanos"].as_u64().expect("nanos") as u32,
            )),
            None => {
                assert!(o.get("Executed").is_some(), "heartbeats are allowed: {o}");
                passed += 1;
            }
        }
    }
    // Fourteen of the 21 events above were counted by the throttle: the test devices and
    // the unsigned firmware stop at priority 1 and the duplicate at the dedup gate; the
    // chained, grouped and scheduled ones passed the throttle before they were parked. So
    // 30 - 14 = 16 pass.
    assert_eq!(passed, 16, "throttled: {}", throttled.len());
    assert_eq!(throttled.len(), 24);
    assert!(
        throttled
            .iter()
            .all(|d| *d <= Duration::from_secs(60) && *d > Duration::from_secs(50)),
        "{throttled:?}"
    );

    // The modify rule ran before `allow-remaining` (evaluation continued after it).
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("acteon_rule_matches_total{rule=\"iot/enrich-telemetry-metadata\"}"),
        "modify matched"
    );
    assert!(metrics.contains(
        "acteon_dispatches_total{namespace=\"iot\",outcome=\"throttled\",provider=\"telemetry\"} 24"
    ));

    // After the groups' 30 s wait, one notification per floor went on through the rules
    // after the group rule: it is a `sensor_reading` of the tenant, so it meets the chain
    // rule (priority 10) and starts a chain — proof that it continued after the group rule
    // instead of re-entering it. The two scheduled reports are still pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    loop {
        let metrics = c
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text");
        let flushed = metrics
            .lines()
            .find(|l| l.starts_with("acteon_group_flushes_total{kind=\"flush\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned);
        if flushed.as_deref() == Some("2") {
            assert!(
                metrics
                    .contains("acteon_released_total{kind=\"group\",outcome=\"chain_started\"} 2"),
                "{}",
                metrics
                    .lines()
                    .filter(|l| l.contains("released") || l.contains("chain"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            assert!(!metrics.contains("acteon_released_total{kind=\"schedule\""));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two group notifications within 45 s: {flushed:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The chains ran on the worker: each normal reading's run went normalize → (branch on
    // `body.logged`) detect-anomaly → publish-event, which ran the `critical-alert`
    // sub-chain's two steps → archive-metrics. The group notifications' runs failed at
    // their first step: a notification has no `payload.device_id` for the template.
    let expected = [
        "acteon_chains_total{chain=\"iot/telemetry-processing\",event=\"completed\"} 3",
        "acteon_chains_total{chain=\"iot/telemetry-processing\",event=\"failed\"} 2",
        "acteon_chain_steps_total{chain=\"iot/telemetry-processing\",result=\"ok\"} 9",
        "acteon_chain_steps_total{chain=\"iot/critical-alert\",result=\"ok\"} 6",
        "acteon_chain_steps_total{chain=\"iot/telemetry-processing\",result=\"failed\"} 2",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = c
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text");
        if expected.iter().all(|e| metrics.lines().any(|l| l == *e)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chain runs: {}",
            metrics
                .lines()
                .filter(|l| l.starts_with("acteon_chain"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The runs are listed with the path each took.
    let runs = |status: &str| {
        let url = server.url(&format!(
            "/v1/chains?namespace=iot&tenant=smartbuilding-hq&status={status}"
        ));
        let c = c.clone();
        async move {
            let body: serde_json::Value = c
                .get(url)
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("json");
            body["chains"].as_array().cloned().unwrap_or_default()
        }
    };
    let completed = runs("completed").await;
    assert_eq!(completed.len(), 3, "{completed:?}");
    for run in &completed {
        assert_eq!(run["chain_name"], "telemetry-processing");
        assert_eq!(
            run["execution_path"],
            serde_json::json!([
                "normalize",
                "detect-anomaly",
                "fan-out-alert",
                "publish-to-bus",
                "publish-event",
                "archive-metrics"
            ]),
            "{run}"
        );
    }
    let failed = runs("failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for run in &failed {
        let error = run["error"].as_str().unwrap_or_default();
        assert!(error.contains("device_id"), "{run}");
    }
}
