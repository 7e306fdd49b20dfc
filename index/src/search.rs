//! A search over several shards' indexes, with Elasticsearch's request and
//! response bodies.
//!
//! A [`SearchRequest`] is parsed once from the body and URL parameters of
//! `_search` (or `_count`); [`search`] runs it on every [`Target`] (one
//! shard's searcher and the topics it covers there), merges the hits and
//! the aggregations, and answers with Elasticsearch's response body.
//!
//! Supported request (body keys, and URL parameters where noted):
//! - `query` (see [`crate::query`]), or `q` (with `df`, `default_operator`);
//! - `from`, `size` (`from + size` within [`Limits::result_window_max`]);
//! - `sort` (`sort=field:order,...`): `_score` (default, descending),
//!   `@timestamp`, `_offset`, `_partition` (ascending by default), `_doc`;
//!   as a name, `{name: order}` or `{name: {order}}`; ties are broken by
//!   partition then offset, ascending, for a deterministic order;
//! - `_source` (`_source`, `_source_includes`, `_source_excludes`):
//!   `false`, a field (pattern) list or `{includes, excludes}`, applied to
//!   the paths of the record's value (`*` wildcards, dotted paths);
//! - `aggs`/`aggregations`: `terms`, `date_histogram`, `histogram`,
//!   `range`, `avg`, `min`, `max`, `sum`, `stats`, `extended_stats`,
//!   `value_count`, `cardinality`, `percentiles`, nested under `aggs`.
//!   Field names map through [`Fields::fast_column`] (a value path's
//!   `user` and `user.keyword` are both the exact column); agg names are
//!   the caller's;
//! - `track_total_hits` (bool or a count; totals are counted exactly),
//!   `track_scores`, `timeout` (a deadline checked between targets),
//!   `rest_total_hits_as_int`;
//! - ignored: `version`, `seq_no_primary_term`, `stored_fields`,
//!   `explain: false`, `profile: false` and the URL parameters that do not
//!   change the response (`pretty`, `preference`, `ignore_unavailable`…).
//!
//! Anything else is [`SearchError::Unsupported`], naming it.
//!
//! A hit is `{"_index": topic, "_id": "{partition}-{offset}", "_score",
//! "_source", "sort"?, "_partition", "_offset", "@timestamp", "_key",
//! "_headers"}`; its `_source` is the record's value: a JSON object as it
//! is, other UTF-8 as `{"message": text}` (as indexed), other bytes as
//! `{"_binary": true}`, and `null` without a value.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{
    AggContextParams, AggregationLimitsGuard, DistributedAggregationCollector,
};
use tantivy::collector::sort_key::NaturalComparator;
use tantivy::collector::{Count, SegmentSortKeyComputer, SortKeyComputer, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermSetQuery};
use tantivy::schema::{OwnedValue, Value as _};
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DateTime, DocAddress, DocId, Score, Searcher, SegmentReader, TantivyDocument, Term};

use crate::error::SearchError;
use crate::query::{parse_query, parse_query_string};
use crate::schema::{self, FieldRef, Fields};

type Result<T> = std::result::Result<T, SearchError>;

/// The bounds of one search.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The most `from + size` may be (`index.max_result_window`).
    pub result_window_max: usize,
    /// The most buckets an aggregation may answer with (`search.max_buckets`).
    pub buckets_max: u32,
    /// The most memory the aggregations of a search may use.
    pub aggregation_memory_bytes_max: u64,
    /// Bytes of stored values (`_source`) one answer may carry.
    pub source_bytes_max: u64,
    /// When the search must be over: checked between targets.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            result_window_max: 10_000,
            buckets_max: 65_535,
            aggregation_memory_bytes_max: 64 << 20,
            source_bytes_max: 64 << 20,
            deadline: None,
        }
    }
}

/// One shard's searcher and the topics (ids) a search covers on it.
#[derive(Clone)]
pub struct Target {
    pub searcher: Searcher,
    pub topic_ids: Vec<[u8; 16]>,
}

/// What hits are ordered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortField {
    Score,
    Timestamp,
    Offset,
    Partition,
}

/// One key of a sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortSpec {
    pub field: SortField,
    pub descending: bool,
}

/// Which parts of the record's value a hit's `_source` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFilter {
    /// The whole value.
    All,
    /// No `_source`.
    Off,
    /// The paths matching an include (all when none) and no exclude.
    Filter {
        includes: Vec<String>,
        excludes: Vec<String>,
    },
}

/// How hits are counted (`track_total_hits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TotalHits {
    /// Exactly (`true`, the default here).
    Exact,
    /// Not reported (`false`).
    Off,
    /// Up to a count, then `"relation": "gte"`.
    UpTo(u64),
}

/// A parsed `_search` (or `_count`) request.
#[derive(Debug)]
pub struct SearchRequest {
    pub query: Box<dyn Query>,
    pub from: usize,
    pub size: usize,
    /// Empty: by score.
    pub sort: Vec<SortSpec>,
    /// Scores hits even when sorting by fields.
    pub track_scores: bool,
    pub source: SourceFilter,
    /// Already mapped onto the fast columns.
    pub aggs: Option<Aggregations>,
    pub track_total_hits: TotalHits,
    pub timeout: Option<Duration>,
    /// `hits.total` as a number (`rest_total_hits_as_int`).
    pub total_hits_as_int: bool,
}

impl Clone for SearchRequest {
    fn clone(&self) -> SearchRequest {
        SearchRequest {
            query: self.query.box_clone(),
            from: self.from,
            size: self.size,
            sort: self.sort.clone(),
            track_scores: self.track_scores,
            source: self.source.clone(),
            aggs: self.aggs.clone(),
            track_total_hits: self.track_total_hits,
            timeout: self.timeout,
            total_hits_as_int: self.total_hits_as_int,
        }
    }
}

/// The aggregation types handed to Tantivy.
const AGG_TYPES: &[&str] = &[
    "terms",
    "date_histogram",
    "histogram",
    "range",
    "avg",
    "min",
    "max",
    "sum",
    "stats",
    "extended_stats",
    "value_count",
    "cardinality",
    "percentiles",
];

/// How deeply aggregations may nest.
const AGG_DEPTH_MAX: usize = 16;

/// URL parameters accepted and ignored: they do not change the response.
const IGNORED_PARAMS: &[&str] = &[
    "pretty",
    "human",
    "error_trace",
    "ignore_unavailable",
    "allow_no_indices",
    "expand_wildcards",
    "ignore_throttled",
    "preference",
    "routing",
    "search_type",
    "request_cache",
    "batched_reduce_size",
    "pre_filter_shard_size",
    "max_concurrent_shard_requests",
    "ccs_minimize_roundtrips",
    "allow_partial_search_results",
    "analyze_wildcard",
    "lenient",
    "version",
    "seq_no_primary_term",
    "stored_fields",
];

