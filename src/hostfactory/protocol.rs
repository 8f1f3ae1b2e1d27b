//! HostFactory's JSON, in and out: the input variants HostFactory (and ORB before it) sends, read
//! strictly with errors that name what is wrong, and the mapping of the operator's phases and
//! machine results onto HostFactory's status and result values.

use crate::api::{Machine, MachineResult, Phase};
use serde_json::{Value, json};

/// Input HostFactory sent that cannot be answered; the text says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadInput(pub String);

fn bad(text: impl Into<String>) -> BadInput {
    BadInput(text.into())
}

/// `requestMachines`: the template and the machine count, from `{"template": {"templateId",
/// "machineCount"}}` or the flat `{"templateId", "machineCount"}` (ORB also read `maxNumber`).
pub fn machines_wanted(input: &Value) -> Result<(String, i32), BadInput> {
    let template = input.get("template").unwrap_or(input);
    let id = template
        .get("templateId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| bad("requestMachines: template.templateId is missing or not a string"))?;
    let count = template
        .get("machineCount")
        .or_else(|| template.get("maxNumber"))
        .ok_or_else(|| bad("requestMachines: template.machineCount is missing"))?;
    let count = count
        .as_i64()
        .or_else(|| count.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| bad(format!("requestMachines: template.machineCount must be a whole number, not {count}")))?;
    let max = crate::api::MAX_CAPACITY;
    if !(1..=i64::from(max)).contains(&count) {
        return Err(bad(format!(
            "requestMachines: template.machineCount must be from 1 to {max} (the most one MachineRequest holds), not {count}; ask for more in several requests"
        )));
    }
    Ok((id.to_string(), count as i32))
}

/// One entry of `getRequestStatus`: its request id, or (what was given, what is wrong with it).
pub type RequestEntry = Result<String, (String, String)>;

/// `getRequestStatus`: the request ids, from `{"requests": [{"requestId"}, ...]}`, a single
/// `{"requests": {"requestId"}}`, a bare `{"requestId"}` or a list of such objects. A malformed
/// entry is an entry of its own (answered for itself), not a failure of the whole call.
pub fn request_entries(input: &Value) -> Result<Vec<RequestEntry>, BadInput> {
    let items: Vec<&Value> = match input.get("requests").unwrap_or(input) {
        Value::Array(list) => list.iter().collect(),
        one @ Value::Object(_) => vec![one],
        other => {
            return Err(bad(format!("getRequestStatus: requests must be a list of {{\"requestId\"}}, not {other}")));
        }
    };
    if items.is_empty() {
        return Err(bad("getRequestStatus: no requestId given"));
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.get("requestId") {
            Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
            Some(Value::String(_)) | None => Err((String::new(), format!("requests[{i}].requestId is missing"))),
            Some(other) => Err((other.to_string(), format!("requests[{i}].requestId must be a string, not {other}"))),
        })
        .collect())
}

/// A machine HostFactory names: its host name and/or its machine (instance) id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineRef {
    pub name: Option<String>,
    pub machine_id: Option<String>,
}

/// `requestReturnMachines` / `getReturnRequests`: `{"machines": [{"name", "machineId"}]}`.
/// `required`: at least one machine, each with a name or an id.
pub fn machines(verb: &str, input: &Value, required: bool) -> Result<Vec<MachineRef>, BadInput> {
    let list = match input.get("machines") {
        Some(Value::Array(list)) => list.as_slice(),
        None | Some(Value::Null) if !required => &[],
        Some(other) => return Err(bad(format!("{verb}: machines must be a list, not {other}"))),
        None => return Err(bad(format!("{verb}: machines is missing"))),
    };
    let refs: Vec<MachineRef> = list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
            let r = MachineRef { name: text("name"), machine_id: text("machineId") };
            if r.name.is_none() && r.machine_id.is_none() {
                return Err(bad(format!("{verb}: machines[{i}] has neither a name nor a machineId")));
            }
            Ok(r)
        })
        .collect::<Result<_, _>>()?;
    if required && refs.is_empty() {
        return Err(bad(format!("{verb}: no machine given")));
    }
    Ok(refs)
}

/// HostFactory's request status for a request in `phase`.
pub fn request_status(phase: Option<Phase>) -> &'static str {
    match phase {
        None | Some(Phase::Pending | Phase::Provisioning) => "running",
        Some(Phase::Fulfilled) => "complete",
        Some(Phase::Partial | Phase::Failed | Phase::Deleting) => "complete_with_error",
    }
}

/// HostFactory's result for a machine of an acquiring request.
pub fn machine_result(m: &Machine) -> &'static str {
    match m.result {
        Some(MachineResult::Succeed) => "succeed",
        Some(MachineResult::Fail) => "fail",
        Some(MachineResult::Executing) | None => "executing",
    }
}

