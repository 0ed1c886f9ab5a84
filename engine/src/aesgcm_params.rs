//! The `Encryption` and `Crypto-Key` headers of an `aesgcm` message, in the
//! form a UA accepts.
//!
//! Senders write the parameters as they like: `salt="XZwp...Aw=="`, quoted,
//! with standard base64 padding. Firefox's push client decodes `salt` and
//! `dh` as base64url with padding *rejected*, so a padded value reaches the
//! browser and the message is dropped without a word to anyone. Herald never
//! decrypts, but it does pass these headers on: it passes them in the
//! unpadded, unquoted form every client decodes (the form autopush delivers
//! too), so a sender that pads still reaches its users.

/// `name="value="; name2=value2==, ...` → `name=value; name2=value2, ...`:
/// quotes dropped and `=` padding cut from the end of each value; names,
/// separators and spacing kept. A quoted value that holds a separator, a
/// quote or a space keeps its quotes (without them it would read as two
/// parameters), and only loses its padding.
pub fn unquote_and_unpad(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    let mut parameter = String::new();
    let mut in_quotes = false;
    for ch in header.chars() {
        match ch {
            '"' => in_quotes = !in_quotes,
            ',' | ';' if !in_quotes => {
                push_parameter(&mut out, &parameter);
                parameter.clear();
                out.push(ch);
                continue;
            }
            _ => {}
        }
        parameter.push(ch);
    }
    push_parameter(&mut out, &parameter);
    out
}

/// One `name=value` (with whatever spacing surrounds it) into `out`.
fn push_parameter(out: &mut String, parameter: &str) {
    let Some((name, value)) = parameter.split_once('=') else {
        out.push_str(parameter);
        return;
    };
    let trimmed = value.trim_end();
    let trailing_space = &value[trimmed.len()..];
    let unquoted = trimmed
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(trimmed);
    let unpadded = unquoted.trim_end_matches('=');
    let needs_quotes = unpadded.contains([',', ';', '"', ' ', '\t']);
    out.push_str(name);
    out.push('=');
    if needs_quotes {
        out.push('"');
        out.push_str(unpadded);
        out.push('"');
    } else {
        out.push_str(unpadded);
    }
    out.push_str(trailing_space);
}

#[cfg(test)]
mod tests {
    use super::unquote_and_unpad;

    #[test]
    fn quotes_and_padding_go_names_and_separators_stay() {
        let cases = [
            (
                r#"keyid="http://example.org/bob/keys/123";salt="XZwpw6o37R-6qoZjw6KwAw==""#,
                "keyid=http://example.org/bob/keys/123;salt=XZwpw6o37R-6qoZjw6KwAw",
            ),
            (
                r#"keyid="a1"; dh="JcqK-OLkJZlJ3sJJWstJCA=""#,
                "keyid=a1; dh=JcqK-OLkJZlJ3sJJWstJCA",
            ),
            ("dh=BNoo=;p256ecdsa=BA1==", "dh=BNoo;p256ecdsa=BA1"),
            ("salt=abc, salt=def==", "salt=abc, salt=def"),
            // Already in the wanted form: unchanged.
            ("salt=XZwpw6o37R-6qoZjw6KwAw", "salt=XZwpw6o37R-6qoZjw6KwAw"),
            // `=` inside a value (a URL's query) is not padding.
            (
                r#"keyid="https://k/?a=b";salt=x="#,
                "keyid=https://k/?a=b;salt=x",
            ),
            ("", ""),
            ("no-equals-sign", "no-equals-sign"),
        ];
        for (sent, delivered) in cases {
            assert_eq!(unquote_and_unpad(sent), delivered, "{sent}");
        }
    }

    #[test]
    fn a_quoted_value_holding_a_separator_keeps_its_quotes() {
        assert_eq!(
            unquote_and_unpad(r#"keyid="a;b";salt="c==""#),
            r#"keyid="a;b";salt=c"#
        );
    }
}
