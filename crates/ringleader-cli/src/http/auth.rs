//! Who may write through the HTTP API.
//!
//! The rule: with an API token (`--api-token-file`), every write endpoint
//! needs `Authorization: Bearer <token>`, from anywhere, loopback included;
//! without one, writes are accepted only from loopback peers. Reads are open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// Shortest accepted API token, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The API token: a bearer token for write endpoints.
#[derive(Clone)]
pub struct ApiToken(Arc<[u8]>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// The token in a token file's bytes: ASCII whitespace trimmed at both
    /// ends, then at least [`MIN_TOKEN_BYTES`] visible ASCII characters (it
    /// travels in a header).
    pub fn from_file_bytes(raw: &[u8]) -> Result<ApiToken, String> {
        let token = raw.trim_ascii();
        if token.is_empty() {
            return Err("is empty".into());
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "must be visible ASCII characters only (it is sent in an HTTP header)".into(),
            );
        }
        if token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "holds {} bytes; a token needs at least {MIN_TOKEN_BYTES} (e.g. `head -c 24 /dev/urandom | base64 > FILE`)",
                token.len()
            ));
        }
        Ok(ApiToken(token.into()))
    }

    /// Whether an `Authorization` header carries this token, compared in
    /// constant time.
    fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_first_chunk::<7>() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(credentials.ct_eq(&self.0))
    }
}

/// Whether a write from `peer` with this `Authorization` header may go on;
/// otherwise the status and the reason.
pub fn check_write(
    token: Option<&ApiToken>,
    authorization: Option<&HeaderValue>,
    peer: Option<SocketAddr>,
) -> Result<(), (StatusCode, &'static str)> {
    match token {
        Some(token) if token.accepts(authorization) => Ok(()),
        Some(_) => Err((
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the node's API token: Authorization: Bearer <token>",
        )),
        None if peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) => Ok(()),
        None => Err((
            StatusCode::FORBIDDEN,
            "writes are accepted only from loopback while the node has no API token; \
             start it with --api-token-file to accept them from elsewhere",
        )),
    }
}

/// Middleware for the write routes: applies [`check_write`] to the request's
/// `Authorization` header and peer address (`ConnectInfo`; a request
/// without one is not from loopback).
pub async fn writes(
    State(token): State<Option<ApiToken>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let authorization = request.headers().get(header::AUTHORIZATION);
    match check_write(token.as_ref(), authorization, peer) {
        Ok(()) => next.run(request).await,
        Err((status, message)) => {
            let mut response = super::error(status, message);
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ApiToken {
        ApiToken::from_file_bytes(b"  0123456789abcdef-token\n").unwrap()
    }

    fn bearer(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    fn at(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        assert!(
            ApiToken::from_file_bytes(b"")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            ApiToken::from_file_bytes(b"short\n")
                .unwrap_err()
                .contains("16")
        );
        assert!(
            ApiToken::from_file_bytes(b"0123456789 abcdef")
                .unwrap_err()
                .contains("visible ASCII")
        );
        assert!(ApiToken::from_file_bytes(&[0xff; 20]).is_err());
        assert_eq!(&*token().0, b"0123456789abcdef-token");
    }

    #[test]
    fn with_a_token_every_write_needs_it_loopback_included() {
        let t = token();
        let good = bearer("Bearer 0123456789abcdef-token");
        assert_eq!(check_write(Some(&t), Some(&good), at("10.0.0.1:1")), Ok(()));
        let lower = bearer("bearer 0123456789abcdef-token");
        assert_eq!(
            check_write(Some(&t), Some(&lower), at("10.0.0.1:1")),
            Ok(())
        );
        for bad in [
            "Bearer 0123456789abcdef-toke",
            "Bearer 0123456789abcdef-token2",
            "Bearer  0123456789abcdef-token",
            "Basic 0123456789abcdef-token",
            "0123456789abcdef-token",
            "Bearer",
        ] {
            let got = check_write(Some(&t), Some(&bearer(bad)), at("127.0.0.1:1"));
            assert_eq!(got.map_err(|e| e.0), Err(StatusCode::UNAUTHORIZED), "{bad}");
        }
        let none = check_write(Some(&t), None, at("127.0.0.1:1"));
        assert_eq!(none.map_err(|e| e.0), Err(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn without_a_token_only_loopback_may_write() {
        for ok in [
            "127.0.0.1:5",
            "127.8.9.1:5",
            "[::1]:5",
            "[::ffff:127.0.0.1]:5",
        ] {
            assert_eq!(check_write(None, None, at(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "10.0.0.1:5",
            "0.0.0.0:5",
            "[::ffff:10.0.0.1]:5",
            "[2001:db8::1]:5",
        ] {
            let got = check_write(None, None, at(refused)).map_err(|e| e.0);
            assert_eq!(got, Err(StatusCode::FORBIDDEN), "{refused}");
        }
        let unknown = check_write(None, None, None).map_err(|e| e.0);
        assert_eq!(unknown, Err(StatusCode::FORBIDDEN));
    }
}
