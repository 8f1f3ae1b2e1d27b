//! EventBridge's EC2 events in their exact JSON, as an interruption queue receives them, and
//! the SQS queue of a test (in moto).

/// A queue named `name` in moto's `region`: its client and URL.
pub async fn queue(moto: &super::moto::Moto, region: &str, name: &str) -> (aws_sdk_sqs::Client, String) {
    let sqs = aws_sdk_sqs::Client::new(&super::moto::sdk(moto, region).await);
    let url = sqs.create_queue().queue_name(name).send().await.unwrap().queue_url().unwrap().to_string();
    (sqs, url)
}

pub async fn send(sqs: &aws_sdk_sqs::Client, url: &str, body: &str) {
    sqs.send_message().queue_url(url).message_body(body).send().await.unwrap();
}

/// Now, to the second, as EventBridge writes it.
fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap()
}

/// `EC2 Spot Instance Interruption Warning` for instance `id`, sent now.
pub fn spot_warning(id: &str, region: &str) -> String {
    format!(
        r#"{{"version": "0", "id": "{}", "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2", "account": "123456789012", "time": "{}", "region": "{region}",
            "resources": ["arn:aws:ec2:{region}a:instance/{id}"],
            "detail": {{"instance-id": "{id}", "instance-action": "terminate"}}}}"#,
        uuid::Uuid::new_v4(),
        now()
    )
}

/// `EC2 Instance State-change Notification` for instance `id`, sent now.
pub fn state_change(id: &str, region: &str, state: &str) -> String {
    format!(
        r#"{{"version": "0", "id": "{}", "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2", "account": "123456789012", "time": "{}", "region": "{region}",
            "resources": ["arn:aws:ec2:{region}:123456789012:instance/{id}"],
            "detail": {{"instance-id": "{id}", "state": "{state}"}}}}"#,
        uuid::Uuid::new_v4(),
        now()
    )
}
