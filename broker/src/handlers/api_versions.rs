//! ApiVersions (key 18): the APIs and version ranges this broker serves.
//!
//! A request with a version above ours is answered (not closed) with
//! UNSUPPORTED_VERSION and our ranges in a v0 body, as Kafka does, so the
//! client can retry with a version we know.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::SUPPORTED;
use crate::errors::codes;

pub fn handle(_req: &ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    ranges(codes::NONE)
}

/// The v0-encodable answer to an ApiVersions request of a version we do
/// not serve.
pub fn unsupported_version() -> ApiVersionsResponse {
    ranges(codes::unsupported_version())
}

fn ranges(error_code: i16) -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = error_code;
    resp.api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    resp
}
