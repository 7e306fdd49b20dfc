//! The search API on the admin port: the calls Elasticsearch and
//! OpenSearch clients make, over the shards' indexes (`sluice-index`).
//!
//! - `GET /`, `HEAD /`: the cluster info clients read on connecting
//!   (Elasticsearch 8 clients check the `X-Elastic-Product` header, sent
//!   on every answer here).
//! - `GET|POST /_search`, `/{targets}/_search`, `/_count`,
//!   `/{targets}/_count`: targets are comma-separated topic names, wildcard
//!   patterns (`logs-*`) or `_all`/`*`, over the topics that set
//!   `sluice.search.enable`. A named topic that is not searchable is
//!   `index_not_found_exception` (404), as Elasticsearch answers; a
//!   pattern that matches nothing gives no hits.
//! - A search runs on tokio's blocking threads (never on the admin
//!   thread's loop, never on a shard core), at most `SEARCHES_MAX` at once
//!   (more wait for a slot, at most `SEARCH_TIMEOUT`), and fans out over
//!   every shard index of the node: each document names its topic, so the
//!   query filters on the targeted topics' ids. Bounds: request bodies of
//!   `SEARCH_BODY_BYTES_MAX`, the result window, buckets, time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sluice_index::search::{glob, Limits, SearchRequest, Target};
use sluice_index::Fields;
use sluice_raft::MetadataView;
use sluice_shard::SearchHandles;

/// Searches running at once on this node.
pub const SEARCHES_MAX: usize = 4;
/// Largest search request body.
pub const SEARCH_BODY_BYTES_MAX: usize = 1 << 20;
/// Longest a search may take, waiting for a slot included.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The Elasticsearch version reported to clients (the API they speak).
const ES_VERSION: &str = "8.11.0";

pub struct SearchState {
    handles: Arc<SearchHandles>,
    permits: Arc<tokio::sync::Semaphore>,
    fields: Arc<Fields>,
}

impl SearchState {
    pub fn new(handles: Arc<SearchHandles>) -> SearchState {
        SearchState {
            handles,
            permits: Arc::new(tokio::sync::Semaphore::new(SEARCHES_MAX)),
            fields: Arc::new(Fields::new()),
        }
    }
}

impl SearchState {
    /// The open indexes' figures, by shard.
    pub fn figures(&self) -> Vec<sluice_index::IndexFigures> {
        self.handles.open().map(|s| s.figures()).collect()
    }
}

/// The API a path belongs to, if it is a search one.
enum Call {
    Info,
    Search(String),
    Count(String),
}

fn call_of(path: &str) -> Option<Call> {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Some(Call::Info);
    }
    let rest = path.strip_prefix('/')?;
    match rest.rsplit_once('/') {
        None if rest == "_search" => Some(Call::Search("_all".into())),
        None if rest == "_count" => Some(Call::Count("_all".into())),
        Some((targets, "_search")) if !targets.contains('/') => {
            Some(Call::Search(decode_path(targets)))
        }
        Some((targets, "_count")) if !targets.contains('/') => {
            Some(Call::Count(decode_path(targets)))
        }
        _ => None,
    }
}

/// Whether the admin router should hand `path` here.
pub fn handles(path: &str) -> bool {
    call_of(path).is_some()
}

pub type Answer = Response<Full<Bytes>>;

/// Serves one search-API request.
pub async fn serve(req: Request<Incoming>, view: Arc<MetadataView>, state: &SearchState) -> Answer {
    let Some(call) = call_of(req.uri().path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "resource_not_found_exception",
            "no such API",
        );
    };
    let method = req.method().clone();
    let params = query_params(req.uri().query());
    match (&method, call) {
        (&Method::GET | &Method::HEAD, Call::Info) => {
            answer(StatusCode::OK, &info(&view), method == Method::HEAD)
        }
        (&Method::GET | &Method::POST, call @ (Call::Search(_) | Call::Count(_))) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            run(call, body, params, view, state).await
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "illegal_argument_exception",
            &format!("method [{method}] is not allowed here"),
        ),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Option<Value>, Answer> {
    let collected = Limited::new(req.into_body(), SEARCH_BODY_BYTES_MAX)
        .collect()
        .await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "illegal_argument_exception",
                &format!("request body larger than {SEARCH_BODY_BYTES_MAX} bytes or unreadable"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "parsing_exception",
            &format!("request body is not JSON: {e}"),
        )
    })
}

