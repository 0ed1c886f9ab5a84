//! `herald push ENDPOINT`: the first thing an operator tries after install.
//! Sends a SimplePush version (PUT) or an empty Web Push message (POST) and
//! prints the server's answer.

use clap::Args;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The pushEndpoint URL a UA received at register.
    pub endpoint: String,
    /// Send a SimplePush version (PUT version=N) instead of a Web Push message.
    #[arg(long, conflicts_with = "data")]
    pub version: Option<u64>,
    /// Text to encrypt for the subscription (needs --p256dh and --auth).
    #[arg(long, requires_all = ["p256dh", "auth"])]
    pub data: Option<String>,
    /// The subscription's P-256 public key (base64url).
    #[arg(long)]
    pub p256dh: Option<String>,
    /// The subscription's auth secret (base64url).
    #[arg(long)]
    pub auth: Option<String>,
    /// VAPID private key file (PEM) to sign the request.
    #[arg(long)]
    pub vapid_key: Option<std::path::PathBuf>,
    /// Time to live in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: u64,
    #[arg(long)]
    pub topic: Option<String>,
    /// very-low | low | normal | high
    #[arg(long)]
    pub urgency: Option<String>,
}

pub fn run(args: PushArgs) -> Result<(), String> {
    if args.data.is_some() || args.vapid_key.is_some() {
        return Err(
            "encrypted payloads and VAPID signing are not available in this build yet; \
send an empty message (no --data) or a SimplePush --version"
                .to_owned(),
        );
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(30))
        .build();
    let result = match args.version {
        Some(version) => agent
            .put(&args.endpoint)
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(&format!("version={version}")),
        None => {
            let mut request = agent.post(&args.endpoint).set("TTL", &args.ttl.to_string());
            if let Some(topic) = &args.topic {
                request = request.set("Topic", topic);
            }
            if let Some(urgency) = &args.urgency {
                request = request.set("Urgency", urgency);
            }
            request.send_bytes(&[])
        }
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(format!("request to {} failed: {error}", args.endpoint)),
    };
    let status = response.status();
    println!("{} {}", status, response.status_text());
    for name in ["location", "ttl", "link", "retry-after"] {
        if let Some(value) = response.header(name) {
            println!("{name}: {value}");
        }
    }
    let body = response.into_string().unwrap_or_default();
    if !body.is_empty() {
        println!("{body}");
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the server refused the message ({status})"))
    }
}
