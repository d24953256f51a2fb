//! Every HTTP error as an RFC 9457 `application/problem+json` response, mapped in one place.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use serde::Serialize;

use crate::edge::Refusal;
use crate::engine::{CommandError, LayerError, PatchError};
use crate::offer::OfferError;

/// Everything a request can fail with. Each variant names the condition; `response` decides
/// the status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("send the body as {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BodyUnreadable,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("too many requests of this kind from your address; retry after {} s", retry_secs(*retry_after))]
    TooManyRequests { retry_after: Duration },
    #[error("the server could not save its state file; try again later")]
    StateNotSaved,
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error(
        "a broadcast ID is needed: send it as ?id=<broadcast ID> or as \"Authorization: Bearer <broadcast ID>\""
    )]
    MissingBroadcastId,
    #[error("this broadcast ID is not valid; get one at /broadcast")]
    UnknownBroadcast,
    #[error("this viewer link is not valid; ask the broadcaster for the current one")]
    UnknownView,
    #[error("there is no such session (it ended, or the URL is wrong)")]
    UnknownSession,
    #[error("creating broadcasts needs \"Authorization: Bearer <create token>\" on this server")]
    CreateTokenRequired,
    #[error("the broadcast is not live yet; retry shortly")]
    NotLive,
    #[error("the server is full: every live-broadcast slot is taken; try again later")]
    NoFreeSlot,
    #[error("the broadcast has as many viewers as it allows; try again later")]
    ViewerLimitReached,
    #[error("too many viewers are connecting to this broadcast right now; try again shortly")]
    TooManyPending,
    #[error("the ICE fragment is not usable: {0}")]
    BadFragment(&'static str),
    #[error(
        "If-Match does not name this session's current ETag (another ICE restart came first); PATCH again with the newest ETag or \"*\""
    )]
    StaleEtag,
    #[error("an ICE restart needs If-Match: \"*\" or the session's ETag")]
    IfMatchRequired,
    #[error("{method} is not allowed here")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("there is nothing at this address")]
    NotFound,
    #[error("send the wanted events as a JSON list of strings, e.g. [\"active\",\"inactive\"]")]
    BadEventList,
    #[error(
        "unknown event \"{0}\"; this server sends active, inactive, viewercount, reconnect, reconnecting, evicted, revoked and layers"
    )]
    UnknownEvent(String),
    #[error(
        "send the wanted layer as JSON with mediaId and rid only, e.g. {{\"mediaId\":\"0\",\"rid\":\"1\"}}, or {{\"mediaId\":\"0\"}} to let the server choose"
    )]
    BadLayerRequest,
    #[error("this broadcast has no such layer; the layers event lists them")]
    NoSuchLayer,
    #[error("the server has too many event streams open; try again shortly")]
    TooManyEventStreams,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("this edge cannot reach its origin right now; try again shortly")]
    OriginUnavailable,
    #[error(
        "this edge does not trust its origin's TLS certificate: the operator must give the \
         edge the origin's CA with --origin-ca"
    )]
    OriginUntrusted,
    #[error("edges register with the edge secret in the x-whipcast-edge-secret header")]
    EdgeSecretRequired,
    #[error(
        "send a heartbeat as JSON {{\"url\": \"http://edge:8080\", \"viewers\": n, \"capacity\": n}}"
    )]
    BadHeartbeat,
    #[error("this origin keeps track of as many edges as it allows")]
    TooManyEdges,
    #[error("this server holds as many broadcasts as it allows; unused ones expire after --id-ttl")]
    TooManyBroadcasts,
    #[error("this server does not record broadcasts (it was started without --record)")]
    RecordingOff,
    #[error("send {{\"on\": true}} or {{\"on\": false}}")]
    BadRecordSwitch,
    #[error("no such recording")]
    NoSuchRecording,
    #[error(
        "this file is being recorded now; switch Record off (or stop the broadcast), then delete it"
    )]
    RecordingInProgress,
    #[error("the recordings cannot be read on the server")]
    RecordingsUnreadable,
    #[error("the range is outside the file's {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error(
        "this download link is not valid or has expired; reload the broadcaster page for a new one"
    )]
    BadDownloadLink,
}

/// Whole seconds to wait, rounded up, at least one.
fn retry_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NoFreeSlot => Self::NoFreeSlot,
            CommandError::NotLive => Self::NotLive,
            CommandError::ViewerLimitReached => Self::ViewerLimitReached,
            CommandError::TooManyPending => Self::TooManyPending,
        }
    }
}

impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::UnknownSession => Self::UnknownSession,
            PatchError::StaleEtag => Self::StaleEtag,
            PatchError::IfMatchRequired => Self::IfMatchRequired,
        }
    }
}

impl From<LayerError> for ApiError {
    fn from(e: LayerError) -> Self {
        match e {
            LayerError::UnknownSession => Self::UnknownSession,
            LayerError::NoSuchLayer => Self::NoSuchLayer,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UnknownView => Self::UnknownView,
            Refusal::NotLive => Self::NotLive,
            Refusal::Unavailable => Self::OriginUnavailable,
            Refusal::Untrusted => Self::OriginUntrusted,
            Refusal::NoFreeSlot => Self::NoFreeSlot,
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        use OfferError as O;
        match self {
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyUnreadable
            | Self::BadEventList
            | Self::UnknownEvent(_)
            | Self::BadLayerRequest => StatusCode::BAD_REQUEST,
            Self::NoSuchLayer => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Offer(
                O::Malformed(_) | O::TooManyMedia(_) | O::NoMedia(_) | O::Negotiation(_),
            ) => StatusCode::BAD_REQUEST,
            Self::Offer(O::UnsupportedCodecs | O::CannotDecode(_) | O::CannotForward(_)) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::MissingBroadcastId | Self::UnknownBroadcast | Self::CreateTokenRequired => {
                StatusCode::UNAUTHORIZED
            }
            Self::UnknownView | Self::UnknownSession | Self::NotFound => StatusCode::NOT_FOUND,
            Self::NotLive => StatusCode::CONFLICT,
            Self::NoFreeSlot
            | Self::ViewerLimitReached
            | Self::TooManyPending
            | Self::ShuttingDown
            | Self::TooManyEventStreams
            | Self::StateNotSaved
            | Self::TooManyBroadcasts => StatusCode::SERVICE_UNAVAILABLE,
            Self::OriginUnavailable | Self::OriginUntrusted => StatusCode::BAD_GATEWAY,
            Self::EdgeSecretRequired => StatusCode::FORBIDDEN,
            Self::BadHeartbeat => StatusCode::BAD_REQUEST,
            Self::TooManyEdges => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadFragment(_) => StatusCode::BAD_REQUEST,
            Self::StaleEtag => StatusCode::PRECONDITION_FAILED,
            Self::IfMatchRequired => StatusCode::PRECONDITION_REQUIRED,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RecordingOff | Self::RecordingInProgress => StatusCode::CONFLICT,
            Self::BadRecordSwitch => StatusCode::BAD_REQUEST,
            Self::NoSuchRecording => StatusCode::NOT_FOUND,
            Self::RecordingsUnreadable => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::BadDownloadLink => StatusCode::FORBIDDEN,
        }
    }

    /// How long a client should wait before retrying, for the conditions that pass.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NotLive => Some(Duration::from_secs(2)),
            Self::TooManyRequests { retry_after } => {
                Some(Duration::from_secs(retry_secs(*retry_after)))
            }
            Self::StateNotSaved | Self::OriginUnavailable => Some(Duration::from_secs(5)),
            Self::NoFreeSlot => Some(Duration::from_secs(10)),
            Self::ViewerLimitReached
            | Self::TooManyPending
            | Self::ShuttingDown
            | Self::TooManyEventStreams => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    pub fn response(&self) -> super::HttpResponse {
        let status = self.status();
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let body = serde_json::to_vec(&problem).expect("a problem serialises");
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/problem+json");
        if let Some(after) = self.retry_after() {
            builder = builder.header(header::RETRY_AFTER, after.as_secs());
        }
        match self {
            Self::MethodNotAllowed { allow, .. } => builder = builder.header(header::ALLOW, *allow),
            Self::RangeNotSatisfiable { len } => {
                builder = builder.header(header::CONTENT_RANGE, format!("bytes */{len}"))
            }
            Self::MissingBroadcastId | Self::UnknownBroadcast | Self::CreateTokenRequired => {
                builder = builder.header(header::WWW_AUTHENTICATE, "Bearer")
            }
            _ => {}
        }
        builder
            .body(super::full(Bytes::from(body)))
            .expect("static headers are valid")
    }
}
