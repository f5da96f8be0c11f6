//! Bearer-token authentication. Tokens come from a file (one per line) or a
//! Secret (every line of every value); they are never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::HttpError;

/// The accepted bearer tokens.
#[derive(Clone, Default)]
pub struct TokenSet {
    tokens: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("TokenSet")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl TokenSet {
    /// A set of the given tokens (empty and whitespace-only ones are dropped).
    pub fn new<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let tokens = tokens
            .into_iter()
            .map(|t| t.as_ref().trim().as_bytes().to_vec())
            .filter(|t| !t.is_empty())
            .collect();
        TokenSet {
            tokens: Arc::new(tokens),
        }
    }

    /// Tokens from a text: one per line; blank lines and `#` comments ignored.
    pub fn parse_lines(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// Tokens from a Secret's data: every line of every value.
    pub fn from_secret_data(data: &BTreeMap<String, k8s_openapi::ByteString>) -> Vec<String> {
        data.values()
            .flat_map(|v| Self::parse_lines(&String::from_utf8_lossy(&v.0)))
            .collect()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `candidate` is one of the tokens (constant time per token).
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = false;
        for token in self.tokens.iter() {
            found |= constant_time_eq(token, candidate);
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: rejects requests without a valid `Authorization: Bearer` token.
pub async fn require_token(
    State(tokens): State<TokenSet>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = header.and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match presented {
        Some(token) if tokens.accepts(token.as_bytes()) => next.run(request).await,
        Some(_) => HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid",
        )
        .into_response(),
        None => HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_lines_and_matching() {
        let lines = TokenSet::parse_lines("# comment\n\n  alpha \nbeta\n");
        assert_eq!(lines, ["alpha", "beta"]);
        let set = TokenSet::new(&lines);
        assert!(set.accepts(b"alpha"));
        assert!(set.accepts(b"beta"));
        assert!(!set.accepts(b"alph"));
        assert!(!set.accepts(b""));
        assert_eq!(format!("{set:?}"), "TokenSet { count: 2 }");
    }
}
