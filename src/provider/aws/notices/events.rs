//! EventBridge's events about EC2 instances, as an EventBridge rule with an SQS target delivers
//! them (the event itself is the message body): spot interruption warnings, rebalance
//! recommendations, instance state changes and AWS Health scheduled changes. Pure parsing; what
//! they change is `queue`'s business.

use crate::api::{MachineNotice, NoticeKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

/// How long after its warning EC2 interrupts a spot instance.
const SPOT_WARNING: jiff::SignedDuration = jiff::SignedDuration::from_mins(2);

/// What one event says about one instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The instance is going away, or may (`notice`); `action` is EC2's word for it (a spot
    /// warning's `terminate`, `stop` or `hibernate`; a Health event's type code).
    Notice { instance_id: String, notice: MachineNotice, action: Option<String> },
    /// The instance changed state (`stopping`, `stopped`, `shutting-down`, `terminated`, ...).
    StateChange { instance_id: String, state: String },
}

/// One message of the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// For metrics: spot_interruption, rebalance_recommendation, scheduled_change,
    /// state_change, or other (an event about no instance, e.g. another service's Health event).
    pub kind: &'static str,
    /// The region the event is about, when it says.
    pub region: Option<String>,
    pub events: Vec<Event>,
}

/// Parses one message body; an error says why it is not an EventBridge event.
pub fn parse(body: &str) -> Result<Message, String> {
    let event: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let detail_type = text(&event, "detail-type").ok_or("no detail-type: not an EventBridge event")?;
    let detail = event.get("detail").filter(|d| d.is_object()).ok_or("no detail object")?;
    let region = text(&event, "region");
    let time = || {
        let time = text(&event, "time").ok_or("no time")?;
        time.parse::<jiff::Timestamp>().map_err(|e| format!("time {time:?}: {e}"))
    };
    let instance = || text(detail, "instance-id").filter(|id| id.starts_with("i-")).ok_or("no detail.instance-id");
    let notice = |kind, deadline: Option<jiff::Timestamp>| MachineNotice {
        kind,
        deadline: deadline.and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok()).map(Time),
        replaced: false,
    };
    let (kind, events) = match detail_type.as_str() {
        "EC2 Spot Instance Interruption Warning" => {
            let (instance_id, at) = (instance()?, time()?);
            let action = text(detail, "instance-action");
            let notice = notice(NoticeKind::SpotInterruption, Some(at + SPOT_WARNING));
            ("spot_interruption", vec![Event::Notice { instance_id, notice, action }])
        }
        "EC2 Instance Rebalance Recommendation" => {
            let notice = notice(NoticeKind::RebalanceRecommendation, None);
            ("rebalance_recommendation", vec![Event::Notice { instance_id: instance()?, notice, action: None }])
        }
        "EC2 Instance State-change Notification" => {
            let state = text(detail, "state").ok_or("no detail.state")?;
            ("state_change", vec![Event::StateChange { instance_id: instance()?, state }])
        }
        "AWS Health Event" => match scheduled_change(detail)? {
            Some((kind, code, start, ids)) => {
                let events = ids
                    .into_iter()
                    .map(|instance_id| Event::Notice {
                        instance_id,
                        notice: notice(kind, start),
                        action: Some(code.clone()),
                    })
                    .collect();
                ("scheduled_change", events)
            }
            None => ("other", vec![]),
        },
        _ => ("other", vec![]),
    };
    Ok(Message { kind, region, events })
}

/// A scheduled change of EC2 instances: its kind, type code, start and instance ids. `None` for
/// any other Health event (another service, an issue, an account notification).
type Scheduled = (NoticeKind, String, Option<jiff::Timestamp>, Vec<String>);