impl SearchRequest {
    /// Parses the body (if any) and the URL parameters of a search; the
    /// parameters override the body (as in Elasticsearch).
    pub fn parse(
        fields: &Fields,
        body: Option<&Value>,
        params: &[(String, String)],
    ) -> Result<SearchRequest> {
        let mut req = SearchRequest {
            query: Box::new(tantivy::query::AllQuery),
            from: 0,
            size: 10,
            sort: Vec::new(),
            track_scores: false,
            source: SourceFilter::All,
            aggs: None,
            track_total_hits: TotalHits::Exact,
            timeout: None,
            total_hits_as_int: false,
        };
        if let Some(body) = body.filter(|b| !b.is_null()) {
            let o = body
                .as_object()
                .ok_or_else(|| SearchError::Parse("the request body must be an object".into()))?;
            for (k, v) in o {
                match k.as_str() {
                    "query" => req.query = parse_query(fields, v)?,
                    "from" => req.from = count_value("from", v)?,
                    "size" => req.size = count_value("size", v)?,
                    "sort" => req.sort = parse_sort(fields, v)?,
                    "_source" => req.source = parse_source(v)?,
                    "aggs" | "aggregations" => {
                        if req.aggs.is_some() {
                            return Err(SearchError::Parse(
                                "Found two aggregation definitions: [aggs] and [aggregations]"
                                    .into(),
                            ));
                        }
                        req.aggs = Some(parse_aggs(fields, v)?);
                    }
                    "track_total_hits" => req.track_total_hits = parse_track_total_hits(v)?,
                    "track_scores" => req.track_scores = bool_value(k, v)?,
                    "timeout" => {
                        let t = v.as_str().ok_or_else(|| {
                            SearchError::Parse("[timeout] must be a string like \"1s\"".into())
                        })?;
                        req.timeout = Some(parse_duration(t)?);
                    }
                    "version" | "seq_no_primary_term" | "stored_fields" => {}
                    "explain" | "profile" if v.as_bool() != Some(true) => {}
                    other => {
                        return Err(SearchError::Unsupported(format!(
                            "search request key [{other}] is not supported"
                        )))
                    }
                }
            }
        }
        let param = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        for (k, v) in params {
            match k.as_str() {
                "q" | "df" | "default_operator" => {}
                "from" => req.from = count_param(k, v)?,
                "size" => req.size = count_param(k, v)?,
                "sort" => {
                    let specs = v
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| match s.trim().rsplit_once(':') {
                            Some((f, o)) => json!({ f: o }),
                            None => Value::String(s.trim().to_string()),
                        })
                        .collect::<Vec<_>>();
                    req.sort = parse_sort(fields, &Value::Array(specs))?;
                }
                "track_total_hits" => {
                    let v = match v.as_str() {
                        "true" | "" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        n => Value::from(n.parse::<i64>().map_err(|_| {
                            SearchError::Parse(format!("bad [track_total_hits] [{n}]"))
                        })?),
                    };
                    req.track_total_hits = parse_track_total_hits(&v)?;
                }
                "track_scores" => req.track_scores = bool_param(k, v)?,
                "rest_total_hits_as_int" => req.total_hits_as_int = bool_param(k, v)?,
                "timeout" => req.timeout = Some(parse_duration(v)?),
                "_source" => {
                    req.source = match v.as_str() {
                        "true" | "" => SourceFilter::All,
                        "false" => SourceFilter::Off,
                        list => SourceFilter::Filter {
                            includes: split_list(list),
                            excludes: Vec::new(),
                        },
                    }
                }
                "_source_includes" | "_source_excludes" => {
                    let (mut includes, mut excludes) =
                        match std::mem::replace(&mut req.source, SourceFilter::All) {
                            SourceFilter::Filter { includes, excludes } => (includes, excludes),
                            _ => (Vec::new(), Vec::new()),
                        };
                    if k == "_source_includes" {
                        includes = split_list(v);
                    } else {
                        excludes = split_list(v);
                    }
                    req.source = SourceFilter::Filter { includes, excludes };
                }
                other if IGNORED_PARAMS.contains(&other) => {}
                other => {
                    return Err(SearchError::Unsupported(format!(
                        "request parameter [{other}] is not supported"
                    )))
                }
            }
        }
        if let Some(q) = param("q") {
            let and = match param("default_operator") {
                None => false,
                Some(o) if o.eq_ignore_ascii_case("and") => true,
                Some(o) if o.eq_ignore_ascii_case("or") => false,
                Some(o) => return Err(SearchError::Parse(format!("bad [default_operator] [{o}]"))),
            };
            req.query = parse_query_string(fields, q, param("df"), and)?;
        }
        Ok(req)
    }

    /// Whether hits are scored.
    fn scoring(&self) -> bool {
        self.sort.is_empty()
            || self.track_scores
            || self.sort.iter().any(|s| s.field == SortField::Score)
    }
}

// ---- request parsing helpers ----

fn count_value(name: &str, v: &Value) -> Result<usize> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if i < 0 => Err(SearchError::Parse(format!(
                "[{name}] parameter cannot be negative, found [{i}]"
            ))),
            Some(i) => Ok(usize::try_from(i).unwrap_or(usize::MAX)),
            None => Err(SearchError::Parse(format!(
                "[{name}] must be an integer, found [{n}]"
            ))),
        },
        Value::String(s) => count_param(name, s),
        _ => Err(SearchError::Parse(format!(
            "[{name}] must be an integer, found [{v}]"
        ))),
    }
}

fn count_param(name: &str, v: &str) -> Result<usize> {
    let i: i64 = v
        .trim()
        .parse()
        .map_err(|_| SearchError::Parse(format!("[{name}] must be an integer, found [{v}]")))?;
    count_value(name, &Value::from(i))
}

fn bool_value(name: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => bool_param(name, s),
        _ => Err(SearchError::Parse(format!(
            "[{name}] must be a boolean, found [{v}]"
        ))),
    }
}

fn bool_param(name: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "" => Ok(true),
        "false" => Ok(false),
        _ => Err(SearchError::Parse(format!(
            "[{name}] must be a boolean, found [{v}]"
        ))),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_track_total_hits(v: &Value) -> Result<TotalHits> {
    match v {
        Value::Bool(true) => Ok(TotalHits::Exact),
        Value::Bool(false) => Ok(TotalHits::Off),
        Value::Number(n) => match n.as_i64() {
            Some(-1) => Ok(TotalHits::Off),
            Some(i) if i >= 0 => Ok(TotalHits::UpTo(i as u64)),
            _ => Err(SearchError::Parse(format!("bad [track_total_hits] [{n}]"))),
        },
        _ => Err(SearchError::Parse(format!("bad [track_total_hits] [{v}]"))),
    }
}

/// `"1s"`, `"500ms"`, `"2m"`…
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let bad = || SearchError::Parse(format!("failed to parse time value [{s}]"));
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "nanos" => Duration::from_nanos(n),
        "micros" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3_600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// `sort`: a name, `{name: order}`, `{name: {order, ...}}` or a list.
fn parse_sort(fields: &Fields, v: &Value) -> Result<Vec<SortSpec>> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut out: Vec<SortSpec> = Vec::new();
    for item in items {
        let (name, order) = match item {
            Value::String(s) => (s.as_str(), None),
            Value::Object(o) if o.len() == 1 => {
                let Some((name, spec)) = o.iter().next() else {
                    continue;
                };
                let order = match spec {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(p) => {
                        for k in p.keys() {
                            match k.as_str() {
                                "order" | "unmapped_type" | "format" | "numeric_type" => {}
                                "missing"
                                    if p.get("missing").and_then(Value::as_str)
                                        == Some("_last") => {}
                                other => {
                                    return Err(SearchError::Unsupported(format!(
                                        "sort option [{other}] of [{name}] is not supported"
                                    )))
                                }
                            }
                        }
                        p.get("order").and_then(Value::as_str)
                    }
                    _ => return Err(SearchError::Parse(format!("bad sort on [{name}]"))),
                };
                (name.as_str(), order)
            }
            _ => return Err(SearchError::Parse(format!("bad sort [{item}]"))),
        };
        let field = match name {
            "_score" => SortField::Score,
            // Index order: the tie-breakers alone.
            "_doc" => continue,
            _ => match fields.resolve(name) {
                FieldRef::Timestamp(_) => SortField::Timestamp,
                FieldRef::Number(f) if f == fields.offset => SortField::Offset,
                FieldRef::Number(_) => SortField::Partition,
                _ => {
                    return Err(SearchError::Unsupported(format!(
                        "sort on [{name}] is not supported: sort by _score, @timestamp, _offset or _partition"
                    )))
                }
            },
        };
        let descending = match order {
            None => field == SortField::Score,
            Some(o) if o.eq_ignore_ascii_case("desc") => true,
            Some(o) if o.eq_ignore_ascii_case("asc") => false,
            Some(o) => {
                return Err(SearchError::Parse(format!(
                    "sort order [{o}] of [{name}] must be asc or desc"
                )))
            }
        };
        // A second key on the same field orders nothing more.
        if !out.iter().any(|s| s.field == field) {
            out.push(SortSpec { field, descending });
        }
    }
    Ok(out)
}