async fn run(
    call: Call,
    body: Option<Value>,
    params: Vec<(String, String)>,
    view: Arc<MetadataView>,
    state: &SearchState,
) -> Answer {
    let (targets, counting) = match &call {
        Call::Search(t) => (t.as_str(), false),
        Call::Count(t) => (t.as_str(), true),
        Call::Info => unreachable!("routed above"),
    };
    let topic_ids = match resolve_targets(targets, &view) {
        Ok(ids) => ids,
        Err(name) => {
            return error(
                StatusCode::NOT_FOUND,
                "index_not_found_exception",
                &format!(
                "no such index [{name}] (a topic that exists and sets sluice.search.enable=true)"
            ),
            )
        }
    };
    let started = Instant::now();
    let permit =
        match tokio::time::timeout(SEARCH_TIMEOUT, state.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "es_rejected_execution_exception",
                    "too many searches at once",
                )
            }
        };
    let fields = state.fields.clone();
    let handles = state.handles.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let req = SearchRequest::parse(&fields, body.as_ref(), &params)?;
        let mut shards = Vec::new();
        for shared in handles.open() {
            if !topic_ids.is_empty() {
                let searcher = shared
                    .searcher()
                    .map_err(|e| sluice_index::error::SearchError::Internal(e.to_string()))?;
                shared
                    .stats
                    .searches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shards.push(Target {
                    searcher,
                    topic_ids: topic_ids.clone(),
                });
            }
        }
        let limits = Limits {
            deadline: Some(started + SEARCH_TIMEOUT),
            ..Limits::default()
        };
        let answer = if counting {
            sluice_index::search::count(&fields, &req, &shards, &limits)
        } else {
            sluice_index::search::search(&fields, &req, &shards, &limits)
        };
        drop(shards);
        sluice_index::writer::release_free_memory();
        answer
    });
    match job.await {
        Ok(Ok(body)) => answer(StatusCode::OK, &body, false),
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            answer(status, &e.body(), false)
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "search_phase_execution_exception",
            "the search failed (a damaged index file?); it is rebuilt from the log at the next start",
        ),
    }
}

/// The ids of the searchable topics `targets` names; `Err(name)` for a
/// named topic that is not one.
fn resolve_targets(targets: &str, view: &MetadataView) -> Result<Vec<[u8; 16]>, String> {
    let mut ids = std::collections::BTreeSet::new();
    let searchable = || {
        view.topics
            .iter()
            .filter(|(_, t)| sluice_shard::search_enabled(&t.configs))
    };
    for target in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if target == "_all" || target == "*" {
            ids.extend(searchable().map(|(_, t)| t.id));
        } else if target.contains('*') {
            ids.extend(
                searchable()
                    .filter(|(n, _)| glob(target, n))
                    .map(|(_, t)| t.id),
            );
        } else {
            match view.topics.get(target) {
                Some(t) if sluice_shard::search_enabled(&t.configs) => {
                    ids.insert(t.id);
                }
                _ => return Err(target.to_string()),
            }
        }
    }
    Ok(ids.into_iter().collect())
}

fn info(view: &MetadataView) -> Value {
    json!({
        "name": format!("sluice-{}", view.node_id),
        "cluster_name": "sluice",
        "cluster_uuid": "sluice",
        "version": {
            "number": ES_VERSION,
            "build_flavor": "default",
            "build_type": "sluice",
            "build_hash": env!("CARGO_PKG_VERSION"),
            "build_date": "2026-01-01T00:00:00.000Z",
            "build_snapshot": false,
            "lucene_version": "9.8.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        },
        "tagline": "You Know, for Search"
    })
}

fn error(status: StatusCode, kind: &str, reason: &str) -> Answer {
    let cause = json!({"type": kind, "reason": reason});
    let body = json!({
        "error": {"root_cause": [cause], "type": kind, "reason": reason},
        "status": status.as_u16()
    });
    answer(status, &body, false)
}

fn answer(status: StatusCode, body: &Value, head: bool) -> Answer {
    let text = if head {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut resp = Response::new(Full::new(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-elastic-product",
        hyper::header::HeaderValue::from_static("Elasticsearch"),
    );
    resp
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(64)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode_path(k), decode_path(&v.replace('+', " ")))
        })
        .collect()
}

/// Percent-decoding of a path or query component (invalid escapes are
/// kept as they are).
fn decode_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_patterns() {
        assert!(matches!(call_of("/"), Some(Call::Info)));
        assert!(matches!(call_of(""), Some(Call::Info)));
        assert!(matches!(call_of("/logs-*/_search"), Some(Call::Search(t)) if t == "logs-*"));
        assert!(matches!(call_of("/a%2Cb/_count"), Some(Call::Count(t)) if t == "a,b"));
        assert!(matches!(call_of("/_search"), Some(Call::Search(t)) if t == "_all"));
        assert!(call_of("/metrics").is_none());
        assert!(call_of("/a/b/_search").is_none());
        assert!(glob("logs-*", "logs-app"));
        assert!(!glob("logs-*", "log-app"));
        assert!(glob("*-app", "logs-app"));
        assert!(glob("l*s*p", "logs-app"));
        assert!(!glob("l*x*p", "logs-app"));
        assert_eq!(decode_path("a%20b%zz"), "a b%zz");
    }
}