fn scheduled_change(detail: &Value) -> Result<Option<Scheduled>, String> {
    let text = |key: &str| detail.get(key).and_then(Value::as_str);
    if text("service") != Some("EC2") || text("eventTypeCategory") != Some("scheduledChange") {
        return Ok(None);
    }
    let code = text("eventTypeCode").ok_or("no detail.eventTypeCode")?.to_string();
    // Retirement and stop take the machine; reboots and maintenance give it back.
    let kind = if code.contains("RETIREMENT") || code.contains("_STOP_") {
        NoticeKind::ScheduledRetirement
    } else {
        NoticeKind::ScheduledMaintenance
    };
    let start = text("startTime").map(start_time).transpose()?;
    let ids: Vec<String> = detail
        .get("affectedEntities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("entityValue").and_then(Value::as_str))
        .filter(|id| id.starts_with("i-"))
        .map(str::to_string)
        .collect();
    Ok((!ids.is_empty()).then_some((kind, code, start, ids)))
}

/// AWS Health writes times as RFC 2822 (`Sat, 05 Jun 2021 19:00:00 GMT`); RFC 3339 is accepted too.
fn start_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .or_else(|_| jiff::fmt::rfc2822::parse(text).map(|zoned| zoned.timestamp()))
        .map_err(|e| format!("detail.startTime {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events as AWS documents them (EC2 User Guide, AWS Health User Guide).
    pub const SPOT: &str = r#"{
        "version": "0", "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-12-03T09:00:00Z", "region": "us-east-2",
        "resources": ["arn:aws:ec2:us-east-2a:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0", "instance-action": "terminate"}
    }"#;
    const REBALANCE: &str = r#"{
        "version": "0", "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-12-03T09:00:00Z", "region": "us-east-2",
        "resources": ["arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0"}
    }"#;
    const STATE: &str = r#"{
        "version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-12-03T09:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "detail": {"instance-id": "i-abcd1111", "state": "stopping"}
    }"#;
    const HEALTH: &str = r#"{
        "version": "0", "id": "121345678-1234-1234-1234-123456789012",
        "detail-type": "AWS Health Event", "source": "aws.health",
        "account": "123456789012", "time": "2026-12-01T06:27:57Z", "region": "us-west-2",
        "resources": ["i-abcd1111", "i-abcd2222"],
        "detail": {
            "eventArn": "arn:aws:health:us-west-2::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED_ABC123",
            "service": "EC2", "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
            "eventTypeCategory": "scheduledChange",
            "startTime": "Sat, 05 Dec 2026 19:00:00 GMT", "endTime": "Sat, 05 Dec 2026 21:00:00 GMT",
            "eventDescription": [{"language": "en_US", "latestDescription": "A description of the event."}],
            "affectedEntities": [{"entityValue": "i-abcd1111"}, {"entityValue": "i-abcd2222"}]
        }
    }"#;

    fn at(text: &str) -> Option<Time> {
        Some(Time(text.parse().unwrap()))
    }

    #[test]
    fn a_spot_warning_gives_the_instance_two_minutes() {
        let m = parse(SPOT).unwrap();
        assert_eq!((m.kind, m.region.as_deref()), ("spot_interruption", Some("us-east-2")));
        let Event::Notice { instance_id, notice, action } = &m.events[0] else { panic!("{m:?}") };
        assert_eq!(instance_id, "i-1234567890abcdef0");
        assert_eq!(notice.kind, NoticeKind::SpotInterruption);
        assert_eq!(notice.deadline, at("2026-12-03T09:02:00Z"));
        assert_eq!(action.as_deref(), Some("terminate"));
    }

    #[test]
    fn a_rebalance_recommendation_has_no_deadline_and_a_state_change_names_the_state() {
        let m = parse(REBALANCE).unwrap();
        let Event::Notice { notice, .. } = &m.events[0] else { panic!("{m:?}") };
        assert_eq!((notice.kind, notice.deadline.clone()), (NoticeKind::RebalanceRecommendation, None));
        let m = parse(STATE).unwrap();
        assert_eq!(m.events, [Event::StateChange { instance_id: "i-abcd1111".into(), state: "stopping".into() }]);
    }

    #[test]
    fn a_scheduled_retirement_names_every_affected_instance_with_its_start() {
        let m = parse(HEALTH).unwrap();
        assert_eq!(m.kind, "scheduled_change");
        let ids: Vec<&str> = m
            .events
            .iter()
            .map(|e| match e {
                Event::Notice { instance_id, notice, .. } => {
                    assert_eq!(notice.kind, NoticeKind::ScheduledRetirement);
                    assert_eq!(notice.deadline, at("2026-12-05T19:00:00Z"));
                    instance_id.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["i-abcd1111", "i-abcd2222"]);
        let reboot = HEALTH.replace("INSTANCE_RETIREMENT_SCHEDULED", "INSTANCE_REBOOT_MAINTENANCE_SCHEDULED");
        let Event::Notice { notice, .. } = &parse(&reboot).unwrap().events[0] else { panic!() };
        assert_eq!(notice.kind, NoticeKind::ScheduledMaintenance, "a reboot gives the machine back");
        let stop = HEALTH.replace("INSTANCE_RETIREMENT_SCHEDULED", "INSTANCE_STOP_SCHEDULED");
        let Event::Notice { notice, .. } = &parse(&stop).unwrap().events[0] else { panic!() };
        assert_eq!(notice.kind, NoticeKind::ScheduledRetirement, "a stop takes it");
    }

    #[test]
    fn other_events_are_about_no_machine_and_garbage_is_refused_with_the_reason() {
        let rds = HEALTH.replace(r#""service": "EC2""#, r#""service": "RDS""#);
        assert_eq!(parse(&rds).unwrap(), Message { kind: "other", region: Some("us-west-2".into()), events: vec![] });
        let issue = HEALTH.replace("scheduledChange", "issue");
        assert!(parse(&issue).unwrap().events.is_empty());
        assert!(parse("not json").unwrap_err().starts_with("not JSON"));
        assert_eq!(parse("{}").unwrap_err(), "no detail-type: not an EventBridge event");
        let no_id = SPOT.replace(r#""instance-id": "i-1234567890abcdef0","#, "");
        assert_eq!(parse(&no_id).unwrap_err(), "no detail.instance-id");
        let bad_time = SPOT.replace("2026-12-03T09:00:00Z", "yesterday");
        assert!(parse(&bad_time).unwrap_err().starts_with("time \"yesterday\""));
    }

    proptest::proptest! {
        /// Whatever arrives, parsing answers (never panics), and anything it accepts names
        /// instances only by EC2 instance ids.
        #[test]
        fn any_body_is_parsed_or_refused(body in ".{0,400}", cut in 0usize..900) {
            let _ = parse(&body);
            for known in [SPOT, REBALANCE, STATE, HEALTH] {
                let prefix: String = known.chars().take(cut).collect();
                if let Ok(m) = parse(&prefix) {
                    for e in m.events {
                        let (Event::Notice { instance_id, .. } | Event::StateChange { instance_id, .. }) = e;
                        proptest::prop_assert!(instance_id.starts_with("i-"));
                    }
                }
            }
        }
    }
}