/// `_source`: a bool, a pattern, a list of patterns or `{includes, excludes}`.
fn parse_source(v: &Value) -> Result<SourceFilter> {
    let list = |v: Option<&Value>| -> Result<Vec<String>> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        SearchError::Parse("[_source] patterns must be strings".into())
                    })
                })
                .collect(),
            Some(v) => Err(SearchError::Parse(format!("bad [_source] [{v}]"))),
        }
    };
    match v {
        Value::Bool(true) => Ok(SourceFilter::All),
        Value::Bool(false) => Ok(SourceFilter::Off),
        Value::String(_) | Value::Array(_) => Ok(SourceFilter::Filter {
            includes: list(Some(v))?,
            excludes: Vec::new(),
        }),
        Value::Object(o) => {
            for k in o.keys() {
                if !matches!(k.as_str(), "includes" | "include" | "excludes" | "exclude") {
                    return Err(SearchError::Parse(format!("unknown [_source] key [{k}]")));
                }
            }
            Ok(SourceFilter::Filter {
                includes: list(o.get("includes").or_else(|| o.get("include")))?,
                excludes: list(o.get("excludes").or_else(|| o.get("exclude")))?,
            })
        }
        _ => Err(SearchError::Parse(format!("bad [_source] [{v}]"))),
    }
}

/// Checks the aggregation request, maps its field names onto the fast
/// columns and hands it to Tantivy's (Elasticsearch-compatible) parser.
pub fn parse_aggs(fields: &Fields, v: &Value) -> Result<Aggregations> {
    let rewritten = rewrite_aggs(fields, v, 0)?;
    serde_json::from_value::<Aggregations>(rewritten)
        .map_err(|e| SearchError::Parse(format!("bad aggregation request: {e}")))
}

fn rewrite_aggs(fields: &Fields, v: &Value, depth: usize) -> Result<Value> {
    if depth > AGG_DEPTH_MAX {
        return Err(SearchError::Parse(format!(
            "aggregations are nested more than [{AGG_DEPTH_MAX}] levels deep"
        )));
    }
    let o = v
        .as_object()
        .ok_or_else(|| SearchError::Parse("[aggs] must be an object".into()))?;
    let mut out = Map::new();
    for (name, agg) in o {
        let a = agg
            .as_object()
            .ok_or_else(|| SearchError::Parse(format!("aggregation [{name}] must be an object")))?;
        let mut rewritten = Map::new();
        let mut typ: Option<&str> = None;
        for (k, body) in a {
            match k.as_str() {
                "aggs" | "aggregations" => {
                    if rewritten.contains_key("aggs") {
                        return Err(SearchError::Parse(format!(
                            "aggregation [{name}] has both [aggs] and [aggregations]"
                        )));
                    }
                    rewritten.insert("aggs".into(), rewrite_aggs(fields, body, depth + 1)?);
                }
                t if AGG_TYPES.contains(&t) => {
                    if let Some(first) = typ {
                        return Err(SearchError::Parse(format!(
                            "Found two aggregation type definitions in [{name}]: [{first}] and [{t}]"
                        )));
                    }
                    typ = Some(t);
                    rewritten.insert(t.to_string(), rewrite_agg_body(fields, name, t, body)?);
                }
                other => {
                    return Err(SearchError::Unsupported(format!(
                        "aggregation type [{other}] (in [{name}]) is not supported"
                    )))
                }
            }
        }
        if typ.is_none() {
            return Err(SearchError::Parse(format!(
                "Missing definition for aggregation [{name}]"
            )));
        }
        out.insert(name.clone(), Value::Object(rewritten));
    }
    Ok(Value::Object(out))
}

fn rewrite_agg_body(fields: &Fields, name: &str, typ: &str, body: &Value) -> Result<Value> {
    let o = body
        .as_object()
        .ok_or_else(|| SearchError::Parse(format!("[{typ}] of [{name}] must be an object")))?;
    if o.contains_key("script") {
        return Err(SearchError::Unsupported(format!(
            "scripts in aggregation [{name}] are not supported"
        )));
    }
    let mut out = o.clone();
    if let Some(field) = o.get("field") {
        let f = field
            .as_str()
            .ok_or_else(|| SearchError::Parse(format!("[field] of [{name}] must be a string")))?;
        let column = fields.fast_column(f).ok_or_else(|| {
            SearchError::Unsupported(format!(
                "aggregation on the analysed text field [{f}] is not supported; use [{f}.keyword]"
            ))
        })?;
        out.insert("field".into(), Value::String(column));
    }
    Ok(Value::Object(out))
}

// ---- sorting ----

/// Sort keys plus the two tie-breakers.
const RANK_LEN: usize = 6;

/// The order of a hit: `rank` compares descending (greatest first), every
/// ascending key stored complemented. `score` rides along.
#[derive(Clone, Debug)]
struct HitKey {
    rank: [i64; RANK_LEN],
    score: Score,
}

impl PartialEq for HitKey {
    fn eq(&self, other: &HitKey) -> bool {
        self.rank == other.rank
    }
}

impl PartialOrd for HitKey {
    fn partial_cmp(&self, other: &HitKey) -> Option<Ordering> {
        Some(self.rank.cmp(&other.rank))
    }
}

/// Orders a target's hits by the request's sort, then by partition and
/// offset, ascending.
#[derive(Clone, Debug)]
struct RecordOrder {
    keys: Vec<SortSpec>,
    scoring: bool,
}

impl RecordOrder {
    fn new(req: &SearchRequest) -> RecordOrder {
        let mut keys = if req.sort.is_empty() {
            vec![SortSpec {
                field: SortField::Score,
                descending: true,
            }]
        } else {
            req.sort.clone()
        };
        // Parsing keeps one key per field: four at most.
        keys.truncate(RANK_LEN - 2);
        RecordOrder {
            keys,
            scoring: req.scoring(),
        }
    }
}

impl SortKeyComputer for RecordOrder {
    type SortKey = HitKey;
    type Child = RecordOrderSegment;
    type Comparator = NaturalComparator;

    fn requires_scoring(&self) -> bool {
        self.scoring
    }

    fn segment_sort_key_computer(
        &self,
        reader: &SegmentReader,
    ) -> tantivy::Result<RecordOrderSegment> {
        let ff = reader.fast_fields();
        Ok(RecordOrderSegment {
            keys: self.keys.clone(),
            timestamp: ff.date(schema::TIMESTAMP)?,
            offset: ff.u64(schema::OFFSET)?,
            partition: ff.u64(schema::PARTITION)?,
        })
    }
}

