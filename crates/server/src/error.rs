//! HTTP errors: every failure leaves the API as JSON `{"error", "message"}`
//! with a status that says whose fault it is.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable error code (`bad_request`, `unauthorized`, `not_found`,
    /// `unknown_filter_value`, `too_many_proxies`, ...).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// For unknown filter values: the values that exist, when there are few
    /// enough to list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_values: Option<Vec<String>>,
}

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// Status code.
    pub status: StatusCode,
    /// The JSON body.
    pub body: ErrorBody,
}

/// Unknown filter values list the valid ones only up to this many.
pub const MAX_LISTED_VALUES: usize = 400;

impl HttpError {
    /// An error with `status`, machine code `error` and `message`.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                message: message.into(),
                valid_values: None,
            },
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`; the detail is logged, the client gets `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 400 `unknown_filter_value`, listing the valid values when they are few.
    pub fn unknown_value(err: vpno_catalog::UnknownValue) -> Self {
        let listed = err.valid.len() <= MAX_LISTED_VALUES;
        let message = if listed {
            format!(
                "unknown {} {:?}; valid values are listed in valid_values",
                err.field, err.value
            )
        } else {
            format!(
                "unknown {} {:?}; {} values exist, see GET /servers for them",
                err.field,
                err.value,
                err.valid.len()
            )
        };
        let mut e = Self::new(StatusCode::BAD_REQUEST, "unknown_filter_value", message);
        if listed {
            e.body.valid_values = Some(err.valid);
        }
        e
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<axum::extract::rejection::JsonRejection> for HttpError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as R;
        let status = rejection.status();
        let code = match &rejection {
            R::JsonDataError(_) => "invalid_body",
            R::JsonSyntaxError(_) => "malformed_json",
            R::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "bad_request",
        };
        // Keep 4xx; a body read failure is the client's (too large, aborted).
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        HttpError::new(status, code, rejection.body_text())
    }
}