/// The name HostFactory knows a machine by: the host name it joins the grid with (its private
/// DNS name), or its instance id while the cloud has given it none yet.
pub fn host_name(m: &Machine) -> &str {
    m.private_dns_name.as_deref().unwrap_or(&m.instance_id)
}

/// One machine as HostFactory reads it. `result` is the acquire or return result.
pub fn machine_json(m: &Machine, result: &str, message: Option<&str>) -> Value {
    let launch = m.launch_time.as_ref().map_or(0, |t| t.0.as_second());
    let message = message.or(m.message.as_deref()).unwrap_or_default();
    json!({
        "machineId": m.instance_id,
        "name": host_name(m),
        "result": result,
        "status": m.state,
        "privateIpAddress": m.private_ip,
        "publicIpAddress": m.public_ip,
        "launchtime": launch,
        "message": message,
        "cloudHostId": m.instance_id,
        "instanceType": m.instance_type,
        "priceType": m.capacity_type.as_deref().map(|c| if c == "spot" { "spot" } else { "ondemand" }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_machines_reads_the_nested_and_the_flat_form() {
        let nested = json!({"template": {"templateId": "workers", "machineCount": 3}});
        assert_eq!(machines_wanted(&nested), Ok(("workers".into(), 3)));
        let flat = json!({"templateId": "workers", "machineCount": "2"});
        assert_eq!(machines_wanted(&flat), Ok(("workers".into(), 2)));
        let orb = json!({"templateId": "workers", "maxNumber": 4});
        assert_eq!(machines_wanted(&orb), Ok(("workers".into(), 4)));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            (json!({}), "templateId"),
            (json!({"template": {"templateId": 7, "machineCount": 1}}), "templateId"),
            (json!({"template": {"templateId": "w"}}), "machineCount is missing"),
            (json!({"template": {"templateId": "w", "machineCount": 0}}), "from 1 to 1000"),
            (json!({"template": {"templateId": "w", "machineCount": 1001}}), "ask for more in several requests"),
            (json!({"template": {"templateId": "w", "machineCount": "many"}}), "whole number"),
            (json!({"template": {"templateId": "w", "machineCount": 1.5}}), "whole number"),
        ];
        for (input, expected) in cases {
            let error = machines_wanted(&input).unwrap_err().0;
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn request_ids_come_as_a_list_a_single_object_or_bare() {
        let ids = |v: Value| request_entries(&v);
        assert_eq!(
            ids(json!({"requests": [{"requestId": "req-1"}, {"requestId": "ret-2"}]})),
            Ok(vec![Ok("req-1".into()), Ok("ret-2".into())])
        );
        assert_eq!(ids(json!({"requests": {"requestId": "req-1"}})), Ok(vec![Ok("req-1".into())]));
        assert_eq!(ids(json!({"requestId": "req-1"})), Ok(vec![Ok("req-1".into())]));
        assert_eq!(ids(json!([{"requestId": "req-1"}])), Ok(vec![Ok("req-1".into())]));
        assert!(ids(json!({"requests": []})).unwrap_err().0.contains("no requestId"));
        assert!(ids(json!({"requests": "req-1"})).is_err());
    }

    #[test]
    fn a_malformed_entry_is_an_entry_of_its_own() {
        let entries = request_entries(&json!({"requests": [{"id": "x"}, {"requestId": 7}, {"requestId": "req-1"}]}));
        let entries = entries.unwrap();
        assert!(matches!(&entries[0], Err((raw, why)) if raw.is_empty() && why.contains("requests[0].requestId")));
        assert!(matches!(&entries[1], Err((raw, why)) if raw == "7" && why.contains("must be a string")));
        assert_eq!(entries[2], Ok("req-1".into()));
    }

    #[test]
    fn machines_need_a_name_or_an_id() {
        let input = json!({"machines": [{"name": "host-1", "machineId": "i-1"}, {"machineId": "i-2"}]});
        let refs = machines("requestReturnMachines", &input, true).unwrap();
        assert_eq!(refs[1], MachineRef { name: None, machine_id: Some("i-2".into()) });
        assert!(
            machines("requestReturnMachines", &json!({"machines": [{}]}), true).unwrap_err().0.contains("machines[0]")
        );
        assert!(machines("requestReturnMachines", &json!({"machines": []}), true).is_err());
        assert!(machines("requestReturnMachines", &json!({}), true).is_err());
        assert_eq!(machines("getReturnRequests", &json!({}), false), Ok(vec![]));
    }

    #[test]
    fn phases_map_to_hostfactory_statuses() {
        assert_eq!(request_status(None), "running");
        assert_eq!(request_status(Some(Phase::Provisioning)), "running");
        assert_eq!(request_status(Some(Phase::Fulfilled)), "complete");
        assert_eq!(request_status(Some(Phase::Partial)), "complete_with_error");
        assert_eq!(request_status(Some(Phase::Failed)), "complete_with_error");
    }
}
