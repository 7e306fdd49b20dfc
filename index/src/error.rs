//! The errors of a search, and their Elasticsearch shape.
//!
//! Every error answers with the HTTP status and the body Elasticsearch would
//! give for the same mistake, so that clients (Kibana, the official client
//! libraries, `curl` scripts) recognise them:
//!
//! ```json
//! {"error": {"root_cause": [{"type": "parsing_exception", "reason": "..."}],
//!            "type": "parsing_exception", "reason": "..."},
//!  "status": 400}
//! ```

use serde_json::{json, Value};

/// Why a search (or count) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// A query, aggregation, sort or parameter Elasticsearch has but this
    /// broker does not support; the message names it.
    #[error("{0}")]
    Unsupported(String),
    /// A malformed request: bad JSON shape, wrong value type, bad number.
    #[error("{0}")]
    Parse(String),
    /// `from + size` over the window a search may page through.
    #[error("Result window is too large, from + size must be less than or equal to: [{max}] but was [{}]. See the scroll api for a more efficient way to request large data sets. This limit can be set by changing the [index.max_result_window] index level setting.", .from.saturating_add(*.size))]
    ResultWindow {
        from: usize,
        size: usize,
        max: usize,
    },
    /// An aggregation asked for more buckets (or memory) than allowed.
    #[error("{0}")]
    TooManyBuckets(String),
    /// The search ran past its deadline.
    #[error("the search timed out")]
    Timeout,
    /// Tantivy failed: an I/O error, a corrupt index, a bug.
    #[error("{0}")]
    Internal(String),
}

impl SearchError {
    /// The HTTP status Elasticsearch answers with.
    pub fn status(&self) -> u16 {
        match self {
            SearchError::Unsupported(_)
            | SearchError::Parse(_)
            | SearchError::ResultWindow { .. }
            | SearchError::TooManyBuckets(_) => 400,
            SearchError::Timeout => 504,
            SearchError::Internal(_) => 500,
        }
    }

    /// The Elasticsearch `type` of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            SearchError::Unsupported(_) => "illegal_argument_exception",
            SearchError::Parse(_) => "parsing_exception",
            SearchError::ResultWindow { .. } => "search_phase_execution_exception",
            SearchError::TooManyBuckets(_) => "too_many_buckets_exception",
            SearchError::Timeout => "timeout_exception",
            SearchError::Internal(_) => "exception",
        }
    }

    /// The response body, shaped like Elasticsearch's.
    pub fn body(&self) -> Value {
        let reason = self.to_string();
        let error = match self {
            // Elasticsearch reports the window from the shards: a phase
            // failure caused by an illegal argument.
            SearchError::ResultWindow { .. } => {
                let cause = json!({"type": "illegal_argument_exception", "reason": reason});
                json!({
                    "root_cause": [cause.clone()],
                    "type": self.kind(),
                    "reason": "all shards failed",
                    "phase": "query",
                    "grouped": true,
                    "failed_shards": [],
                    "caused_by": cause,
                })
            }
            _ => json!({
                "root_cause": [{"type": self.kind(), "reason": reason}],
                "type": self.kind(),
                "reason": reason,
            }),
        };
        json!({"error": error, "status": self.status()})
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> SearchError {
        use tantivy::aggregation::AggregationError as A;
        match e {
            tantivy::TantivyError::AggregationError(A::BucketLimitExceeded { limit, current }) => {
                SearchError::TooManyBuckets(format!(
                    "Trying to create too many buckets. Must be less than or equal to: [{limit}] \
                     but was [{current}]. This limit can be set by changing the \
                     [search.max_buckets] cluster level setting."
                ))
            }
            tantivy::TantivyError::AggregationError(A::MemoryExceeded { limit, current }) => {
                SearchError::TooManyBuckets(format!(
                    "Trying to use too much memory for the aggregation: limit [{limit:?}], \
                     needed at least [{current:?}]"
                ))
            }
            tantivy::TantivyError::AggregationError(
                a @ (A::InvalidRequest(_) | A::DateHistogramParseError(_)),
            ) => SearchError::Parse(a.to_string()),
            // What the request chose (an aggregation's field or
            // parameters) rather than a failure of the index.
            e @ (tantivy::TantivyError::InvalidArgument(_)
            | tantivy::TantivyError::SchemaError(_)
            | tantivy::TantivyError::FieldNotFound(_)) => SearchError::Parse(e.to_string()),
            other => SearchError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_shaped_like_elasticsearch() {
        let e = SearchError::Parse("unknown query [x]".into());
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": {"root_cause": [{"type": "parsing_exception", "reason": "unknown query [x]"}],
                             "type": "parsing_exception", "reason": "unknown query [x]"},
                   "status": 400})
        );
        let w = SearchError::ResultWindow {
            from: 9_995,
            size: 10,
            max: 10_000,
        };
        let body = w.body();
        assert_eq!(body["status"], 400);
        assert_eq!(body["error"]["type"], "search_phase_execution_exception");
        let reason = body["error"]["root_cause"][0]["reason"].as_str().unwrap();
        assert!(reason.starts_with(
            "Result window is too large, from + size must be less than or equal to: [10000] but was [10005]."
        ));
        assert_eq!(SearchError::Internal("io".into()).status(), 500);
        assert_eq!(SearchError::Timeout.status(), 504);
    }
}