struct RecordOrderSegment {
    keys: Vec<SortSpec>,
    timestamp: Column<DateTime>,
    offset: Column<u64>,
    partition: Column<u64>,
}

/// A score as an i64 of the same order.
fn score_rank(s: Score) -> i64 {
    let bits = s.to_bits() as i32;
    i64::from(if bits < 0 { bits ^ i32::MAX } else { bits })
}

/// A value as a rank: descending as is, ascending complemented; missing
/// values last either way.
fn rank(v: Option<i64>, descending: bool) -> i64 {
    match v {
        Some(v) if descending => v,
        Some(v) => !v,
        None => i64::MIN,
    }
}

fn u64_rank(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl SegmentSortKeyComputer for RecordOrderSegment {
    type SortKey = HitKey;
    type SegmentSortKey = HitKey;
    type SegmentComparator = NaturalComparator;

    fn segment_sort_key(&mut self, doc: DocId, score: Score) -> HitKey {
        let mut key = HitKey {
            rank: [0; RANK_LEN],
            score,
        };
        let partition = u64_rank(self.partition.first(doc));
        let offset = u64_rank(self.offset.first(doc));
        let n = self.keys.len().min(RANK_LEN - 2);
        for (slot, spec) in key.rank.iter_mut().zip(&self.keys) {
            *slot = match spec.field {
                SortField::Score => {
                    let s = score_rank(score);
                    if spec.descending {
                        s
                    } else {
                        !s
                    }
                }
                SortField::Timestamp => rank(
                    self.timestamp.first(doc).map(|d| d.into_timestamp_millis()),
                    spec.descending,
                ),
                SortField::Offset => rank(offset, spec.descending),
                SortField::Partition => rank(partition, spec.descending),
            };
        }
        key.rank[n] = rank(partition, false);
        key.rank[n + 1] = rank(offset, false);
        key
    }

    fn convert_segment_sort_key(&self, key: HitKey) -> HitKey {
        key
    }
}

// ---- search ----

/// The user's query restricted to the target's topics: `+query
/// +filter(_tid in ids)`; `None` when the target covers no topic.
fn target_query(
    fields: &Fields,
    query: &dyn Query,
    topic_ids: &[[u8; 16]],
) -> Option<Box<dyn Query>> {
    if topic_ids.is_empty() {
        return None;
    }
    let terms = topic_ids
        .iter()
        .map(|id| Term::from_field_text(fields.topic_id, &schema::topic_id_term(id)));
    let filter: Box<dyn Query> = Box::new(ConstScoreQuery::new(
        Box::new(TermSetQuery::new(terms)),
        0.0,
    ));
    Some(Box::new(BooleanQuery::new(vec![
        (Occur::Must, query.box_clone()),
        (Occur::Must, filter),
    ])))
}

fn check_deadline(deadline: Option<Instant>) -> Result<()> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(SearchError::Timeout),
        _ => Ok(()),
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn shards(n: usize) -> Value {
    json!({"total": n, "successful": n, "skipped": 0, "failed": 0})
}

/// A hit of one target before the merge.
struct Candidate {
    key: HitKey,
    target: usize,
    address: DocAddress,
}

/// Runs `req` on every target and answers with Elasticsearch's search
/// response body.
pub fn search(
    fields: &Fields,
    req: &SearchRequest,
    targets: &[Target],
    limits: &Limits,
) -> Result<Value> {
    let started = Instant::now();
    let window = req.from.saturating_add(req.size);
    if window > limits.result_window_max {
        return Err(SearchError::ResultWindow {
            from: req.from,
            size: req.size,
            max: limits.result_window_max,
        });
    }
    let deadline = earliest(
        limits.deadline,
        req.timeout.and_then(|t| started.checked_add(t)),
    );
    let order = RecordOrder::new(req);
    let guard = AggregationLimitsGuard::new(
        Some(limits.aggregation_memory_bytes_max),
        Some(limits.buckets_max),
    );
    let mut total: u64 = 0;
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut aggs: Option<IntermediateAggregationResults> = None;
    for (i, target) in targets.iter().enumerate() {
        check_deadline(deadline)?;
        let Some(query) = target_query(fields, req.query.as_ref(), &target.topic_ids) else {
            continue;
        };
        let top = (window > 0).then(|| TopDocs::with_limit(window).order_by(order.clone()));
        let agg = req.aggs.as_ref().map(|a| {
            DistributedAggregationCollector::from_aggs(
                a.clone(),
                AggContextParams::new(guard.clone(), TokenizerManager::default()),
            )
        });
        let (count, top, agg) = target.searcher.search(query.as_ref(), &(Count, top, agg))?;
        total = total.saturating_add(count as u64);
        candidates.extend(top.into_iter().flatten().map(|(key, address)| Candidate {
            key,
            target: i,
            address,
        }));
        if let Some(agg) = agg {
            match aggs.as_mut() {
                Some(merged) => merged.merge_fruits(agg)?,
                None => aggs = Some(agg),
            }
        }
    }
    check_deadline(deadline)?;

    candidates.sort_by(|a, b| {
        b.key
            .rank
            .cmp(&a.key.rank)
            .then(a.target.cmp(&b.target))
            .then(a.address.cmp(&b.address))
    });
    let scoring = req.scoring();
    let max_score = if scoring {
        candidates
            .iter()
            .map(|c| c.key.score)
            .fold(None, |m: Option<Score>, s| Some(m.map_or(s, |m| m.max(s))))
    } else {
        None
    };
    let mut hits = Vec::with_capacity(req.size.min(candidates.len()));
    let mut source_bytes = 0u64;
    for c in candidates.iter().skip(req.from).take(req.size) {
        let Some(target) = targets.get(c.target) else {
            continue;
        };
        let doc: TantivyDocument = target.searcher.doc(c.address)?;
        source_bytes += doc
            .get_first(fields.source)
            .and_then(|v| v.as_leaf().and_then(|l| l.as_bytes()))
            .map_or(0, |b| b.len() as u64);
        if source_bytes > limits.source_bytes_max {
            return Err(SearchError::TooManyBuckets(format!(
                "the hits' [_source] exceed [{}] bytes; ask for fewer hits (size) or less of each (_source)",
                limits.source_bytes_max
            )));
        }
        hits.push(hit(fields, &doc, req, scoring.then_some(c.key.score)));
    }

    let mut hits_body = Map::new();
    match req.track_total_hits {
        TotalHits::Off => {}
        _ if req.total_hits_as_int => {
            hits_body.insert("total".into(), json!(total));
        }
        TotalHits::Exact => {
            hits_body.insert("total".into(), json!({"value": total, "relation": "eq"}));
        }
        TotalHits::UpTo(n) if total > n => {
            hits_body.insert("total".into(), json!({"value": n, "relation": "gte"}));
        }
        TotalHits::UpTo(_) => {
            hits_body.insert("total".into(), json!({"value": total, "relation": "eq"}));
        }
    }
    hits_body.insert("max_score".into(), json!(max_score));
    hits_body.insert("hits".into(), Value::Array(hits));

    let mut body = Map::new();
    body.insert("took".into(), json!(started.elapsed().as_millis() as u64));
    body.insert("timed_out".into(), json!(false));
    body.insert("_shards".into(), shards(targets.len()));
    body.insert("hits".into(), Value::Object(hits_body));
    if let Some(req_aggs) = &req.aggs {
        let results = aggs
            .unwrap_or_default()
            .into_final_result(req_aggs.clone(), guard)?;
        let mut value = serde_json::to_value(results)
            .map_err(|e| SearchError::Internal(format!("aggregation results: {e}")))?;
        if let Ok(request) = serde_json::to_value(req_aggs) {
            date_metrics_in_millis(&request, &mut value, 0);
        }
        body.insert("aggregations".into(), value);
    }
    Ok(Value::Object(body))
}

/// Metric aggregations over `@timestamp` come back from Tantivy in
/// nanoseconds; Elasticsearch answers epoch milliseconds (and the date as
/// `value_as_string`). Walks the request and its results together.
fn date_metrics_in_millis(request: &Value, results: &mut Value, depth: usize) {
    const DATE_METRICS: [&str; 6] = ["min", "max", "avg", "sum", "stats", "extended_stats"];
    let (Some(request), Some(results)) = (request.as_object(), results.as_object_mut()) else {
        return;
    };
    if depth > AGG_DEPTH_MAX {
        return;
    }
    for (name, agg) in request {
        let Some(result) = results.get_mut(name) else {
            continue;
        };
        let Some(a) = agg.as_object() else { continue };
        for (typ, body) in a {
            let on_timestamp = body.get("field").and_then(Value::as_str) == Some(schema::TIMESTAMP);
            if on_timestamp && DATE_METRICS.contains(&typ.as_str()) {
                nanos_to_millis(result);
            }
        }
        if let Some(sub) = a.get("aggs").or_else(|| a.get("aggregations")) {
            // Bucketed results hold the sub-aggregations in each bucket.
            match result.get_mut("buckets") {
                Some(Value::Array(buckets)) => {
                    for b in buckets {
                        date_metrics_in_millis(sub, b, depth + 1);
                    }
                }
                Some(Value::Object(buckets)) => {
                    for (_, b) in buckets.iter_mut() {
                        date_metrics_in_millis(sub, b, depth + 1);
                    }
                }
                _ => date_metrics_in_millis(sub, result, depth + 1),
            }
        }
    }
}

/// Divides the metric values of one result by 10^6 and adds their dates.
fn nanos_to_millis(result: &mut Value) {
    let Some(o) = result.as_object_mut() else {
        return;
    };
    for key in ["value", "min", "max", "avg", "sum"] {
        if let Some(ns) = o.get(key).and_then(Value::as_f64) {
            let ms = (ns / 1e6).round();
            o.insert(key.to_string(), json!(ms));
            if let Some(text) = format_millis(ms as i64) {
                let name = if key == "value" {
                    "value_as_string".to_string()
                } else {
                    format!("{key}_as_string")
                };
                o.insert(name, json!(text));
            }
        }
    }
}

/// Counts the records matching `req.query` on every target: the body of
/// Elasticsearch's `_count`.
pub fn count(
    fields: &Fields,
    req: &SearchRequest,
    targets: &[Target],
    limits: &Limits,
) -> Result<Value> {
    let started = Instant::now();
    let deadline = earliest(
        limits.deadline,
        req.timeout.and_then(|t| started.checked_add(t)),
    );
    let mut total: u64 = 0;
    for target in targets {
        check_deadline(deadline)?;
        let Some(query) = target_query(fields, req.query.as_ref(), &target.topic_ids) else {
            continue;
        };
        total = total.saturating_add(target.searcher.search(query.as_ref(), &Count)? as u64);
    }
    check_deadline(deadline)?;
    Ok(json!({"count": total, "_shards": shards(targets.len())}))
}

// ---- hits ----

/// One hit of the response.
fn hit(fields: &Fields, doc: &TantivyDocument, req: &SearchRequest, score: Option<Score>) -> Value {
    let topic = doc
        .get_first(fields.topic)
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let partition = doc
        .get_first(fields.partition)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let offset = doc
        .get_first(fields.offset)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let ts_ms = doc
        .get_first(fields.timestamp)
        .and_then(|v| v.as_datetime())
        .map(|d| d.into_timestamp_millis());
    let key = doc
        .get_first(fields.key_bytes)
        .and_then(|v| v.as_bytes())
        .and_then(|b| std::str::from_utf8(b).ok())
        .map_or(Value::Null, |k| Value::String(k.to_string()));
    let headers = doc
        .get_first(fields.headers)
        .map(|v| OwnedValue::from(v.as_value()))
        .and_then(|v| serde_json::to_value(v).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));

    let mut h = Map::new();
    h.insert("_index".into(), json!(topic));
    h.insert("_id".into(), json!(format!("{partition}-{offset}")));
    h.insert("_score".into(), json!(score));
    if req.source != SourceFilter::Off {
        let source = doc
            .get_first(fields.source)
            .and_then(|v| v.as_bytes())
            .map_or(Value::Null, source_value);
        h.insert("_source".into(), filter_source(source, &req.source));
    }
    if !req.sort.is_empty() {
        let sort: Vec<Value> = req
            .sort
            .iter()
            .map(|s| match s.field {
                SortField::Score => json!(score),
                SortField::Timestamp => json!(ts_ms),
                SortField::Offset => json!(offset),
                SortField::Partition => json!(partition),
            })
            .collect();
        h.insert("sort".into(), Value::Array(sort));
    }
    h.insert("_partition".into(), json!(partition));
    h.insert("_offset".into(), json!(offset));
    h.insert(
        "@timestamp".into(),
        ts_ms
            .and_then(format_millis)
            .map_or(Value::Null, Value::String),
    );
    h.insert("_key".into(), key);
    h.insert("_headers".into(), headers);
    Value::Object(h)
}

