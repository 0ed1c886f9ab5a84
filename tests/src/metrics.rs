//! Prometheus text format, as `GET /metrics` serves it.

/// Metric name without labels.
pub fn metric_name(sample: &str) -> &str {
    sample.split('{').next().unwrap_or(sample)
}

/// Parse Prometheus text format into (name{labels}, value) samples.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]; labels may contain spaces inside quotes
        let (name, rest) = if let Some(close) = line.find('}') {
            (&line[..=close], line[close + 1..].trim())
        } else {
            match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, r.trim()),
                None => continue,
            }
        };
        let v = rest.split_whitespace().next().unwrap_or("");
        let v = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push((name.to_string(), v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_parsing() {
        let s = parse_prometheus(
            "# HELP x y\nherald_notifications_in_total 3\nherald_x{shard=\"0\",a=\"b c\"} 2.5\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], ("herald_notifications_in_total".into(), 3.0));
        assert_eq!(metric_name(&s[1].0), "herald_x");
        assert_eq!(s[1].1, 2.5);
    }
}
