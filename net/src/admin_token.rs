//! The operator's bearer token (`admin_token`), asked of operator requests
//! on the public AS listener: `PUT /v1/broadcasts/<id>`, and `/metrics` and
//! `/about` (which the admin listener serves without it).

use sha2::{Digest, Sha256};

use herald_engine::push::{errno, HttpResponse};

use crate::http::Head;

/// The request's `Authorization` header, if it is text.
pub fn authorization(head: &Head) -> Option<&str> {
    head.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// `Ok` when `authorization` is `Bearer <admin_token>`; else the answer:
/// 403 when no token is configured (`what` is then disabled), 401 otherwise.
pub fn check(
    admin_token: Option<&str>,
    authorization: Option<&str>,
    what: &str,
) -> Result<(), HttpResponse> {
    let Some(admin_token) = admin_token else {
        return Err(HttpResponse::error(
            403,
            errno::INVALID_AUTHENTICATION,
            &format!("{what}: no admin_token is configured"),
        ));
    };
    let given = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token_matches(given.trim().as_bytes(), admin_token.as_bytes()) {
        return Ok(());
    }
    Err(HttpResponse::error(
        401,
        errno::INVALID_AUTHENTICATION,
        "a valid admin token is required",
    )
    .with_header("WWW-Authenticate", "Bearer".to_owned()))
}

/// Compares digests so the comparison takes the same time wherever the
/// tokens differ (the node link's secret is compared the same way).
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    Sha256::digest(given) == Sha256::digest(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_bearer_token_passes() {
        assert!(check(Some("t0k"), Some("Bearer t0k"), "x").is_ok());
        for given in [None, Some("Bearer nope"), Some("t0k"), Some("Basic t0k")] {
            let refused = check(Some("t0k"), given, "x").expect_err("refused");
            assert_eq!(refused.status, 401, "{given:?}");
        }
        let disabled =
            check(None, Some("Bearer t0k"), "pages are disabled").expect_err("no token configured");
        assert_eq!(disabled.status, 403);
        assert!(disabled.body.contains("pages are disabled: no admin_token"));
    }
}