/// The record's value as a `_source`: a JSON object as is, other UTF-8 as
/// `{"message": text}`, other bytes as `{"_binary": true}`.
fn source_value(bytes: &[u8]) -> Value {
    if bytes.first() == Some(&b'{') {
        if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(bytes) {
            return v;
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "message": text }),
        Err(_) => json!({ "_binary": true }),
    }
}

/// Epoch milliseconds as RFC 3339 with milliseconds, UTC.
fn format_millis(ms: i64) -> Option<String> {
    let dt = tantivy::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    ))
}

fn filter_source(source: Value, filter: &SourceFilter) -> Value {
    match (filter, source) {
        (SourceFilter::Filter { includes, excludes }, Value::Object(map)) => {
            Value::Object(filter_object(map, "", includes, excludes))
        }
        (_, source) => source,
    }
}

/// The entries of `map` (at path `prefix`) that an include pattern
/// matches (or leads to) and no exclude pattern matches.
fn filter_object(
    map: Map<String, Value>,
    prefix: &str,
    includes: &[String],
    excludes: &[String],
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if excludes.iter().any(|p| glob(p, &path)) {
            continue;
        }
        let whole = includes.is_empty() || includes.iter().any(|p| glob(p, &path));
        match v {
            Value::Object(child) if whole => {
                // Excludes may still remove deeper paths.
                out.insert(k, Value::Object(filter_object(child, &path, &[], excludes)));
            }
            v if whole => {
                out.insert(k, v);
            }
            Value::Object(child) => {
                let below = format!("{path}.");
                if includes
                    .iter()
                    .any(|p| p.starts_with(&below) || p.starts_with('*'))
                {
                    let inner = filter_object(child, &path, includes, excludes);
                    if !inner.is_empty() {
                        out.insert(k, Value::Object(inner));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether `text` matches `pattern`, whose `*` matches any run of characters
/// (`_source` filters here, index patterns in the broker's search API).
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: an exact name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use tantivy::Index;

    use super::*;
    use crate::doc::{document, Origin, RecordRef};

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];
    const T0: i64 = 1_700_000_000_000;

    /// Record `i` of the fixture: topic A when `i % 4 < 2`, else B;
    /// index and partition `i % 2`; offset `i`; one second apart.
    fn value(i: u64) -> String {
        json!({
            "user": format!("u{}", i % 5),
            "level": if i % 3 == 0 { "error" } else { "info" },
            "latency": i,
            "msg": format!("request number {i} done"),
            "payload": {"id": format!("x{i}")},
        })
        .to_string()
    }

    fn fixture() -> &'static (Fields, Vec<Index>) {
        static FIXTURE: OnceLock<(Fields, Vec<Index>)> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let fields = Fields::new();
            let indexes: Vec<Index> = (0..2)
                .map(|_| Index::create_in_ram(fields.schema.clone()))
                .collect();
            let mut writers: Vec<tantivy::IndexWriter> = indexes
                .iter()
                .map(|ix| ix.writer_with_num_threads(1, 15_000_000).unwrap())
                .collect();
            for i in 0..200u64 {
                let shard = (i % 2) as usize;
                let (topic, id) = if i % 4 < 2 { ("a", A) } else { ("b", B) };
                let origin = Origin {
                    topic: topic.into(),
                    topic_id: id,
                    partition: shard as i32,
                };
                let v = value(i);
                let key = format!("k{i}");
                let trace = format!("t{}", i % 3);
                let headers = [(&b"trace"[..], Some(trace.as_bytes()))];
                let r = RecordRef {
                    offset: i as i64,
                    timestamp_ms: T0 + i as i64 * 1_000,
                    key: Some(key.as_bytes()),
                    value: Some(v.as_bytes()),
                    headers: &headers,
                };
                writers[shard]
                    .add_document(document(&fields, &origin, &r))
                    .unwrap();
                // Two segments per index.
                if i == 99 {
                    writers.iter_mut().for_each(|w| {
                        w.commit().unwrap();
                    });
                }
            }
            // A plain-text record and a binary one on shard 0, topic A.
            let origin = Origin {
                topic: "a".into(),
                topic_id: A,
                partition: 0,
            };
            for (offset, v) in [
                (1_000i64, &b"plain text line"[..]),
                (1_001, &[0xff, 0xfe][..]),
            ] {
                let r = RecordRef {
                    offset,
                    timestamp_ms: T0 - 1_000_000,
                    key: None,
                    value: Some(v),
                    headers: &[],
                };
                writers[0]
                    .add_document(document(&fields, &origin, &r))
                    .unwrap();
            }
            writers.iter_mut().for_each(|w| {
                w.commit().unwrap();
            });
            (fields, indexes)
        })
    }

    fn targets(topics: &[[u8; 16]]) -> Vec<Target> {
        fixture()
            .1
            .iter()
            .map(|ix| Target {
                searcher: ix.reader().unwrap().searcher(),
                topic_ids: topics.to_vec(),
            })
            .collect()
    }

    fn run(body: Value) -> Value {
        let f = &fixture().0;
        let req = SearchRequest::parse(f, Some(&body), &[]).unwrap();
        search(f, &req, &targets(&[A, B]), &Limits::default()).unwrap()
    }

    /// The offsets a query matches, sorted.
    fn offsets(query: Value) -> Vec<u64> {
        let r = run(json!({"query": query, "size": 1000}));
        let mut out: Vec<u64> = r["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            r["hits"]["total"]["value"].as_u64().unwrap(),
            out.len() as u64
        );
        out.sort_unstable();
        out
    }

    fn expect(pred: impl Fn(u64) -> bool) -> Vec<u64> {
        (0..200).filter(|&i| pred(i)).collect()
    }

    #[test]
    fn match_all_counts_every_record() {
        let r = run(json!({}));
        assert_eq!(r["hits"]["total"], json!({"value": 202, "relation": "eq"}));
        assert_eq!(r["hits"]["hits"].as_array().unwrap().len(), 10);
        assert_eq!(r["_shards"]["total"], 2);
        assert!(r.get("aggregations").is_none());
    }

    #[test]
    fn match_queries() {
        assert_eq!(
            offsets(json!({"match": {"user": "u3"}})),
            expect(|i| i % 5 == 3)
        );
        // Analysed: case does not matter.
        assert_eq!(
            offsets(json!({"match": {"user": "U3"}})),
            expect(|i| i % 5 == 3)
        );
        assert_eq!(
            offsets(json!({"match": {"msg": {"query": "number 42", "operator": "and"}}})),
            vec![42]
        );
        assert_eq!(offsets(json!({"match": {"msg": "42 43"}})), vec![42, 43]);
        // A number against a value path's number, also written as text.
        assert_eq!(offsets(json!({"match": {"latency": 17}})), vec![17]);
        assert_eq!(offsets(json!({"match": {"latency": "17"}})), vec![17]);
        assert_eq!(offsets(json!({"match": {"payload.id": "x7"}})), vec![7]);
        // `.keyword` is exact: no lowercasing.
        assert_eq!(
            offsets(json!({"match": {"user.keyword": "u3"}})),
            expect(|i| i % 5 == 3)
        );
        assert!(offsets(json!({"match": {"user.keyword": "U3"}})).is_empty());
        assert_eq!(offsets(json!({"match": {"_key": "k12"}})), vec![12]);
        assert_eq!(
            offsets(json!({"match": {"_headers.trace": "t2"}})),
            expect(|i| i % 3 == 2)
        );
        assert_eq!(offsets(json!({"match": {"message": "plain"}})), vec![1_000]);
        assert_eq!(
            offsets(json!({"multi_match": {"query": "x9 k11", "fields": ["payload.id", "_key"]}})),
            vec![9, 11]
        );
        assert_eq!(offsets(json!({"multi_match": {"query": "x9"}})), vec![9]);
    }

    #[test]
    fn phrases() {
        assert_eq!(
            offsets(json!({"match_phrase": {"msg": "number 42 done"}})),
            vec![42]
        );
        assert!(offsets(json!({"match_phrase": {"msg": "42 number"}})).is_empty());
        assert_eq!(
            offsets(json!({"match_phrase": {"msg": {"query": "request 42", "slop": 1}}})),
            vec![42]
        );
        assert_eq!(offsets(json!({"match_phrase": {"msg": "done"}})).len(), 200);
    }

    #[test]
    fn term_and_terms() {
        assert_eq!(
            offsets(json!({"term": {"user.keyword": "u1"}})),
            expect(|i| i % 5 == 1)
        );
        assert_eq!(
            offsets(json!({"term": {"user": {"value": "u1"}}})),
            expect(|i| i % 5 == 1)
        );
        assert_eq!(offsets(json!({"term": {"latency": 150}})), vec![150]);
        assert_eq!(offsets(json!({"term": {"latency": 150.0}})), vec![150]);
        assert_eq!(offsets(json!({"term": {"_offset": 33}})), vec![33]);
        assert_eq!(
            offsets(json!({"term": {"_partition": 1}})),
            expect(|i| i % 2 == 1)
        );
        assert_eq!(
            offsets(json!({"term": {"@timestamp": T0 + 5_000}})),
            vec![5]
        );
        assert_eq!(
            offsets(json!({"term": {"_topic": "b"}})),
            expect(|i| i % 4 >= 2)
        );
        assert_eq!(offsets(json!({"term": {"_key.keyword": "k5"}})), vec![5]);
        assert_eq!(
            offsets(json!({"terms": {"user.keyword": ["u1", "u2"]}})),
            expect(|i| i % 5 == 1 || i % 5 == 2)
        );
        assert_eq!(
            offsets(json!({"terms": {"_offset": [1, 2, 999]}})),
            vec![1, 2]
        );
        assert_eq!(
            offsets(json!({"ids": {"values": ["1-3", "0-4", "0-3", "zz"]}})),
            vec![3, 4]
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(
            offsets(json!({"range": {"latency": {"gte": 10, "lt": 20}}})),
            (10..20).collect::<Vec<_>>()
        );
        assert_eq!(
            offsets(json!({"range": {"latency": {"gt": 9.5, "lte": "12"}}})),
            vec![10, 11, 12]
        );
        assert_eq!(
            offsets(json!({"range": {"_offset": {"gt": 197}}})),
            vec![198, 199, 1_000, 1_001]
        );
        assert_eq!(
            offsets(json!({"range": {"_offset": {"lt": 3}}})),
            vec![0, 1, 2]
        );
        assert_eq!(
            offsets(json!({"range": {"@timestamp": {"gte": T0 + 10_000, "lte": T0 + 12_000}}})),
            vec![10, 11, 12]
        );
        // 2023-11-14T22:13:20Z is T0.
        assert_eq!(
            offsets(
                json!({"range": {"@timestamp": {"gte": "2023-11-14T22:13:21Z", "lt": "2023-11-14T22:13:23Z"}}})
            ),
            vec![1, 2]
        );
        assert_eq!(
            offsets(json!({"range": {"@timestamp": {"gt": "2023-11-14T22:13:20Z||+197s"}}})),
            vec![198, 199]
        );
        assert_eq!(
            offsets(json!({"range": {"payload.id": {"gte": "x98", "lte": "x99"}}})),
            vec![98, 99]
        );
    }

    #[test]
    fn exists_and_bool() {
        assert_eq!(offsets(json!({"exists": {"field": "payload"}})).len(), 200);
        assert_eq!(
            offsets(json!({"exists": {"field": "message"}})),
            vec![1_000]
        );
        assert_eq!(offsets(json!({"exists": {"field": "_key"}})).len(), 200);
        assert_eq!(offsets(json!({"exists": {"field": "_offset"}})).len(), 202);
        assert_eq!(
            offsets(json!({"bool": {
                "must": {"match": {"level": "error"}},
                "filter": [{"range": {"latency": {"lt": 30}}}],
                "must_not": {"term": {"user.keyword": "u0"}},
            }})),
            expect(|i| i % 3 == 0 && i < 30 && i % 5 != 0)
        );
        assert_eq!(
            offsets(json!({"bool": {"should": [
                {"term": {"_offset": 1}}, {"term": {"_offset": 2}}, {"term": {"latency": 1}}
            ], "minimum_should_match": 2}})),
            vec![1]
        );
        assert_eq!(
            offsets(json!({"bool": {"must_not": {"range": {"_offset": {"gte": 2}}}}})),
            vec![0, 1]
        );
        assert_eq!(
            offsets(
                json!({"bool": {"filter": {"term": {"_offset": 5}}, "should": {"term": {"_offset": 6}}}})
            ),
            vec![5]
        );
        let r = run(json!({"query": {"bool": {"filter": {"term": {"_offset": 5}}}}}));
        assert_eq!(r["hits"]["hits"][0]["_score"], json!(0.0));
    }

    #[test]
    fn query_strings() {
        let qs = |q: &str| offsets(json!({"query_string": {"query": q}}));
        assert_eq!(qs("x42"), vec![42]);
        assert_eq!(qs("user:u1 AND latency:[0 TO 20]"), vec![1, 6, 11, 16]);
        assert_eq!(qs("_offset:{195 TO 200} -_offset:197"), vec![196, 198, 199]);
        assert_eq!(qs("\"number 7 done\""), vec![7]);
        assert_eq!(qs("payload.id:x3 OR payload.id:x4"), vec![3, 4]);
        assert_eq!(qs("user.keyword:IN [u1 u2] AND latency:<10").len(), 4);
        assert_eq!(
            offsets(
                json!({"query_string": {"query": "number 42", "default_field": "msg", "default_operator": "AND"}})
            ),
            vec![42]
        );
        let f = &fixture().0;
        let params = vec![("q".to_string(), "_key:k3".to_string())];
        let req = SearchRequest::parse(f, None, &params).unwrap();
        let r = search(f, &req, &targets(&[A, B]), &Limits::default()).unwrap();
        assert_eq!(r["hits"]["total"]["value"], 1);
        assert_eq!(r["hits"]["hits"][0]["_id"], "1-3");
    }

    #[test]
    fn hits_carry_the_record() {
        let r = run(json!({"query": {"term": {"_offset": 7}}}));
        let h = &r["hits"]["hits"][0];
        assert_eq!(h["_index"], "b");
        assert_eq!(h["_id"], "1-7");
        assert_eq!(h["_partition"], 1);
        assert_eq!(h["@timestamp"], "2023-11-14T22:13:27.000Z");
        assert_eq!(h["_key"], "k7");
        assert_eq!(h["_headers"], json!({"trace": "t1"}));
        assert_eq!(
            h["_source"],
            serde_json::from_str::<Value>(&value(7)).unwrap()
        );
        assert!(h["_score"].as_f64().is_some());
        let r = run(json!({"query": {"terms": {"_offset": [1000, 1001]}}, "sort": "_offset"}));
        assert_eq!(
            r["hits"]["hits"][0]["_source"],
            json!({"message": "plain text line"})
        );
        assert_eq!(r["hits"]["hits"][1]["_source"], json!({"_binary": true}));
        assert_eq!(r["hits"]["hits"][1]["_key"], Value::Null);
        let r = run(json!({"query": {"term": {"_offset": 7}}, "_source": ["user", "payload.id"]}));
        assert_eq!(
            r["hits"]["hits"][0]["_source"],
            json!({"user": "u2", "payload": {"id": "x7"}})
        );
        let r = run(
            json!({"query": {"term": {"_offset": 7}}, "_source": {"excludes": ["msg", "pay*"]}}),
        );
        assert_eq!(
            r["hits"]["hits"][0]["_source"],
            json!({"user": "u2", "level": "info", "latency": 7})
        );
        let r = run(json!({"query": {"term": {"_offset": 7}}, "_source": false}));
        assert!(r["hits"]["hits"][0].get("_source").is_none());
    }

    #[test]
    fn sorting_and_pages() {
        let page = |from: usize, order: &str| -> Vec<u64> {
            let r = run(json!({
                "query": {"range": {"_offset": {"lt": 200}}},
                "sort": [{"_offset": {"order": order}}], "from": from, "size": 7,
            }));
            assert_eq!(r["hits"]["max_score"], Value::Null);
            r["hits"]["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    assert_eq!(h["_score"], Value::Null);
                    assert_eq!(h["sort"][0], h["_offset"]);
                    h["_offset"].as_u64().unwrap()
                })
                .collect()
        };
        assert_eq!(page(0, "asc"), (0..7).collect::<Vec<_>>());
        assert_eq!(page(7, "asc"), (7..14).collect::<Vec<_>>());
        assert_eq!(page(0, "desc"), (193..200).rev().collect::<Vec<_>>());
        assert_eq!(page(196, "asc"), (196..200).collect::<Vec<_>>());
        // Every page, disjoint and consecutive, covers everything.
        let mut all = Vec::new();
        for p in 0..29 {
            all.extend(page(p * 7, "desc"));
        }
        assert_eq!(all, (0..200).rev().collect::<Vec<_>>());
        // By timestamp then partition; URL sort.
        let f = &fixture().0;
        let params = vec![
            ("sort".to_string(), "@timestamp:desc".to_string()),
            ("size".to_string(), "3".to_string()),
        ];
        let req = SearchRequest::parse(f, None, &params).unwrap();
        let r = search(f, &req, &targets(&[A, B]), &Limits::default()).unwrap();
        let got: Vec<u64> = r["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, vec![199, 198, 197]);
        assert_eq!(r["hits"]["hits"][0]["sort"], json!([T0 + 199_000]));
        // By score: the best first, max_score its score.
        let r = run(json!({"query": {"match": {"msg": "number 5"}}, "size": 1}));
        assert_eq!(r["hits"]["hits"][0]["_offset"], 5);
        assert_eq!(r["hits"]["max_score"], r["hits"]["hits"][0]["_score"]);
    }

    #[test]
    fn topic_filter() {
        let f = &fixture().0;
        let req = SearchRequest::parse(f, Some(&json!({"size": 1000})), &[]).unwrap();
        let r = search(f, &req, &targets(&[B]), &Limits::default()).unwrap();
        assert_eq!(r["hits"]["total"]["value"], 100);
        assert!(r["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["_index"] == "b"));
        let c = count(f, &req, &targets(&[A]), &Limits::default()).unwrap();
        assert_eq!(c["count"], 102);
        let c = count(f, &req, &targets(&[]), &Limits::default()).unwrap();
        assert_eq!(c, json!({"count": 0, "_shards": shards(2)}));
    }

    #[test]
    fn aggregations() {
        let r = run(json!({
            "size": 0,
            "query": {"range": {"_offset": {"lt": 200}}},
            "aggs": {
                "users": {"terms": {"field": "user.keyword"}, "aggs": {"lat": {"avg": {"field": "latency"}}}},
                "per_minute": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1m"}},
                "lat": {"stats": {"field": "latency"}},
                "avg_lat": {"avg": {"field": "latency"}},
                "distinct": {"cardinality": {"field": "user"}},
                "topics": {"terms": {"field": "_index"}},
                "first": {"min": {"field": "@timestamp"}},
                "span": {"stats": {"field": "@timestamp"}},
                "by_topic": {"terms": {"field": "_index"}, "aggs": {"last": {"max": {"field": "@timestamp"}}}},
            }
        }));
        assert_eq!(r["hits"]["hits"], json!([]));
        let aggs = &r["aggregations"];
        let users = aggs["users"]["buckets"].as_array().unwrap();
        assert_eq!(users.len(), 5);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for b in users {
            counts.insert(
                b["key"].as_str().unwrap().into(),
                b["doc_count"].as_u64().unwrap(),
            );
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![40; 5]);
        let u0 = users.iter().find(|b| b["key"] == "u0").unwrap();
        // u0: 0, 5, ..., 195.
        assert_eq!(u0["lat"]["value"].as_f64().unwrap(), 97.5);
        let minutes = aggs["per_minute"]["buckets"].as_array().unwrap();
        let total: u64 = minutes
            .iter()
            .map(|b| b["doc_count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 200);
        assert_eq!(minutes.len(), 4);
        assert_eq!(aggs["lat"]["count"], 200);
        assert_eq!(aggs["lat"]["min"].as_f64().unwrap(), 0.0);
        assert_eq!(aggs["lat"]["max"].as_f64().unwrap(), 199.0);
        assert_eq!(aggs["avg_lat"]["value"].as_f64().unwrap(), 99.5);
        assert_eq!(aggs["distinct"]["value"].as_f64().unwrap(), 5.0);
        assert_eq!(aggs["topics"]["buckets"].as_array().unwrap().len(), 2);
        // Date metrics in epoch milliseconds, as Elasticsearch gives them.
        assert_eq!(aggs["first"]["value"].as_f64().unwrap(), T0 as f64);
        assert!(aggs["first"]["value_as_string"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20"));
        assert_eq!(aggs["span"]["max"].as_f64().unwrap(), (T0 + 199_000) as f64);
        for b in aggs["by_topic"]["buckets"].as_array().unwrap() {
            let last = b["last"]["value"].as_f64().unwrap();
            assert!(last >= T0 as f64 && last <= (T0 + 199_000) as f64, "{b}");
        }
    }

    #[test]
    fn aggregation_errors() {
        let f = &fixture().0;
        let parse = |aggs: Value| SearchRequest::parse(f, Some(&json!({"aggs": aggs})), &[]);
        assert!(matches!(
            parse(json!({"x": {"geohash_grid": {"field": "loc"}}})),
            Err(SearchError::Unsupported(m)) if m.contains("geohash_grid")
        ));
        assert!(matches!(
            parse(json!({"x": {"terms": {"field": "_key"}}})),
            Err(SearchError::Unsupported(m)) if m.contains("_key.keyword")
        ));
        let limits = Limits {
            buckets_max: 10,
            ..Limits::default()
        };
        // A date histogram needs an interval.
        let req = parse(json!({"x": {"date_histogram": {"field": "@timestamp"}}}));
        let e = match req {
            Err(e) => e,
            Ok(req) => search(f, &req, &targets(&[A, B]), &Limits::default()).unwrap_err(),
        };
        assert_eq!(e.status(), 400, "{e:?}");
        let req = parse(json!({"x": {"terms": {"field": "_offset", "size": 500}}})).unwrap();
        let e = search(f, &req, &targets(&[A, B]), &limits).unwrap_err();
        assert!(matches!(e, SearchError::TooManyBuckets(_)), "{e:?}");
        assert_eq!(e.body()["error"]["type"], "too_many_buckets_exception");
    }

    #[test]
    fn request_errors() {
        let f = &fixture().0;
        let e = SearchRequest::parse(f, Some(&json!({"query": {"fuzzy": {"user": "u1"}}})), &[])
            .unwrap_err();
        assert_eq!(
            e,
            SearchError::Unsupported("query type [fuzzy] is not supported".into())
        );
        assert!(matches!(
            SearchRequest::parse(f, Some(&json!({"highlight": {}})), &[]),
            Err(SearchError::Unsupported(m)) if m.contains("highlight")
        ));
        assert!(matches!(
            SearchRequest::parse(f, Some(&json!({"sort": "user"})), &[]),
            Err(SearchError::Unsupported(_))
        ));
        assert!(matches!(
            SearchRequest::parse(f, Some(&json!({"size": -1})), &[]),
            Err(SearchError::Parse(_))
        ));
        let req = SearchRequest::parse(f, Some(&json!({"from": 9_995, "size": 10})), &[]).unwrap();
        let e = search(f, &req, &targets(&[A]), &Limits::default()).unwrap_err();
        assert_eq!(
            e,
            SearchError::ResultWindow {
                from: 9_995,
                size: 10,
                max: 10_000
            }
        );
        let limits = Limits {
            deadline: Some(Instant::now()),
            ..Limits::default()
        };
        let req = SearchRequest::parse(f, None, &[]).unwrap();
        assert_eq!(
            search(f, &req, &targets(&[A]), &limits).unwrap_err(),
            SearchError::Timeout
        );
    }

    #[test]
    fn globs() {
        assert!(glob("user", "user"));
        assert!(!glob("user", "users"));
        assert!(glob("us*", "user"));
        assert!(glob("*er", "user"));
        assert!(glob("u*e*r", "user"));
        assert!(!glob("u*x", "user"));
        assert!(glob("*", "anything"));
    }
}
